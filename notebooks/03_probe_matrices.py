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
# # 03 · Probe matrices: where a frozen encoder keeps, or loses, each controlled stimulus
#
# For every cohort, feature source and condition of the run, a linear probe (docs/PROTOCOL.md, section 4) tells each
# clean image from its perturbed twin, once per pool of the SAME forward pass: the global token (CLS, or the
# model's own pooling head), the mean of all patch tokens, and the mean of the patch tokens over the perturbed
# region (patch-local). The raw-pixel baselines (64 x 64 image, 32 x 32 window at the patch) and a CNN fine-tuned
# end to end on the pixels bracket what the input itself carries. Every probe is fitted once into one long
# results frame; the paper's tables are slices of it:
#
# | table | what |
# |---|---|
# | T2 | disease classification (cardiomegaly, edema, lung lesion) on clean CLS embeddings: AUC with 95 % CI, F1 |
# | T3 / S2 | the six geometric patterns, CLS, with the fine-tuned CNN ceiling |
# | T4 | isotropic blur: every encoder (the frozen ResNet control among them), raw baselines, CNN oracle |
# | T5 / S3 | directional blur at L 21, P 64; the full 18-cell sweep with curves of AUC against P |
# | T6 | reticular and ground-glass patterns |
# | T7 / S5 | CLS vs patch-mean vs patch-local, with the patch-local minus CLS gap per model |
# | T8 | raw-pixel baselines |
# | T9 | clean-vs-perturbed disease protocol: delta AUC with paired bootstrap CI, BH-FDR per model |
#
# Inputs are the outputs of sections 01 and 02 (validated manifests, embedding files): only read, never
# re-encoded. Probe results are cached by content (embedding bytes, splits, probe settings, probe code), so a
# second run only reads them. Conditions that the parameters do not include are reported as absent, never filled in.

# %%
from pathlib import Path

import pandas as pd
from IPython.display import display

from lesionsignal.analysis.floors import auc_at_chance
from lesionsignal.config.params import Analysis
from lesionsignal.core.kinds import FINETUNED_POOLS, RAW_POOLS
from lesionsignal.features.registry import resolve_spec
from lesionsignal.paper import panel_tables as pt
from lesionsignal.paper.encoder_checks import card_evaluation, learning_reading, learning_table
from lesionsignal.paper.figures import plot_directional_curves, plot_heatmap
from lesionsignal.paper.registry import GEOMETRIC, PANEL_TABLES, POOLING_SLICE, TABLES
from lesionsignal.pipeline import probes
from lesionsignal.pipeline.embeddings import conditions
from lesionsignal.pipeline.stage import StageName, open_run, output
from lesionsignal.pipeline.stages import require

run = open_run(params_file)
params = run.params
outputs = run.catalog.outputs("03_probe_matrices")
print(params.label.text)
if not params.run.comparable_with_paper:
    print(
        f"\nThese are {params.run.value.upper()} results: a rendered cohort and small demo encoders (trained by this "
        "project on rendered films, or random-init). They show the pipeline and are NOT comparable with the "
        "paper; no reported-vs-reproduced table is made."
    )

# %% [markdown]
# ## Inputs: the embeddings and the probes
# The probes stage reads section 02's embedding files and section 01's manifests (only reads them). Every probe
# is cached by content, so a second run only reads the results; when an upstream stage has not run for these
# parameters, it runs first, through the same code its own section runs.

# %%
require(run, StageName.PROBES)
present = [c.name for c in conditions(params)]
results = output(run, StageName.PROBES, probes.DETECTION)
print(f"{len(results)} probes; {len(present)} conditions: {', '.join(present)}")

# %% [markdown]
# ## Which conditions each table has in this run
# A table is made from the conditions the parameters include; its absent conditions are listed here and left out.

# %%
coverage = pt.coverage([*PANEL_TABLES, TABLES["T9"]], present)
display(outputs.table(coverage, "03_coverage", "Conditions each table wants, has, and lacks in this run"))

