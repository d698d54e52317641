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
# # 07 · Beyond the paper: where in the forward pass the signal is lost, and whether the model finds the region
#
# The paper places the loss "at the CLS-aggregation step" but probes only the final layer, and its patch-local
# recovery needs the true box, which a deployed system does not have. This section runs the experiments the paper
# leaves to follow-up work, on a subset of images read at every block of the same forward pass
# (docs/ARCHITECTURE.md: the `depth` stage; parameters `depth.*`):
#
# 1. **Layer-wise probing**: is the stimulus in the global token at an earlier block and gone by the last, while the
#    local tokens still hold it? AUC against depth per pool.
# 2. **Learned aggregation without an ROI**: does a learned pool recover what CLS drops? An attentive probe (one
#    learned query over the frozen patch tokens) and a k-nearest-neighbour probe of CLS, beside CLS, patch-mean and
#    patch-local, on the same test rows.
# 3. **Regions from the model instead of the oracle box**: the last block's attention, attention rollout, and a
#    multiple-instance token scorer trained on image labels only each pick the top tokens of an image; the probe
#    reads their mean. Compared with CLS and with the oracle box on the same rows, with how often the chosen tokens
#    hit the true box, on the controlled panel and on the box cohort by lesion size.
# 4. **Native resolution**: stimuli drawn into each encoder's own input size (no resize from the 1024 canvas), so
#    their footprint is stated in model pixels and in patches: is a stimulus smaller than one patch at the floor in
#    every pool?
#
# Every probe is the linear probe of docs/PROTOCOL.md section 4 (grouped CV, class-balanced); the attentive probe's
# penalty and k-NN's k are chosen by the same grouped folds. On the demo run the numbers show that every step runs
# and what each table and figure looks like; they are not the paper's and say nothing about a foundation model.

# %%
import pandas as pd
from IPython.display import display

from lesionsignal.analysis.layerwise import peak_layers
from lesionsignal.analysis.native_resolution import sub_patch_floor
from lesionsignal.analysis.readouts import Readout
from lesionsignal.analysis.rois import RoiKind
from lesionsignal.config.params import Analysis, load_params, project_root
from lesionsignal.features.depth_units import study_storage
from lesionsignal.paper.depth_figures import plot_bars, plot_layerwise, plot_native
from lesionsignal.pipeline import depth
from lesionsignal.pipeline.stage import StageName, open_run, output
from lesionsignal.pipeline.stages import require

run = open_run(params_file)
params = run.params
settings = params.depth
outputs = run.catalog.outputs("07_depth_and_model_rois")
print(params.label.text)
print(f"panel conditions read at every block: {list(settings.conditions) or 'none'}")
print(f"{settings.panel_images} images of each detection set; lesion images: {settings.lesion_images or 'all'}")
print(f"lesion cohorts: {[c.name for c in params.cohorts_for(Analysis.LESIONS)] or 'none'}")
print(f"native-resolution conditions: {list(settings.native_conditions) or 'none'}")
require(run, StageName.DEPTH)
layers = output(run, StageName.DEPTH, depth.LAYERWISE)
readouts = output(run, StageName.DEPTH, depth.READOUTS)
rois = output(run, StageName.DEPTH, depth.ROIS)
native = output(run, StageName.DEPTH, depth.NATIVE)
storage = output(run, StageName.DEPTH, depth.STORAGE)
skipped = output(run, StageName.DEPTH, depth.SKIPPED)

# %% [markdown]
# ## 1 · AUC against depth, per pool
# One probe per (encoder, cohort, condition, pool, block) on the clean and perturbed views of the subset. Each block's
# tokens get the model's final normalisation, so the last block is exactly the final layer the paper pools. Read a
# panel left to right: a CLS curve that rises and then falls while patch-local stays up says the global token had
# the stimulus and dropped it; a patch-local curve at chance everywhere says no block's tokens carry it. The
# second table gives each curve's best block and how much of its best AUC the last block gives up.

# %%
if layers.empty:
    print("No panel conditions in depth.conditions: no layer-wise probes in this run.")
else:
    caption = "Layer-wise probes: AUC (95 % CI) of each pool after every block, depth subset"
    written = outputs.table(layers, "07_layerwise", caption)
    peaks = outputs.table(peak_layers(layers), "07_layerwise_peaks", "Best block of each curve and drop to the last")
    figure = plot_layerwise(layers, "AUC against depth per pool (dashed: chance)")
    display(outputs.figure(figure, "07_layerwise_auc", "AUC against depth per pool and encoder"))
    display(peaks)
    display(written)

