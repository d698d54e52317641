# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: lesionsignal (.venv)
#     language: python
#     name: lesionsignal
# ---

# %% tags=["parameters"]
params_file = "params/demo.yaml"

# %% [markdown]
# # 04 · Natural lesions: CLS, patch-mean and patch-local on boxed lesions, by lesion size
#
# The controlled stimuli of sections 02-03 are artificial; this section asks the same question of real lesions
# with bounding boxes (docs/PROTOCOL.md, section 7; ChestX-Det10 in the study, the demo cohort's boxed lesions here).
# For each lesion class (Calcification, Nodule, Mass):
# - **image level**: a probe on CLS or patch-mean predicts "the image has a box of this class"; test positives are
#   split into small and large at the median of their lesion area (S10);
# - **box level**: each lesion box is a positive row and two boxes of the same size from class-negative images of
#   the same split are its negatives (by default at the same coordinates, so size AND position match; the authors
#   placed them uniformly, a parameter); probes on CLS, patch-mean and patch-local over the box (T10), with the
#   same small / large strata (T11) and a paired bootstrap of patch-local minus CLS on shared resamples,
#   Benjamini-Hochberg over the (model x class) cells (S11).
#
# The rows (including every negative box) are decided from the manifest alone, before any pixel is read; then
# each image is encoded once per encoder and pooled at exactly the boxes the rows need. The vectors are cached by
# content (encoder, images and their box lists, code), so a re-run reads them back.
#
# After the paper's tables come four analyses its limitations section names and does not do: operating points
# (sensitivity at fixed specificity, PPV and NPV), size strata beyond the median with the differences each stratum
# could detect, the patch-local probe's dependence on a tight box (box jitter), and ChestX-Det10 on a split that
# shares no patient beside its official split.

# %%
from IPython.display import display

from lesionsignal.analysis.lesion_probes import FIT_COLUMNS, Level
from lesionsignal.config.params import Analysis
from lesionsignal.data.summary import split_notes
from lesionsignal.paper.figures import plot_pool_aucs, plot_stratum_gaps
from lesionsignal.paper.reference import compare
from lesionsignal.pipeline import cohorts as cohort_stage
from lesionsignal.pipeline import lesions
from lesionsignal.pipeline.executors import describe_execution
from lesionsignal.pipeline.stage import StageName, open_run, output
from lesionsignal.pipeline.stages import require

run = open_run(params_file)
params = run.params
outputs = run.catalog.outputs("04_chestxdet10_stratification")
cohorts = params.cohorts_for(Analysis.LESIONS)
print(params.label.text)
print(f"{describe_execution(params)}; lesion cohorts: {[c.name for c in cohorts]}")
print(f"classes: {list(params.lesions.classes)}")
print(f"negatives: {params.lesions.negatives_per_positive} per positive, placement {params.lesions.negative_placement}")
if not cohorts:
    print("No cohort of this run is marked for the lesion analyses (uses: [lesions]); nothing to do.")
require(run, StageName.LESIONS)

# %% [markdown]
# ## The design: rows decided from the manifest alone
# First the split each lesion cohort is analysed on. ChestX-Det10's official split, which the paper used, puts some
# patients on both sides (PROTOCOL section 1.3); it is kept unless the parameters ask for the patient-disjoint
# re-split (`split: patient_disjoint`), and the patients and images the two sides share are counted here.
# Then, per class and split: images, images with the class, positive boxes, their size-matched negatives, and the
# median positive box area (the test split's median is where small and large part).

# %%
shared_by_split = output(run, StageName.COHORTS, cohort_stage.SPLITS)
lesion_splits = shared_by_split[shared_by_split["cohort"].isin([c.name for c in cohorts])].reset_index(drop=True)
if not lesion_splits.empty:
    caption = "Lesion cohorts: patients and images each split shares with another split"
    display(outputs.table(lesion_splits, "04_split_overlap", caption))
for cohort in cohorts:
    for note in split_notes(cohort_stage.manifest(run, cohort.name)):
        print(note)

# %%
design_table = output(run, StageName.LESIONS, lesions.DESIGN)
if design_table.empty:
    print("no lesion cohort in this run: no design")
else:
    caption = "Lesion study design: images, boxes and size-matched negatives per class"
    display(outputs.table(design_table, "04_design", caption))

# %% [markdown]
# ## One forward pass per image, pooled at the design's boxes
# Every encoder of the run goes over each cohort's images together (each chunk decoded once for all). A box that
# an encoder's centre crop cuts away entirely cannot be pooled by that encoder: its rows leave that encoder's
# analysis, with the negatives drawn for it, and are listed below.