# %% [markdown]
# ## The fine-tuned CNN pixel-signal ceiling
# A CNN trained end to end on clean vs perturbed images of the same detection set and split: the whole canvas
# downsampled (T3) and a window at the known patch (T4). In the study it is torchvision's ResNet-50 from ImageNet
# weights at 224 px; on demo and smoke runs a small CNN trained from scratch on CPU (lesionsignal.analysis.finetune).

# %%
finetuned = output(run, StageName.PROBES, probes.FINETUNE)
if not params.probe.finetuned_cnn:
    print("probe.finetuned_cnn is false in the parameters: the fine-tuned CNN ceiling is not run.")
elif finetuned.empty:
    print("none of the fine-tuned CNN's conditions (geometric, iso blur) is in this run's panel")
else:
    caption = "Fine-tuned CNN pixel-signal ceiling: AUC per condition and view"
    display(outputs.table(finetuned, "03_finetuned_cnn", caption))

# %% [markdown]
# ## Every detection probe, fitted once
# One probe per (source, cohort, condition, pool), each AUC with its stratified bootstrap 95 % CI; the raw-pixel
# source gives two baselines (raw-global, raw-oracle), each reported as a model of its own.

# %%
caption = "Every detection probe: AUC with 95 % CI and F1 per model, dataset, pool, condition"
display(outputs.table(results, "03_all_cells", caption))

# %% [markdown]
# ### How many cells are at chance
# AUC 0.5 is the floor of a probe that finds nothing. On the demo run every encoder cell sits there (192 of 192 with
# the committed weights: the paper's 174 and the 18 of the three untested families), for the trained demo encoder as
# for its random-init twin, in all three pools, patch-local included; only the raw-pixel oracle (a 32 x 32 window at
# the patch) and the small CNN's oracle window find some stimuli, so the stimuli are in the pixels. So the demo does
# not show the paper's mechanism (a global token that drops what the patch tokens over the region keep): its encoder,
# a 1-million-parameter ViT trained for an hour on films of one CT, has learned coarse content (the learning
# checks below) but not the few-pixel detail the panel asks about, and 240 training images per probe leave little
# power for a small signal. What the demo does show is how each table reads when an encoder keeps nothing, and the
# same tables on the study's encoders are the paper's question.

# %%
display(auc_at_chance(results))


# %% [markdown]
# ## The tables
# Rows are models (and probes, where a table mixes them); columns are `<dataset> <condition>`. A table none of
# whose conditions is in the run is not written; the reason is printed.


# %%
def emit(frame: pd.DataFrame, name: str, caption: str) -> None:
    if frame.empty:
        print(f"{name}: not written, none of its cells was computed in this run (see the coverage table)")
        return
    display(outputs.table(frame, name, caption))


emit(pt.t3_geometric(results), "03_T3_geometric_cls", "T3: geometric patterns, CLS probe AUC (fine-tuned CNN ceiling)")
emit(
    pt.long_slice(results, GEOMETRIC, ("cls", "finetuned")),
    "03_S2_geometric_cells",
    "S2: geometric patterns, every cell with its 95 % CI and F1",
)
emit(pt.t4_iso_blur(results), "03_T4_iso_blur", "T4: isotropic blur, CLS of every encoder, raw and CNN baselines")
emit(pt.t5_directional(results), "03_T5_directional", "T5: directional blur L 21 P 64, CLS probe AUC")
sweep = pt.directional_sweep(results)
emit(sweep, "03_S3_directional_sweep", "S3: directional blur, every (direction, L, P) cell, CLS probe AUC with CI")
emit(pt.t6_pathology(results), "03_T6_pathology", "T6: reticular and ground-glass patterns, CLS probe AUC")
emit(
    pt.pooling_comparison(results, POOLING_SLICE),
    "03_T7_pooling",
    "T7: CLS vs patch-mean vs patch-local AUC (representative conditions)",
)
emit(pt.pooling_comparison(results), "03_S5_pooling_all", "S5: CLS vs patch-mean vs patch-local AUC, every cell")
emit(pt.pooling_gap_summary(results), "03_pooling_gaps", "Patch-local minus CLS AUC per model over every cell")
emit(pt.t8_raw(results), "03_T8_raw_pixels", "T8: raw-pixel baselines (raw-global 64 x 64, raw-oracle 32 x 32)")

