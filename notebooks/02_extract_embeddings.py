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
# encoded once and pooled three ways (docs/PROTOCOL.md, section 3): the global token (CLS, or the model's own
# pooling head), the mean of all patch tokens, and the mean of the patch tokens whose cells intersect each
# condition's patch box (patch-local), so every clean twin is pooled at exactly its perturbed twin's box. Each
# perturbed image is encoded once and pooled the same way. The raw-pixel baselines of section 5 (64 x 64 image,
# 32 x 32 window at the patch) go through the same pipeline.
#
# Everything is cached by content (encoder and weights revision, processor, images, perturbation, code): a second
# run only reads the cache, a changed condition recomputes only its own units, and an interrupted run resumes.
# On the demo parameters the encoders are randomly initialised demo encoders: the vectors exercise the pipeline and
# say nothing about the published models.

# %%
from IPython.display import display

from lesionsignal.pipeline import embeddings
from lesionsignal.pipeline.stage import StageName, open_run, output
from lesionsignal.pipeline.stages import ensure

run = open_run(params_file)
params = run.params
outputs = run.catalog.outputs("02_extract_embeddings")
print(params.label.text)
print(
    f"device {embeddings.device_for(params)}; {len(embeddings.conditions(params))} conditions; "
    f"encoders: {[e.id for e in params.encoders]}"
)

# %% [markdown]
# ## Extraction
# The cohorts are read by their adapters and validated first (section 01's stage). All sources of the run then go
# over each cohort together, so each image is decoded and perturbed once for all of them; the raw-pixel baselines
# travel with the encoders.

# %%
complete = ensure(run, StageName.EMBEDDINGS)
if not complete:
    print("This shard's units are done; the embeddings are assembled once every shard has run.")

# %% [markdown]
# ## Summary
# Rows per condition, vector dimension, time, rate and cache use of each (source, cohort).

# %%
timing = output(run, StageName.EMBEDDINGS, embeddings.TIMING)
if complete:
    summary = output(run, StageName.EMBEDDINGS, embeddings.SUMMARY)
    caption = "Embedding extraction: vectors stored per source and cohort"
    display(outputs.table(summary, "02_extraction_summary", caption))
outputs.run_log(timing, "02_extraction_timing")
timing
