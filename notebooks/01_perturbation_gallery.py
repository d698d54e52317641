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
# encoder still carries it. This section shows every condition of the panel (SPEC section 2) on real chest films
# shipped in registry packages: an adult PA computed radiograph (pydicom-data) and paediatric films (Kermany et al.).
# For each condition: the whole film with the crop window, the clean crop, the perturbed crop with the patch box,
# and the difference map. The table lists every condition with its patch size, its area ratio against the
# 1024 x 1024 canvas, and its parameters.
#
# Placement is deterministic: the patch origin is drawn from
# `default_rng(int(sha256(f"{base_seed}_{image_id}")[:8], 16))`
# inside the central region, so one film and one patch size put every perturbation type at the same place.

# %%
from pathlib import Path

from lesionsignal.canvas import load_canvas
from lesionsignal.gallery import differences_table, make_panel, plot_gallery
from lesionsignal.outputs import Outputs
from lesionsignal.params import load_params, resolve
from lesionsignal.perturb import Family, conditions_table, panel
from lesionsignal.registry_data import real_films

params = load_params(params_file)
outputs = Outputs(params, notebook="01_perturbation_gallery")
print(params.label)

# %% [markdown]
# ## The films
# The real radiographs come from `make data` (checksummed registry packages; provenance in the data cache).

# %%
films = {film.film_id: film for film in real_films(resolve(params, params.paths.data_cache))}
missing = [f for f in params.gallery.films if f not in films]
if missing:
    raise KeyError(f"{params.source}: gallery.films names unknown films {missing}; known: {sorted(films)}")
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
outputs.table(table, "01_conditions", "Perturbation panel: conditions, patch size, area ratio and parameters")
table

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
        outputs.figure(fig, f"01_gallery_{family.value}_{film_id}", f"Gallery: {family.value} conditions on {film_id}")

# %% [markdown]
# ## How much each condition changes the film
# Pixels changed, and the mean and largest absolute difference inside the patch, per film and condition:
# the input-side size of each stimulus.

# %%
differences = differences_table(panels)
outputs.table(differences, "01_gallery_differences", "Gray-level change made by each condition on each film")
differences

# %%
print("written:", *[Path(e["path"]).name for e in outputs.written], sep="\n  ")