# %% [markdown]
# ## Heatmaps and directional-blur curves
# AUC per model and condition, one heatmap per pool, on a fixed scale from chance (0.5) to 1.0; then CLS AUC
# against the patch side P for each direction and kernel length L.

# %%
heatmaps = {
    "cls": ("cls",),
    "patch_mean": ("patch_mean",),
    "patch_local": ("patch_local",),
    "baselines": (*RAW_POOLS, *FINETUNED_POOLS),
}
for name, pools in heatmaps.items():
    frame = pt.heatmap_frame(results, pools)
    if frame.empty:
        print(f"heatmap {name}: no results for pools {pools}")
        continue
    fig = plot_heatmap(frame, f"Detection AUC, pool: {name}")
    display(outputs.figure(fig, f"03_heatmap_{name}", f"Detection AUC heatmap, model x condition, pool {name}"))

if sweep.empty:
    print("directional curves: no directional-blur condition in this run")
else:
    fig = plot_directional_curves(sweep, "Directional blur: CLS AUC against patch side P")
    caption = "Directional blur: CLS probe AUC vs P per direction and L"
    display(outputs.figure(fig, "03_directional_curves", caption))

# %% [markdown]
# ## Operating points: sensitivity at a fixed specificity (beyond the paper)
# An AUC says how well a probe ranks; a reader of films needs a threshold. For every probe above, the threshold
# that reaches each target specificity (`operating_points.specificities`, default 90 % and 95 %) is chosen on the
# probe's **out-of-fold training scores** (each training image scored by the fold model that did not see it) and
# applied once to the test rows, so no test row ever moves it (docs/PROTOCOL.md section 6.1). Each table gives
# the test sensitivity at that threshold with a 95 % bootstrap interval (training and test rows both resampled, so
# the threshold's own uncertainty is in it), the test specificity it actually reached, and the PPV and NPV it would
# have where the finding has the run's prevalence (`operating_points.prevalence`, default 3 %): the detection sets are
# 50:50 by design, which would flatter PPV. `sensitivity_optimistic` is the sensitivity at a threshold chosen on
# the test rows themselves: an upper bound to read against, never a result.
#
# How to read them. A probe at chance has sensitivity about 1 - specificity (0.10 and 0.05) and PPV about the
# prevalence; a perfect probe has sensitivity 1 and PPV 1. The last tables set patch-local against CLS: the
# difference in sensitivity at 95 % specificity, with a paired interval (both pools scored on the same resamples).
# On the demo every encoder cell sits near chance, so these tables show how they read, not the paper's mechanism.

# %%
from lesionsignal.paper import reporting_tables as rt
from lesionsignal.paper.reporting_figures import plot_sensitivity_gaps

operating = output(run, StageName.PROBES, probes.OPERATING)
sensitivity_gaps = output(run, StageName.PROBES, probes.SENSITIVITY_GAPS)
targets = sorted(params.operating_points.specificities)
gap_target = 0.95 if 0.95 in targets else targets[-1]
keys = ("model", "dataset", "pool", "perturbation")
prevalence = f"{params.operating_points.prevalence:.0%}"
emit(
    rt.sensitivity_beside_auc(results, operating, keys),
    "03_sensitivity_beside_auc",
    f"Every detection probe: AUC [95 % CI] beside sensitivity at {', '.join(f'{t:.0%}' for t in targets)} "
    "specificity (threshold from out-of-fold training scores)",
)
emit(
    rt.operating_table(operating, keys),
    "03_operating_points",
    f"Operating points of every detection probe: sensitivity, specificity, PPV and NPV at {prevalence} prevalence",
)
slice_auc = results[results["perturbation"].isin(POOLING_SLICE)]
emit(
    rt.sensitivity_beside_auc(slice_auc, operating, keys),
    "03_T7_sensitivity",
    "Beside T7: CLS vs patch-mean vs patch-local, AUC and sensitivity at fixed specificity (representative cells)",
)
gap_rows = rt.at_specificity(sensitivity_gaps, gap_target)
emit(
    gap_rows,
    "03_sensitivity_gap_local_vs_cls",
    f"Patch-local minus CLS sensitivity at {gap_target:.0%} specificity per cell, paired 95 % interval",
)
emit(
    rt.gap_summary(sensitivity_gaps, gap_target),
    "03_sensitivity_gap_summary",
    f"Patch-local minus CLS sensitivity at {gap_target:.0%} specificity: mean per model and cells whose interval "
    "lies above, below or across 0",
)
if not gap_rows.empty:
    fig = plot_sensitivity_gaps(
        sensitivity_gaps, gap_target, f"Patch-local minus CLS sensitivity at {gap_target:.0%} specificity"
    )
    caption = f"Patch-local minus CLS sensitivity at {gap_target:.0%} specificity per condition, paired 95 % interval"
    display(outputs.figure(fig, "03_sensitivity_gaps", caption))

