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
# For every cohort, feature source and condition of the run, a linear probe (SPEC section 4) tries to tell each
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
# Inputs are notebook 02's caches (embeddings and validated manifests): what they hold is only read, never
# re-encoded. Probe results are cached by content (embedding bytes, splits, probe settings, probe code), so a
# second run only reads them. Conditions that the parameters do not include are reported as absent, never filled in.

# %%
import time

import numpy as np
import pandas as pd
from IPython.display import display

from lesionsignal import panel_tables as pt
from lesionsignal.arrays import load_arrays
from lesionsignal.detection import file_cells, one_thread, probe_config, run_files_cached, write_frame
from lesionsignal.disease import T9_CONDITIONS, run_disease
from lesionsignal.features import RawPixels
from lesionsignal.finetune import FinetuneConfig, default_cells, run_finetune, study_config
from lesionsignal.outputs import Outputs
from lesionsignal.params import Analysis, load_params, resolve
from lesionsignal.study import (
    conditions,
    detection_items,
    device_for,
    embeddings_path,
    encoder_source,
    extract_cohort,
    placement,
    read_cohort,
    source_ids,
    splits_of,
)

params = load_params(params_file)
outputs = Outputs(params, notebook="03_probe_matrices")
work = resolve(params, params.paths.work)
timings: list[dict[str, object]] = []
print(params.label)
if params.is_demo:
    print(
        f"\nThese are {params.run.value.upper()} results: a rendered cohort and random-init demo encoders. They "
        "exercise the pipeline and are NOT comparable with the paper; no reported-vs-reproduced table is made."
    )

# %% [markdown]
# ## Inputs: notebook 02's caches
# The validated manifest of each panel cohort and one embedding file per (source, cohort, condition). When section
# 02 has not run, the missing files are extracted now by its own cached pipeline; files present are only read.

# %%
chosen = conditions(params)
present = [c.name for c in chosen]
panel_cohorts = params.cohorts_for(Analysis.PANEL)
sources = source_ids(params)
manifests = {c.name: read_cohort(params, c, progress=False) for c in panel_cohorts}
splits = {name: splits_of(m) for name, m in manifests.items()}
paths = {
    (s, c.name, k): embeddings_path(params, s, c.name, k)
    for s in sources
    for c in panel_cohorts
    for k in [*present, "clean"]
}
missing = sorted({source for (source, _, _), path in paths.items() if not path.is_file()})
if missing:
    print(f"embeddings of {missing} are not in section 02's cache: extracting them now with its cached pipeline")
    started = time.perf_counter()
    device = device_for(params)
    feature_sources = [RawPixels()] if RawPixels().source_id in missing else []
    feature_sources += [encoder_source(e, device) for e in params.encoders if e.id in missing]
    for cohort in panel_cohorts:
        extract_cohort(params, feature_sources, cohort, manifests[cohort.name], chosen, progress=False)
    timings.append({"step": "extraction (section 02 cache missing)", "seconds": time.perf_counter() - started})
print(f"cohorts: {list(manifests)}; sources: {sources}; {len(present)} conditions: {', '.join(present)}")

# %% [markdown]
# ## Which conditions each table has in this run
# A table is made from the conditions the parameters include; its absent conditions are listed here and left out.

# %%
wanted = [*pt.PANEL_TABLES, pt.TableConditions("T9 clean-vs-perturbed disease", T9_CONDITIONS)]
coverage = pt.coverage(wanted, present)
outputs.table(coverage, "03_coverage", "Conditions each table wants, has, and lacks in this run")
coverage

# %% [markdown]
# ## Every detection probe, fitted once
# One probe per (source, cohort, condition, pool), each AUC with its stratified bootstrap 95 % CI; the raw-pixel
# source gives two baselines (raw-global, raw-oracle), each reported as a model of its own.

# %%
started = time.perf_counter()
config = probe_config(params.probe)
files = []
for source in sources:
    for cohort in panel_cohorts:
        for name in present:
            path = paths[(source, cohort.name, name)]
            with np.load(path, allow_pickle=False) as archive:
                names = archive.files
            files.append((path, file_cells(source, cohort.name, name, names)))
