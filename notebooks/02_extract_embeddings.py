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
# # 02 · Embeddings: one frozen forward pass per image and condition
#
# For every cohort of the controlled-stimulus experiment and every encoder in the parameters, each clean image is
# encoded once and pooled three ways (SPEC section 3): the global token (CLS, or the model's own pooling head),
# the mean of all patch tokens, and the mean of the patch tokens whose cells intersect each condition's patch box
# (patch-local), so every clean twin is pooled at exactly its perturbed twin's box. Each perturbed image is encoded
# once and pooled the same way. The raw-pixel baselines of SPEC section 5 (64 x 64 image, 32 x 32 window at the
# patch) go through the same pipeline.
#
# Everything is cached by content (encoder and weights revision, processor, images, perturbation, code): a second
# run only reads the cache, a changed condition recomputes only its own units, and an interrupted run resumes.
# On the demo parameters the encoders are randomly initialised demo encoders: the vectors exercise the pipeline and
# say nothing about the published models.

# %%
from lesionsignal.features import RawPixels
from lesionsignal.outputs import Outputs
from lesionsignal.params import Analysis, load_params
from lesionsignal.study import (
    conditions,
    device_for,
    encoder_source,
    extract_cohort,
    extraction_summary,
    read_cohort,
)

params = load_params(params_file)
params.check_files()
outputs = Outputs(params, notebook="02_extract_embeddings")
device = device_for(params)
chosen = conditions(params)
print(params.label)
print(f"device {device}; {len(chosen)} conditions; encoders: {[e.id for e in params.encoders]}")

# %% [markdown]
# ## Cohorts
# Each cohort is read by its adapter and validated (files, ids, patient-disjoint splits, boxes) before any compute.

# %%
cohorts = {c.name: (c, read_cohort(params, c)) for c in params.cohorts_for(Analysis.PANEL)}
for name, (_, manifest) in cohorts.items():
    print(name, len(manifest.records), "images")

# %% [markdown]
# ## Extraction
# All sources of the run go over each cohort together, so each image is decoded and perturbed once for all of
# them; the raw-pixel baselines travel with the encoders.

# %%
sources = [RawPixels(), *[encoder_source(entry, device) for entry in params.encoders]]
labels = {"raw-pixels": "raw pixels (64 x 64 global, 32 x 32 oracle window)"}
labels.update({s.source_id: s.spec.label for s in sources[1:]})
reports = []
for cohort, manifest in cohorts.values():
    reports += extract_cohort(params, sources, cohort, manifest, chosen)

# %% [markdown]
# ## Summary
# Rows per condition, vector dimension, time, rate and cache use of each (source, cohort).

# %%
summary = extraction_summary(reports, labels)
stable = summary[["source", "label", "cohort", "conditions", "rows_per_condition", "dimension", "units"]]
outputs.table(stable, "02_extraction_summary", "Embedding extraction: vectors stored per source and cohort")
outputs.run_log(summary, "02_extraction_timing")
summary