# %%
excluded = output(run, StageName.LESIONS, lesions.EXCLUDED)
if not excluded.empty:
    caption = "Box-level rows an encoder could not pool (box outside its crop)"
    display(outputs.table(excluded, "04_excluded_rows", caption))
print(f"{len(excluded)} box-level rows excluded by encoder crops")

# %% [markdown]
# ## Probes
# Image level on CLS and patch-mean (CV folds grouped by patient), box level on CLS, patch-mean and patch-local
# (folds grouped by the image the box comes from); every AUC with its stratified bootstrap 95 % CI, and the AUC
# of each size stratum against its negatives.

# %%
results = output(run, StageName.LESIONS, lesions.FITS)[["cohort", *FIT_COLUMNS]]
skipped_table = output(run, StageName.LESIONS, lesions.SKIPPED)
if not skipped_table.empty:
    caption = "Lesion-study probes that could not be fitted on this cohort, and why"
    display(outputs.table(skipped_table, "04_skipped", caption))

# %% [markdown]
# ## T10: box-level AUC per pool
# Patch-local pools the tokens over the lesion box; CLS and patch-mean see the whole image.

# %%
box_columns = ["cohort", "model", "lesion_class", "pool", "auc", "ci_low", "ci_high", "n_train", "n_test", "best_c"]
box_level = results.loc[results["level"] == Level.BOX.value, box_columns].reset_index(drop=True)
if box_level.empty:
    print("no box-level probe in this run")
else:
    caption = "T10: box-level probe AUC per pool and lesion class (95 % CI)"
    display(outputs.table(box_level, "04_T10_box_level", caption))
    figure = plot_pool_aucs(results, Level.BOX, "Box level: AUC by pool and lesion class")
    display(outputs.figure(figure, "04_box_level_aucs", "Box-level AUC by pool, model and lesion class"))

# %% [markdown]
# ## S10: image-level AUC with small / large strata

# %%
strata_columns = ["auc_small", "auc_large", "gap", "n_small", "n_large", "strata_note"]
image_level = results.loc[
    results["level"] == Level.IMAGE.value,
    ["cohort", "model", "lesion_class", "pool", "auc", "ci_low", "ci_high", *strata_columns, "n_test_positive"],
].reset_index(drop=True)
if image_level.empty:
    print("no image-level probe in this run")
else:
    caption = "S10: image-level AUC and size strata at the median lesion area"
    display(outputs.table(image_level, "04_S10_image_level", caption))
    figure = plot_pool_aucs(results, Level.IMAGE, "Image level: AUC by pool and lesion class")
    display(outputs.figure(figure, "04_image_level_aucs", "Image-level AUC by pool, model and lesion class"))

# %% [markdown]
# ## T11: stratum gaps per pool
# Gap = AUC(large) - AUC(small): how much harder the smaller half of the lesions is, pool by pool. At the box
# level the negatives of each stratum are size-matched to its positives.

# %%
gaps = results.loc[:, ["cohort", "level", "model", "lesion_class", "pool", *strata_columns]].reset_index(drop=True)
if not gaps.empty:
    caption = "T11: AUC of small and large lesions and their gap, per pool"
    display(outputs.table(gaps, "04_T11_stratum_gaps", caption))
if gaps["gap"].notna().any():
    figure = plot_stratum_gaps(results, "Stratum gap AUC(large) - AUC(small)")
    display(outputs.figure(figure, "04_stratum_gaps", "Stratum gaps per pool, level and lesion class"))
else:
    print("No class has both a small and a large test stratum on this run: no gap figure.")

# %% [markdown]
# ## S11: paired bootstrap, patch-local minus CLS (box level)
# Both AUCs are recomputed on the SAME resamples of the test rows; Benjamini-Hochberg over all (model x class)
# cells of a cohort.

# %%
paired = output(run, StageName.LESIONS, lesions.PAIRED)
if paired.empty:
    print("no paired comparison in this run")
else:
    caption = f"S11: patch-local minus CLS AUC, paired bootstrap ({params.lesions.n_boot} resamples), BH q-values"
    display(outputs.table(paired, "04_S11_paired_local_vs_cls", caption))

# %% [markdown]
# ## Operating points (beyond the paper)
# For every lesion probe above, the threshold that reaches each target specificity is chosen on the probe's
# out-of-fold training scores and applied once to the test rows (docs/PROTOCOL.md section 6.1): the test
# sensitivity with a 95 % bootstrap interval (training and test rows resampled), the specificity actually reached,
# and PPV / NPV at the run's prevalence (`operating_points.prevalence`). `sensitivity_optimistic` (threshold chosen
# on the test rows) is an upper bound, not a result. Then, at box level, patch-local minus CLS sensitivity at 95 %
# specificity with a paired interval. How to read: a probe at chance has sensitivity near 1 - specificity (the
# dashed line of the figure) and PPV near the prevalence.