# %% [markdown]
# ## Disease classification (T2) and the clean-vs-perturbed disease protocol (T9)
# A disease probe per (encoder, cohort, disease) on clean CLS embeddings, trained on the training images (CV
# folds grouped by patient) and tested on the patient-disjoint test images. The same probe then scores the same
# test images perturbed: delta AUC = AUC(perturbed) - AUC(clean) with a paired bootstrap CI and p-value; the
# p-values of each model's cells are adjusted together (Benjamini-Hochberg, FDR 0.05).

# %%
panel_cohorts = [c.name for c in params.cohorts_for(Analysis.PANEL)]
not_extracted = [c.name for c in params.cohorts_for(Analysis.DISEASE) if c.name not in panel_cohorts]
if not_extracted:
    print(f"disease cohorts without panel embeddings (not in the panel analysis), left out: {not_extracted}")
t9_present = [c for c in TABLES["T9"].conditions if c in present]
print(f"T9 conditions in this run: {len(t9_present)} of {len(TABLES['T9'].conditions)}: {', '.join(t9_present) or '-'}")
skipped = output(run, StageName.PROBES, probes.DISEASE_SKIPPED)
if not skipped.empty:
    print("disease cells that could not be computed (too few cases in a split), left empty:")
    emit(skipped, "03_disease_skipped", "Disease cells not computed, with the reason")
t2_cells, t9_cells = output(run, StageName.PROBES, probes.T2), output(run, StageName.PROBES, probes.T9)
emit(pt.t2_disease(t2_cells), "03_T2_disease", "T2: disease classification on clean CLS embeddings, AUC [95 % CI], F1")
emit(t2_cells, "03_T2_disease_cells", "T2 cells: AUC, CI, F1 (OOF threshold and optimistic), C, sizes")
disease_operating = output(run, StageName.PROBES, probes.DISEASE_OPERATING)
emit(
    rt.operating_table(disease_operating, ("task", "model", "dataset")),
    "03_T2_operating_points",
    f"Beside T2: disease probes' sensitivity at fixed specificity, PPV and NPV at {prevalence} prevalence",
)
emit(t9_cells, "03_T9_cells", "T9 cells: delta AUC (perturbed - clean), paired bootstrap CI, p, BH q per model")
t9 = pt.t9_summary(t9_cells, params.probe.alpha)
emit(t9, "03_T9_significance", f"T9: cells significant at BH-FDR {params.probe.alpha:g} per model")

# %% [markdown]
# ## Has the trained encoder learned anything? (checks independent of the stimuli)
# Where the run has a trained encoder and its random-init twin (the demo: the demo ViT trained by this project and the
# same architecture untrained), checks that know nothing of the study's stimuli compare them on the same images:
#
# - the mean test AUC of the three disease probes above (T2), then each finding alone;
# - same-subject retrieval on clean vectors (CLS, then the patch mean): top-1, how often an image's nearest other
#   image (cosine) is the other film of its subject (chance about 1 in the number of images); and the percentile
#   rank of that other film, the share of other subjects' images less similar to the query (chance 0.5). Top-1 is
#   the coarser score: the demo's subjects are deformations of one CT and a film's own pose and exposure differ
#   more than subjects do, so even the films' raw pixels rarely put the other film first; the percentile rank
#   still sees a weaker subject signal.
#
# Intervals resample patients, the same resamples for both encoders, so the difference has a paired 95 % interval.
# The checks run on every cohort whose `uses` include `learning`. The demo run has two: the demo cohort itself (its
# T2 probes, 52 test films; 220 retrieval queries), and `learning_films`, 800 clean films of 400 further subjects of
# the same generator that enter no other analysis. The second was sized in advance (docs/PROTOCOL.md, section 11)
# so that the checks can separate the encoders at all: its disease probes are fitted on its 400 training films and
# tested on its 400 test films, and every one of its films is a retrieval query.
# The column "films' own pixels" runs every check on the raw pixels (the 64 x 64 film of the raw-pixel baseline),
# with the same probe, images, queries and resamples: it needs no model, so it shows how far a check can go on these
# films at all.
# The second table is the same check at a larger scale, recorded by `make demo-encoder` in the model card: probes
# fitted on its 1,800 training films, tested on 200 films of 100 held-out subjects of the training generator.

