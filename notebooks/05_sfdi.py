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
# # 05 · SFDI: one number for how much small-feature signal each encoder keeps
#
# The Small-Feature Detectability Index (docs/PROTOCOL.md, section 8) summarises a probe's detection AUCs over a
# panel of small conditions: the geometric mean of each AUC clipped below at 0.5, so 0.5 means blind to the whole
# panel and 1.0 perfect. The paper reports it for the CLS probe (T12); here it is computed for CLS, patch-mean and
# patch-local, per encoder and cohort, with the mean over cohorts. Beside it: each encoder's patch-local
# recovery, the mean over the same panel of AUC(patch-local) - AUC(CLS), i.e. how much of the lost signal the
# tokens over the perturbed region still hold.
#
# The panel is `sfdi.panel` in the parameters (default: C1, C2, L4, L8, S4, S8, iso_blur_4, iso_blur_8,
# reticular_fine_32, ground_glass_64). When the run did not extract all of them (the smoke parameters, for
# example) the index is computed over those it has and every table and figure says so: it is then NOT the
# paper's index. The AUCs are section 03's probes, read from the output of its stage.

# %%
import pandas as pd
from IPython.display import display

from lesionsignal.analysis import sfdi
from lesionsignal.analysis.floors import sfdi_at_floor
from lesionsignal.paper.figures import plot_sfdi_recovery
from lesionsignal.paper.reference import compare
from lesionsignal.pipeline import probes
from lesionsignal.pipeline.embeddings import conditions
from lesionsignal.pipeline.stage import StageName, open_run, output
from lesionsignal.pipeline.stages import require

run = open_run(params_file)
params = run.params
outputs = run.catalog.outputs("05_sfdi")
present = [c.name for c in conditions(params)]
models = [e.id for e in params.encoders]
coverage = sfdi.panel_coverage(params.sfdi.panel, present)
print(params.label.text)
print(f"SFDI panel: {coverage.label}")

# %% [markdown]
# ## The panel in this run
# Which of the panel's conditions the run extracted.

# %%
panel_table = pd.DataFrame(
    {"condition": list(coverage.wanted), "in_run": [name in coverage.present for name in coverage.wanted]}
)
caption = f"SFDI panel conditions and whether this run has them: {coverage.label}"
display(outputs.table(panel_table, "05_sfdi_panel", caption))
if not coverage.present:
    print("None of the SFDI panel's conditions is in this run: no index can be computed; the section stops here.")

# %% [markdown]
# ## Inputs: the probe AUCs of section 03
# Section 03's probes stage holds every detection probe; this section reads the encoders' rows over the panel's
# conditions (running that stage first, through its own code, when it has not run for these parameters).

# %%
require(run, StageName.PROBES)
results = output(run, StageName.PROBES, probes.DETECTION)
aucs = results.loc[results["model"].isin(models) & results["perturbation"].isin(coverage.present)]
print(f"{len(aucs)} probe AUCs of {len(models)} encoder(s) over {len(coverage.present)} panel condition(s)")

# %% [markdown]
# ## T12: SFDI per encoder, cohort and pool
# One index per (encoder, cohort, pool); the `mean` rows average the cohorts. `panel` says over how many of the
# panel's conditions it was computed.

# %%
if coverage.present:
    table = sfdi.sfdi_report(aucs, coverage, by=("model", "dataset", "pool"))
    caption = f"T12: SFDI per encoder, cohort and pool over the {coverage.label}"
    written = outputs.table(table, "05_T12_sfdi_all_pools", caption)
    cls_wide = table.loc[table["pool"] == "cls"].pivot(index="model", columns="dataset", values="sfdi")
    cls_wide = cls_wide.reindex(index=models).reset_index()
    caption = f"T12: SFDI of the CLS probe per encoder and cohort, {coverage.label}"
    display(outputs.table(cls_wide, "05_T12_sfdi_cls", caption))
    display(written)
    display(sfdi_at_floor(table))

# %% [markdown]
# SFDI's floor is 0.5, not 0: an index near 0.5 means the encoder's probe was at chance on (nearly) every condition of
# the panel. On the demo run that is what both demo encoders give, trained and random-init (section 03 says why); the
# figure below draws the bars from 0 with chance marked, so an index at the floor is a half-height bar.

# %% [markdown]
# ## SFDI beside patch-local recovery
# Left: each encoder's SFDI per pool (cohort mean). Right: its patch-local recovery, the mean over the panel of
# AUC(patch-local) - AUC(CLS) (cohort mean).

# %%
if coverage.present:
    recovery = sfdi.recovery_table(aucs, coverage.present)
    recovery["panel"] = f"{len(coverage.present)}/{len(coverage.wanted)}"
    written = outputs.table(recovery, "05_patch_local_recovery", f"Patch-local recovery over the {coverage.label}")
    means = table.loc[table["dataset"] == sfdi.MEAN_LABEL]
    figure = plot_sfdi_recovery(
        means, recovery.loc[recovery["dataset"] == sfdi.MEAN_LABEL], f"SFDI and patch-local recovery, {coverage.label}"
    )
    caption = f"SFDI per pool beside patch-local recovery, {coverage.label}"
    display(outputs.figure(figure, "05_sfdi_recovery", caption))
    display(written)

# %% [markdown]
# ## Reported vs reproduced (study runs with the full panel only)

# %%
if not params.run.comparable_with_paper:
    print(f"{params.run.value} run: not comparable with the paper's T12; no comparison made.")
elif not coverage.complete:
    print(f"The index covers a {coverage.label}: not the paper's index, no comparison made.")
else:
    reproduced = table.loc[table["pool"] == "cls", ["model", "dataset", "sfdi"]]
    side_by_side = compare(reproduced, "T12", ("model", "dataset"), "sfdi", params.run)
    caption = "T12 (CLS SFDI): reported vs reproduced"
    display(outputs.table(side_by_side, "05_T12_reported_vs_reproduced", caption))