# %%
from lesionsignal.paper import reporting_tables as rt
from lesionsignal.paper.reporting_figures import plot_jitter, plot_lesion_sensitivity, plot_size_strata

lesion_operating = output(run, StageName.LESIONS, lesions.OPERATING)
targets = sorted(params.operating_points.specificities)
gap_target = 0.95 if 0.95 in targets else targets[-1]
fit_keys = ("cohort", "model", "lesion_class", "level", "pool")
prevalence = f"{params.operating_points.prevalence:.0%}"
if lesion_operating.empty:
    print("no lesion probe in this run: no operating points")
else:
    caption = f"Lesion probes: AUC beside sensitivity at {', '.join(f'{t:.0%}' for t in targets)} specificity"
    display(
        outputs.table(
            rt.sensitivity_beside_auc(results, lesion_operating, fit_keys), "04_sensitivity_beside_auc", caption
        )
    )
    caption = (
        f"Operating points of every lesion probe: sensitivity, specificity, PPV and NPV at {prevalence} prevalence"
    )
    display(outputs.table(rt.operating_table(lesion_operating, fit_keys), "04_operating_points", caption))
    lesion_gaps = rt.at_specificity(output(run, StageName.LESIONS, lesions.SENSITIVITY_GAPS), gap_target)
    if not lesion_gaps.empty:
        caption = f"Box level: patch-local minus CLS sensitivity at {gap_target:.0%} specificity, paired 95 % interval"
        display(outputs.table(lesion_gaps, "04_sensitivity_gap_local_vs_cls", caption))
    for level in (Level.BOX.value, Level.IMAGE.value):
        if (lesion_operating["level"] == level).any():
            title = f"{level.capitalize()} level: sensitivity at {gap_target:.0%} specificity"
            figure = plot_lesion_sensitivity(lesion_operating, level, gap_target, title)
            caption = f"{level.capitalize()}-level sensitivity at {gap_target:.0%} specificity by pool, model and class"
            display(outputs.figure(figure, f"04_{level}_level_sensitivity", caption))

# %% [markdown]
# ## Size strata beyond the median
# The paper splits the test positives at their median area. Here each scheme of `lesions.size_strata` cuts them at
# other percentiles: `p33` (the smallest third against the rest), `p67` (the largest third against the rest) and
# `p33-p67` (terciles), with `median` repeated for comparison (its numbers are T11's). Each stratum is scored
# against its negatives (image level: every test negative; box level: the size-matched negatives of its own
# positives), with its area range, its positive and negative counts, and `detectable_vs_chance`: the smallest
# AUC - 0.5 that a stratum of its size detects at the run's level and power (`lesions.power_alpha`, `lesions.power`;
# Hanley-McNeil variance, docs/PROTOCOL.md section 7). The second table compares each scheme's largest and
# smallest strata: their gap beside `detectable_gap`, the smallest gap those two strata could detect.
#
# How to read them: a stratum whose `detectable_vs_chance` is 0.3 cannot tell an AUC of 0.7 from chance, whatever
# its point estimate; a gap is `supported` only where it is at least the detectable gap. A gap below it is not
# evidence of no difference, only of too few lesions to see one.

# %%
strata = output(run, StageName.LESIONS, lesions.STRATA)
strata_gaps = output(run, StageName.LESIONS, lesions.STRATA_GAPS)
if strata.empty:
    print("no lesion probe in this run: no size strata")
else:
    caption = "Size strata per scheme: area range, positives, negatives, AUC [95 % CI], smallest AUC - 0.5 detectable"
    display(outputs.table(rt.strata_table(strata), "04_size_strata", caption))
    caption = "Size strata: largest minus smallest stratum AUC per scheme beside the smallest gap those strata detect"
    display(outputs.table(strata_gaps, "04_size_strata_gaps", caption))
    schemes = list(dict.fromkeys(strata["scheme"]))
    shown = "p33-p67" if "p33-p67" in schemes else schemes[-1]
    figure = plot_size_strata(strata, shown, ("cls", "patch_local"), f"AUC across size strata ({shown})")
    caption = f"Stratum AUC across lesion size ({shown}) for CLS and patch-local, with each stratum's positive count"
    display(outputs.figure(figure, f"04_size_strata_{shown}", caption))

