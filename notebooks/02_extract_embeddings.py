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
# On the demo parameters the encoders are small demo encoders: one trained by this project (masked-image
# modelling) on rendered films (`make demo-encoder`, models/demo-dino-vit) and its random-init twin of the same
# shape. Their vectors show the pipeline on demo data; they say nothing about the published models.

# %%
from IPython.display import display

from lesionsignal.core.files import load_arrays
from lesionsignal.features.registry import resolve_spec
from lesionsignal.paper.encoder_checks import token_map_figure
from lesionsignal.pipeline import embeddings
from lesionsignal.pipeline.executors import describe_execution
from lesionsignal.pipeline.stage import StageName, open_run, output
from lesionsignal.pipeline.stages import ensure

run = open_run(params_file)
params = run.params
outputs = run.catalog.outputs("02_extract_embeddings")
print(params.label.text)
print(
    f"{describe_execution(params)}; {len(embeddings.conditions(params))} conditions; "
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

# %% [markdown]
# ## A trained encoder beside its random-init twin: the patch tokens as colours
# For each trained encoder of the run that has a random-init twin (the demo: the demo ViT trained by this project and
# the same architecture untrained), the patch tokens of a few films are reduced to their first three principal
# components, fitted over all these films together, and shown as red, green and blue on the 16 x 16 token grid.
# Colours that follow anatomy (lung fields against mediastinum, diaphragm, the body outline) mean the tokens encode
# what is where; colours that only repeat the film's brightness mean the tokens are little more than a projection of
# the pixels. Whether the trained encoder also carries the study's small stimuli is the question of sections 03 to 06,
# not of this picture.

# %%
pairs = embeddings.twin_pairs(params)
maps_file = run.catalog.stage(StageName.EMBEDDINGS) / embeddings.TOKEN_MAPS
if complete and pairs and maps_file.is_file():
    token_maps = load_arrays(maps_file)
    labels = {e.id: resolve_spec(e.id).label for e in params.encoders}
    figure = token_map_figure(token_maps, pairs, labels)
    caption = "Token PCA of the trained demo encoder and its random-init twin on four demo films"
    display(outputs.figure(figure, "02_token_pca", caption))
else:
    print("No trained encoder with a random-init twin in this run: no token maps.")

# %% [markdown]
# On the demo run with the committed weights, the random-init twin's first three components explain 92 % of its
# token variance and follow brightness: bright bone and soft tissue in one colour, dark air and the canvas border in
# another. The trained encoder's explain 58 %: its tokens vary along more directions. Part of that is where a patch
# lies (the film's left and right edges and its top and bottom rows each take a colour of their own, which its
# position embeddings give), and part is the anatomy: the lung fields, the mediastinum and spine, and the diaphragm
# and abdomen take different colours, region by region rather than by brightness alone. That is what masked-image
# modelling teaches: a token has to say what and where its patch is well enough for the decoder to fill in its
# neighbours.