run = run_files_cached(
    files, splits, config, params.probe.n_boot, work / "probes" / "detection", workers=params.probe.workers
)
results = run.results
timings.append(
    {
        "step": "detection probes",
        "seconds": time.perf_counter() - started,
        "probed": run.files_probed,
        "reused": run.files_reused,
        "probes": len(results),
    }
)
print(f"{len(results)} probes from {len(files)} files ({run.files_probed} probed now, {run.files_reused} cached)")

# %% [markdown]
# ## The fine-tuned CNN pixel-signal ceiling
# A CNN trained end to end on clean vs perturbed images of the same detection set and split: the whole canvas
# downsampled (T3) and a window at the known patch (T4). In the study it is torchvision's ResNet-50 from ImageNet
# weights at 224 px; on demo and smoke runs a small CNN trained from scratch on CPU (lesionsignal.finetune).

# %%
finetuned = pd.DataFrame()
if not params.probe.finetuned_cnn:
    print("probe.finetuned_cnn is false in the parameters: the fine-tuned CNN ceiling is not run.")
else:
    started = time.perf_counter()
    device = device_for(params)
    if params.is_demo:
        ft_config = FinetuneConfig(
            epochs=params.probe.cnn_epochs, seed=params.probe.seed, n_boot=params.probe.n_boot, device=device
        )
    else:
        ft_config = study_config(params.probe.cnn_epochs, params.probe.seed, params.probe.n_boot, device)
    ft_cells = default_cells(chosen)
    if not ft_cells:
        print("none of the fine-tuned CNN's conditions (geometric, iso blur) is in this run's panel")
    runs = []
    for cohort in panel_cohorts if ft_cells else []:
        items = detection_items(manifests[cohort.name], cohort)
        ft_run = run_finetune(
            items,
            splits[cohort.name],
            cohort.name,
            ft_cells,
            placement(params),
            ft_config,
            work / "probes" / "finetune",
            workers=params.probe.workers,
        )
        runs.append(ft_run.results)
        timings.append(
            {
                "step": f"fine-tuned CNN {cohort.name}",
                "seconds": ft_run.seconds,
                "probed": ft_run.trained,
                "reused": ft_run.reused,
                "probes": len(ft_run.results),
            }
        )
    if runs:
        finetuned = pd.concat(runs, ignore_index=True)
        outputs.table(finetuned, "03_finetuned_cnn", "Fine-tuned CNN pixel-signal ceiling: AUC per condition and view")
        display(finetuned)
        results = pd.concat([results, finetuned.drop(columns=["weights"])], ignore_index=True)

write_frame(results, work / "probes" / params.digest() / "detection.csv")  # for later notebooks (SFDI, figures)
outputs.table(
    results, "03_all_cells", "Every detection probe: AUC with 95 % CI and F1 per model, dataset, pool, condition"
)


# %% [markdown]
# ## The tables
# Rows are models (and probes, where a table mixes them); columns are `<dataset> <condition>`. A table none of
# whose conditions is in the run is not written; the reason is printed.


# %%
def emit(frame: pd.DataFrame, name: str, caption: str) -> None:
    if frame.empty:
        print(f"{name}: not written, none of its cells was computed in this run (see the coverage table)")
        return
    outputs.table(frame, name, caption)
    print(caption)
    display(frame)


emit(pt.t3_geometric(results), "03_T3_geometric_cls", "T3: geometric patterns, CLS probe AUC (fine-tuned CNN ceiling)")
emit(
    pt.long_slice(results, pt.GEOMETRIC, ("cls", "finetuned")),
    "03_S2_geometric_cells",
    "S2: geometric patterns, every cell with its 95 % CI and F1",
)
emit(pt.t4_iso_blur(results), "03_T4_iso_blur", "T4: isotropic blur, CLS of every encoder, raw and CNN baselines")
emit(pt.t5_directional(results), "03_T5_directional", "T5: directional blur L 21 P 64, CLS probe AUC")
sweep = pt.directional_sweep(results)
emit(sweep, "03_S3_directional_sweep", "S3: directional blur, every (direction, L, P) cell, CLS probe AUC with CI")
emit(pt.t6_pathology(results), "03_T6_pathology", "T6: reticular and ground-glass patterns, CLS probe AUC")
emit(
    pt.pooling_comparison(results, pt.POOLING_SLICE),
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
    "baselines": (*pt.RAW_POOLS, *pt.FINETUNED_POOLS),
}
for name, pools in heatmaps.items():
    frame = pt.heatmap_frame(results, pools)
    if frame.empty:
        print(f"heatmap {name}: no results for pools {pools}")
        continue
    fig = pt.plot_heatmap(frame, f"Detection AUC, pool: {name}")
    outputs.figure(fig, f"03_heatmap_{name}", f"Detection AUC heatmap, model x condition, pool {name}")

