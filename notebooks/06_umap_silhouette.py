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
# pool) this section measures the separation of the clean and perturbed embeddings (docs/PROTOCOL.md, section 8, S7):
# - the cosine silhouette of the two groups, on a stratified seeded subsample (`separation.silhouette_points`);
# - the distance between the clean and perturbed centroids under the pooled within-group covariance shrunk as
#   0.9 S + 0.1 (tr S / d) I.
# Both are deterministic for fixed parameters. The Spearman rank agreement between each measure and the probe AUC
# of the same cells (section 03's probes) says whether "visible separation" and "linearly decodable" agree.
# UMAP pictures (cosine, `n_neighbors` and `min_dist` from the parameters, seed fixed) are drawn for the conditions
# in `separation.conditions`, or, when it is empty, for a default pair (S8, the smallest drawn pattern, and
# ground_glass_64, the largest diffuse one): UMAP costs seconds per panel.

# %%
from IPython.display import display

from lesionsignal.analysis import separation as sep
from lesionsignal.analysis.floors import silhouette_at_floor
from lesionsignal.config.params import Analysis
from lesionsignal.core.kinds import ENCODER_POOLS
from lesionsignal.paper.figures import plot_umap_panels
from lesionsignal.paper.registry import UMAP_CONDITIONS
from lesionsignal.pipeline import probes
from lesionsignal.pipeline.embeddings import conditions, embedding_file
from lesionsignal.pipeline.stage import StageName, open_run, output
from lesionsignal.pipeline.stages import require

run = open_run(params_file)
params = run.params
outputs = run.catalog.outputs("06_umap_silhouette")
settings = params.separation
present = [c.name for c in conditions(params)]
models = [e.id for e in params.encoders]
panel_cohorts = [c.name for c in params.cohorts_for(Analysis.PANEL)]
asked = list(settings.conditions)
measured = [c for c in asked if c in present] if asked else present
not_extracted = [c for c in asked if c not in present]
print(params.label.text)
print(f"separation over {len(measured)} condition(s) x {len(models)} encoder(s) x {len(panel_cohorts)} cohort(s)")
if not_extracted:
    print(f"separation.conditions names conditions this run did not extract, left out: {not_extracted}")

# %% [markdown]
# ## Inputs: embeddings (section 02) and probe AUCs (section 03)
# Both are read from the outputs of their stages (which run first, through their own code, when they have not
# run for these parameters).

# %%
require(run, StageName.PROBES)
results = output(run, StageName.PROBES, probes.DETECTION)
aucs = results.loc[results["model"].isin(models) & results["perturbation"].isin(measured)]
print(f"{len(aucs)} probe AUCs of {len(models)} encoder(s) over {len(measured)} condition(s)")

# %% [markdown]
# ## S7: separation per (encoder, condition, cohort, pool)

# %%
files = {(m, c, k): embedding_file(run, m, c, k) for m in models for c in panel_cohorts for k in measured}
separations = sep.separation_table(
    files, ENCODER_POOLS, max_points=settings.silhouette_points, seed=settings.seed, shrink=settings.shrink
)
if not separations.empty:
    caption = (
        f"S7: clean vs perturbed separation: cosine silhouette ({settings.silhouette_points}-point subsample) and "
        f"Mahalanobis distance (shrink {settings.shrink})"
    )
    display(outputs.table(separations, "06_S7_separation", caption))
    display(silhouette_at_floor(separations, settings.silhouette_points))

# %% [markdown]
# The silhouette has a floor that is not 0: when the perturbed vectors sit exactly on their clean twins (the
# perturbation does not move the embedding), every point's silhouette is -1/m for m points per group, -1/300 =
# -0.003333 for 300 twins. A column of that value means "the embedding did not move", which on the demo run's
# encoders, trained and random-init, is the expected outcome (section 03 says why), not a bug. A real separation gives
# values above it; the Mahalanobis distance beside it says by how much the centroids moved.

# %% [markdown]
# ## Does separation rank the cells as the probes do?
# Spearman rho between each separation measure and the probe AUC of the same cells, over all cells and per pool.

# %%
if not separations.empty:
    agreement = sep.rank_agreement_table(separations, aucs)
    caption = "Spearman rank agreement between separation and probe AUC"
    display(outputs.table(agreement, "06_rank_agreement", caption))

# %% [markdown]
# ## UMAP panels
# One figure per encoder and cohort: a row per condition, a column per pool; blue clean, red perturbed.

# %%
drawn, absent = sep.umap_conditions(settings.conditions, present, UMAP_CONDITIONS)
if absent:
    print(f"UMAP: separation.conditions not extracted in this run, not drawn: {list(absent)}")
print(f"UMAP conditions: {list(drawn)}")
for model in models:
    for cohort in panel_cohorts:
        panels = sep.umap_panels(
            {name: embedding_file(run, model, cohort, name) for name in drawn},
            ENCODER_POOLS,
            n_neighbors=settings.n_neighbors,
            min_dist=settings.min_dist,
            seed=settings.seed,
            max_points=settings.umap_points,
        )
        if panels:
            figure = plot_umap_panels(panels, f"{model} on {cohort}: clean vs perturbed")
            caption = f"UMAP of clean and perturbed embeddings, {model} on {cohort}: {', '.join(drawn)}"
            display(outputs.figure(figure, f"06_umap_{model}_{cohort}", caption))