# %%
learning = output(run, StageName.PROBES, probes.LEARNING)
if learning.empty:
    print("No trained encoder with a random-init twin in this run: no learning checks.")
else:
    labels = {e.id: resolve_spec(e.id).label for e in params.encoders}
    caption = "Learning checks: trained encoder against its random-init twin, paired 95 % intervals"
    emit(learning_table(learning, labels), "03_learning_checks", caption)
    print(learning_reading(learning))
    for trained in dict.fromkeys(learning["encoder"]):
        recorded = card_evaluation(Path(resolve_spec(trained).source))
        if recorded.empty:
            print(f"{trained}: its model folder records no evaluation of its own")
            continue
        caption = f"Learning checks recorded by make demo-encoder in the model card of {trained}, paired 95 % intervals"
        emit(learning_table(recorded, labels), f"03_learning_checks_model_card_{trained}", caption)
        print(learning_reading(recorded))

# %% [markdown]
# How to read it. A difference whose interval excludes 0 is evidence that training changed what the vector carries;
# the lines under each table say, check by check, which side of 0 the interval lies on. With the committed weights:
#
# - On `learning_films`, the cohort sized for these checks, the trained encoder is ahead of its twin on the mean of
#   the disease probes (about 0.69 against 0.63), on cardiomegaly and edema, on same-subject top-1 (12 of 800
#   queries put the subject's other film first, against 1 for the twin) and on the percentile rank, in CLS and in
#   the patch mean. The lung-lesion probe (a Nodule or Mass anywhere on the film) is at chance for both encoders and
#   for the pixels.
# - On the demo cohort the same checks lean the same way, but only edema and the percentile rank separate: 52 test
#   films and 220 queries are too few for the rest.
# - The films' own pixels are ahead of both encoders on the disease probes and, on the larger cohort, on top-1. The
#   films' layout is in the pixels, and a small ViT's global vector keeps less of it. A film's own pose and exposure
#   differ more than subjects do, so even the pixels put a subject's other film first for only a few films in a
#   hundred.
#
# The model card's table comes from the 200 held-out films the training schedule was chosen on; both cohorts of
# the demo run are independent of that choice. A 1-million-parameter ViT trained for an hour with masked-image
# modelling has learned coarse content: docs/PROTOCOL.md, section 11, has what was tried.

# %% [markdown]
# ## Reported vs reproduced
# On a study run each table's cells are set beside the paper's values with the difference. Demo and smoke runs
# are not comparable with the paper and get no such table.

# %%
if not params.run.comparable_with_paper:
    print(f"{params.run.value} run: results are demo results and are not comparable with the paper; skipped.")
else:
    reproduced = {"T2": t2_cells, "T9": t9}
    for table in ("T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9"):
        frame = reproduced.get(table, results)
        if TABLES[table].value not in frame.columns:
            print(f"{table}: this run has no column {TABLES[table].value!r} (alpha differs from 0.05); skipped")
            continue
        side_by_side = pt.reported_vs_reproduced(table, frame, params.run)
        emit(side_by_side, f"03_{table}_vs_paper", f"{table}: reported vs reproduced")

# %% [markdown]
# ## Time and cache use
# Kept beside the executed notebook (reports/<run>/logs/), not among the tables: timings differ from run to run.

# %%
timing = output(run, StageName.PROBES, probes.TIMING)
outputs.run_log(timing, "03_probe_matrices_timing")
display(timing)