if sweep.empty:
    print("directional curves: no directional-blur condition in this run")
else:
    fig = pt.plot_directional_curves(sweep, "Directional blur: CLS AUC against patch side P")
    outputs.figure(fig, "03_directional_curves", "Directional blur: CLS probe AUC vs P per direction and L")

# %% [markdown]
# ## Disease classification (T2) and the clean-vs-perturbed disease protocol (T9)
# A disease probe per (encoder, cohort, disease) on clean CLS embeddings, trained on the training images (CV
# folds grouped by patient) and tested on the patient-disjoint test images. The same probe then scores the same
# test images perturbed: delta AUC = AUC(perturbed) - AUC(clean) with a paired bootstrap CI and p-value; the
# p-values of each model's cells are adjusted together (Benjamini-Hochberg, FDR 0.05).

# %%
started = time.perf_counter()
disease_cohorts = [c.name for c in params.cohorts_for(Analysis.DISEASE)]
not_extracted = [name for name in disease_cohorts if name not in manifests]
if not_extracted:
    print(f"disease cohorts without panel embeddings (not in the panel analysis), left out: {not_extracted}")
t9_present = [c for c in T9_CONDITIONS if c in present]
print(f"T9 conditions in this run: {len(t9_present)} of {len(T9_CONDITIONS)}: {', '.join(t9_present) or '-'}")


def load_clean(model: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = load_arrays(paths[(model, dataset, "clean")], ("image_ids", "cls"))
    return arrays["image_ids"], arrays["cls"]


def load_perturbed(model: str, dataset: str, condition: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = load_arrays(paths[(model, dataset, condition)], ("image_ids", "perturbed_cls"))
    return arrays["image_ids"], arrays["perturbed_cls"]


# One thread, as in the worker processes of the detection probes: the numbers do not depend on the core count.
with one_thread():
    disease = run_disease(
        [e.id for e in params.encoders],
        {name: manifests[name] for name in disease_cohorts if name in manifests},
        t9_present,
        load_clean,
        load_perturbed,
        config,
        params.probe.n_boot,
        params.probe.alpha,
        paired_n_boot=params.probe.paired_n_boot,
    )
timings.append({"step": "disease probes", "seconds": time.perf_counter() - started, "probes": len(disease.t2)})
if not disease.skipped.empty:
    print("disease cells that could not be computed (too few cases in a split), left empty:")
    emit(disease.skipped, "03_disease_skipped", "Disease cells not computed, with the reason")
emit(
    pt.t2_disease(disease.t2), "03_T2_disease", "T2: disease classification on clean CLS embeddings, AUC [95 % CI], F1"
)
emit(disease.t2, "03_T2_disease_cells", "T2 cells: AUC, CI, F1 (OOF threshold and optimistic), C, sizes")
emit(disease.t9, "03_T9_cells", "T9 cells: delta AUC (perturbed - clean), paired bootstrap CI, p, BH q per model")
t9 = pt.t9_summary(disease.t9, params.probe.alpha)
emit(t9, "03_T9_significance", f"T9: cells significant at BH-FDR {params.probe.alpha:g} per model")

# %% [markdown]
# ## Reported vs reproduced
# On a study run each table's cells are set beside the paper's values with the difference. Demo and smoke runs
# are not comparable with the paper and get no such table.

# %%
if params.is_demo:
    print(f"{params.run.value} run: results are demo results and are not comparable with the paper; skipped.")
else:
    reproduced = {"T2": disease.t2, "T9": t9}
    for table in pt.REPORTED:
        frame = reproduced.get(table, results)
        if pt.REPORTED[table].value not in frame.columns:
            print(f"{table}: this run has no column {pt.REPORTED[table].value!r} (alpha differs from 0.05); skipped")
            continue
        emit(
            pt.reported_vs_reproduced(table, frame, params), f"03_{table}_vs_paper", f"{table}: reported vs reproduced"
        )

# %%
outputs.run_log(pd.DataFrame(timings), "03_probe_matrices_timing")
pd.DataFrame(timings)