# %% [markdown]
# ## Box jitter: how much patch-local depends on a tight box
# The patch-local pool averages the tokens whose cells meet the box, so its result assumes the box is right. Here
# every box-level box is moved and resized by a seeded fraction of the encoder's patch (`lesions.jitter`, in patches:
# 0, 0.5, 1, 2; one draw per positive box, its negatives moved alike; docs/PROTOCOL.md section 7) and the patch-local
# probe is fitted again on the same rows. CLS and patch-mean see the whole image and do not move; the unjittered
# CLS AUC is drawn beside. Jitter 0 is the unjittered probe exactly. The jittered boxes are pooled in one extra
# forward pass per lesion image and encoder (token grids are not stored); the time is in the timing log below.
#
# How to read it: a patch-local AUC that falls towards the CLS line as the jitter grows says its advantage needs a
# box accurate to that many patches; a flat line says the box's exact edges do not matter at that scale.

# %%
jitter = output(run, StageName.LESIONS, lesions.JITTER)
if jitter.empty:
    print("lesions.jitter is empty or no box-level probe could be fitted: no box-jitter analysis")
else:
    caption = "Box jitter: patch-local AUC [95 % CI] at each jitter (encoder patches and canvas px), CLS unjittered"
    display(outputs.table(rt.jitter_table(jitter, results), "04_box_jitter", caption))
    caption = "Box jitter: patch-local AUC unjittered and at the largest jitter, and the change"
    display(outputs.table(rt.jitter_drop(jitter), "04_box_jitter_change", caption))
    cls_box = results.loc[(results["level"] == Level.BOX.value) & (results["pool"] == "cls")]
    for name in dict.fromkeys(jitter["cohort"]):
        figure = plot_jitter(
            jitter[jitter["cohort"] == name], cls_box[cls_box["cohort"] == name], f"Box jitter ({name})"
        )
        caption = f"Patch-local AUC against box jitter per class and model, CLS unjittered dotted ({name})"
        display(outputs.figure(figure, f"04_box_jitter_{name}", caption))

# %% [markdown]
# ## ChestX-Det10 both ways: the official split and a split that shares no patient
# ChestX-Det10's official split puts 271 patients on both sides (PROTOCOL section 1.3), so a probe may meet a test
# patient's other films in training. When a lesion cohort's split shares patients, every probe above is fitted
# again on the seeded patient-disjoint re-split (`cohorts[].seed`, at the official test size) and set beside the
# official one: AUC and the median-stratum gap of each, and re-split minus official with a 95 % interval (each
# split's test rows resampled on their own; the two test sets overlap, so the interval errs wide). A size gap that
# holds on both splits does not rest on the shared patients. The first table counts each analysed split's images,
# patients and patients on both sides.

# %%
analysed = output(run, StageName.LESIONS, lesions.SPLITS_ANALYSED)
if not analysed.empty:
    display(
        outputs.table(analysed, "04_splits_analysed", "Lesion cohorts: the splits analysed, patients on both sides")
    )
comparison = output(run, StageName.LESIONS, lesions.SPLIT_COMPARISON)
if comparison.empty and not params.lesions.compare_splits:
    print("lesions.compare_splits is false in the parameters: the splits are not compared.")
elif comparison.empty:
    print(
        "No lesion cohort of this run has a split that shares patients, so there is no second split to set beside it "
        "(its re-split would be the very same split; the table above counts the patients on both sides). The demo "
        "cohort is split by synthetic subject, patient-disjoint by construction; on ChestX-Det10 with its official "
        "split (params/paper.yaml) this section shows both."
    )
else:
    caption = (
        "Official split vs patient-disjoint re-split: AUC and median-stratum gap, re-split minus official [95 % CI]"
    )
    display(outputs.table(comparison, "04_split_comparison", caption))

# %% [markdown]
# ## Reported vs reproduced (study runs only)
# The paper's T10 values beside this run's; demo and smoke numbers are not comparable and are not set beside them.

# %%
if not params.run.comparable_with_paper:
    print(f"{params.run.value} run: no comparison with the paper's T10 (numbers not comparable).")
elif not box_level.empty:
    for name in dict.fromkeys(box_level["cohort"]):
        side_by_side = compare(
            box_level.loc[box_level["cohort"] == name], "T10", ("model", "lesion_class", "pool"), "auc", params.run
        )
        caption = f"T10 reported vs reproduced ({name})"
        display(outputs.table(side_by_side, f"04_T10_reported_vs_reproduced_{name}", caption))

# %% [markdown]
# ## Time and cache use
# Kept beside the executed notebook (reports/<run>/logs/), not among the tables: timings differ from run to run.

# %%
timing = output(run, StageName.LESIONS, lesions.TIMING)
outputs.run_log(timing, "04_lesion_timing")
display(timing)
