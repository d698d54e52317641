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
# # 06 · Embedding separation: silhouette, Mahalanobis distance and UMAP
#
# Without any probe: how far does a perturbation move the embedding cloud? For every (encoder, condition, cohort,
# pool) this section measures the separation of the clean and perturbed embeddings (SPEC section 8, S7):
# - the cosine silhouette of the two groups, on a stratified seeded subsample (`separation.silhouette_points`);
# - the distance between the clean and perturbed centroids under the pooled within-group covariance shrunk as
#   0.9 S + 0.1 (tr S / d) I.
# Both are deterministic for fixed parameters. The Spearman rank agreement between each measure and the probe AUC
# of the same cells (section 03's probes) says whether "visible separation" and "linearly decodable" agree.
# UMAP pictures (cosine, `n_neighbors` and `min_dist` from the parameters, seed fixed) are drawn for the conditions
# in `separation.conditions`, or, when it is empty, for a default pair (S8, the smallest drawn pattern, and
# ground_glass_64, the largest diffuse one): UMAP costs seconds per panel.

# %%
import contextlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import display

from lesionsignal import separation as sep
from lesionsignal.arrays import load_arrays
from lesionsignal.detection import one_thread
from lesionsignal.outputs import Outputs
from lesionsignal.params import Analysis, load_params, resolve
from lesionsignal.study import conditions, detection_probes, embeddings_path, read_cohort

POOLS = ("cls", "patch_mean", "patch_local")

params = load_params(params_file)
params.check_files()
outputs = Outputs(params, notebook="06_umap_silhouette")
settings = params.separation
work = resolve(params, params.paths.work)
chosen = conditions(params)
present = [c.name for c in chosen]
models = [e.id for e in params.encoders]
panel_cohorts = params.cohorts_for(Analysis.PANEL)
asked = list(settings.conditions)
measured = [c for c in asked if c in present] if asked else present
not_extracted = [c for c in asked if c not in present]
timings = []
print(params.label)
print(f"separation over {len(measured)} condition(s) x {len(models)} encoder(s) x {len(panel_cohorts)} cohort(s)")
if not_extracted:
    print(f"separation.conditions names conditions this run did not extract, left out: {not_extracted}")

# %% [markdown]
# ## Inputs: embeddings (section 02) and probe AUCs (section 03)
# Missing embeddings are extracted now by section 02's cached pipeline; the AUCs come from section 03's cache.

# %%
manifests = {c.name: read_cohort(params, c) for c in panel_cohorts}
started = time.perf_counter()
run = detection_probes(params, manifests, models, measured)
aucs = run.results
timings.append({"step": "probe AUCs", "seconds": time.perf_counter() - started, "probed": run.files_probed})
print(f"{len(aucs)} probe AUCs ({run.files_probed} files probed now, {run.files_reused} from the cache)")

# %% [markdown]
# ## S7: separation per (encoder, condition, cohort, pool)

# %%
started = time.perf_counter()
rows = []
# Demo and smoke runs are many small problems on a small machine: one thread is fastest there.
with one_thread() if params.is_demo else contextlib.nullcontext():
    for model in models:
        for cohort in panel_cohorts:
            for name in measured:
                arrays = load_arrays(embeddings_path(params, model, cohort.name, name))
                for pool in POOLS:
                    labels = {"model": model, "dataset": cohort.name, "pool": pool, "perturbation": name}
                    rows.append(
                        sep.separation_row(
                            labels,
                            arrays[f"clean_{pool}"],
                            arrays[f"perturbed_{pool}"],
                            max_points=settings.silhouette_points,
                            seed=settings.seed,
                            shrink=settings.shrink,
                        )
                    )
separations = pd.DataFrame(rows)
timings.append({"step": "silhouette and Mahalanobis", "seconds": time.perf_counter() - started, "cells": len(rows)})
if not separations.empty:
    caption = (
        f"S7: clean vs perturbed separation: cosine silhouette ({settings.silhouette_points}-point subsample) and "
        f"Mahalanobis distance (shrink {settings.shrink})"
    )
    outputs.table(separations, "06_S7_separation", caption)
separations

# %% [markdown]
# ## Does separation rank the cells as the probes do?
# Spearman rho between each separation measure and the probe AUC of the same cells, over all cells and per pool.

# %%
if not separations.empty:
    agreement = sep.rank_agreement_table(separations, aucs)
    outputs.table(agreement, "06_rank_agreement", "Spearman rank agreement between separation and probe AUC")
    display(agreement)

# %% [markdown]
# ## UMAP panels
# One figure per encoder and cohort: a row per condition, a column per pool; blue clean, red perturbed.

# %%
drawn, absent = sep.umap_conditions(settings.conditions, present)
if absent:
    print(f"UMAP: separation.conditions not extracted in this run, not drawn: {list(absent)}")
print(f"UMAP conditions: {list(drawn)}")
started = time.perf_counter()
for model in models:
    for cohort in panel_cohorts:
        panels = []
        for name in drawn:
            arrays = load_arrays(embeddings_path(params, model, cohort.name, name))
            for pool in POOLS:
                clean, perturbed = arrays[f"clean_{pool}"], arrays[f"perturbed_{pool}"]
                labels = np.repeat([sep.CLEAN, sep.PERTURBED], [len(clean), len(perturbed)])
                coords, rows_used = sep.umap_embedding(
                    np.concatenate([clean, perturbed]),
                    n_neighbors=settings.n_neighbors,
                    min_dist=settings.min_dist,
                    seed=settings.seed,
                    max_points=settings.umap_points,
                    labels=labels,
                )
                panels.append((f"{name} / {pool}", coords, labels[rows_used]))
        if panels:
            figure = sep.plot_umap_panels(panels, f"{model} on {cohort.name}: clean vs perturbed")
            caption = f"UMAP of clean and perturbed embeddings, {model} on {cohort.name}: {', '.join(drawn)}"
            outputs.figure(figure, f"06_umap_{model}_{cohort.name}", caption)
timings.append({"step": "UMAP", "seconds": time.perf_counter() - started, "cells": len(drawn) * len(POOLS)})

# %%
outputs.run_log(pd.DataFrame(timings), "06_separation_timing")
print("written:", *[Path(e["path"]).name for e in outputs.written], sep="\n  ")