# %% [markdown]
# ## 2 · Learned aggregation without an ROI: attentive and k-NN probes beside the three pools
# All rows of one (encoder, cohort, condition or class) share their test rows; `delta_vs_cls` is the readout's AUC
# minus CLS's with a paired bootstrap p. A learned pool that recovers what CLS drops shows as an attentive AUC near
# patch-local's and above CLS's; k-NN above the linear CLS probe would mean the signal is in CLS, but not linearly.
# `choice` is the hyperparameter the grouped CV picked. Panel rows are paired clean / perturbed designs; box-cohort
# rows are images (target: has a box of the class), their patch-local the class boxes (a negative borrows a
# positive's boxes).

# %%
order = [str(r) for r in Readout]
if readouts.empty:
    print("No readouts in this run (no depth conditions and no lesion cohort).")
else:
    written = outputs.table(readouts, "07_readouts", "Readouts on the same test rows: AUC (95 % CI), minus CLS")
    figure = plot_bars(readouts, "readout", order, "Readouts beside CLS, patch-mean and patch-local")
    display(outputs.figure(figure, "07_readouts", "AUC of every readout, same test rows"))
    display(written)

# %% [markdown]
# ## 3 · Regions chosen by the model instead of the oracle box
# Each ROI keeps the `depth.roi_tokens` highest-ranked tokens of an image and the probe reads their mean. `attention`
# is the last block's CLS-to-patch attention (heads averaged; SigLIP's pooling-head attention), `rollout` the
# attention rolled out through every block, `mil` the multiple-instance scorer's top tokens (trained on image labels
# only, out of fold on the training rows), `mil_image_score` that scorer's own image score. `hit_rate` is the share
# of test positives whose ROI shares a token with the true box (the number above each bar); `delta_vs_oracle` is
# how far the ROI falls short of the box. ResNets have no attention: they get the MIL ROI only. On the box cohort,
# `auc_small` / `auc_large` score the test positives below / above their median lesion area against every test
# negative.

# %%
order = [str(r) for r in RoiKind]
if rois.empty:
    print("No ROI comparisons in this run.")
else:
    written = outputs.table(rois, "07_model_rois", "Model-chosen ROIs against CLS and the oracle box, same test rows")
    figure = plot_bars(rois, "roi", order, "Model ROIs beside CLS and the oracle box (above the bars: hit rate)")
    display(outputs.figure(figure, "07_model_rois", "AUC of each ROI; hit rate of the true box above its bar"))
    display(written)
if not skipped.empty:
    display(outputs.table(skipped, "07_skipped", "Cells that could not be fitted, and why"))

# %% [markdown]
# ## 4 · Native resolution: footprints in model pixels and patches
# The film is brought to each encoder's resize side first and the stimulus drawn after, so a P px condition is P
# model pixels, P / patch token cells wide. The figure draws each pool's AUC against that side (log scale; dotted:
# one patch); a hollow marker is at the floor (its CI reaches 0.5). The summary counts, per encoder, the sub-patch
# stimuli that sit at the floor in **every** pool.

# %%
if native.empty:
    print("No native-resolution conditions in this run.")
else:
    written = outputs.table(native, "07_native_footprints", "Native-resolution probes with stimulus footprints")
    floor = outputs.table(sub_patch_floor(native), "07_native_sub_patch_floor", "Sub-patch stimuli at the floor")
    figure = plot_native(native, "Native resolution: AUC against stimulus side in patches")
    display(outputs.figure(figure, "07_native_footprints", "AUC against stimulus footprint in patches, per pool"))
    display(floor)
    display(written)

# %% [markdown]
# ## 5 · What the token grids cost on disk
# Only the depth subset keeps token grids (the last block's, float16), beside per-block pools and the attention
# maps. The first table is this run's cache; the second is the same layout for the study's encoders at their real
# shapes, per view and for the study's subset (`params/paper.yaml`: each panel cohort's `depth.panel_images` under
# every `depth.conditions` plus its clean view, and every ChestX-Det10 image).

# %%
display(outputs.table(storage, "07_depth_storage", "Disk taken by this run's depth units"))
study = load_params(project_root() / depth.STUDY_PARAMS)
views = depth.study_views(study, depth.CHESTXDET10_IMAGES)
estimate = pd.DataFrame(study_storage([e.id for e in study.encoders], views))
caption = f"Study encoders at real shape ({depth.STUDY_PARAMS}): depth-unit disk per view and for {views:,} views"
display(outputs.table(estimate, "07_study_token_storage", caption))
