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
