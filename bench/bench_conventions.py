"""Measure what each switch of the authors' convention changes, on the 17 registry films (margin 0.20).

For each switch alone (the spec convention with that one switch set the authors' way), and for the whole authors'
convention, every condition is drawn on every film both ways; per family it reports how many (film, condition)
boxes coincide, the mean number of pixels that differ per perturbed canvas, and the mean signed gray-level change
(authors - spec) over those pixels. The numbers in docs/PROTOCOL.md section 2.4 come from this script:

    PYTHONPATH=lib python bench/bench_conventions.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lesionsignal.core.canvas import Resample, load_canvas
from lesionsignal.data.registry import real_films
from lesionsignal.stimuli.convention import SPEC, Convention, PanelSwitches
from lesionsignal.stimuli.gallery import convention_pairs, convention_table
from lesionsignal.stimuli.panel import panel

MARGIN = 0.20
BASE_SEED = 42


def settings() -> dict[str, PanelSwitches]:
    authors = PanelSwitches.for_convention(Convention.AUTHORS)
    alone = {name: SPEC.with_overrides({name: getattr(authors, name).value}) for name in SPEC.differences(authors)}
    return {**alone, "all (authors)": authors}


def measure(cache: Path) -> pd.DataFrame:
    films = real_films(cache)
    canvases = {resample: {f.path.name: load_canvas(f.path, resample=resample) for f in films} for resample in Resample}
    frames = []
    for label, switches in settings().items():
        for film in films:
            pair = (canvases[SPEC.resample][film.path.name], canvases[switches.resample][film.path.name])
            pairs = convention_pairs(
                pair, film.path.name, panel(), (SPEC, switches), margin=MARGIN, base_seed=BASE_SEED
            )
            frames.append(convention_table(pairs).assign(switch=label))
    return pd.concat(frames, ignore_index=True)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    def mean_change(group: pd.DataFrame) -> float:
        weights = group["pixels_differing"]
        return float(np.average(group["mean_change"], weights=weights)) if weights.sum() else 0.0

    grouped = table.groupby(["switch", "family"], sort=False)
    return pd.DataFrame(
        {
            "same box": grouped["same_box"].sum().astype(int).astype(str) + " / " + grouped.size().astype(str),
            "canvases differing": grouped.apply(lambda g: int((g["pixels_differing"] > 0).sum()), include_groups=False),
            "px differing per canvas": grouped["pixels_differing"].mean().round(1),
            "mean change (gray levels)": grouped.apply(mean_change, include_groups=False).round(2),
        }
    ).reset_index()


def canvas_effect(cache: Path) -> pd.DataFrame:
    rows = []
    for film in real_films(cache):
        spec, eight = (load_canvas(film.path, resample=r) for r in (Resample.FLOAT, Resample.UINT8))
        gap = eight.astype(int) - spec
        rows.append({"film": film.film_id, "max |d|": int(np.abs(gap).max()), "% px": 100 * np.mean(gap != 0)})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    cache = Path(".cache/data")
    pd.set_option("display.width", 200)
    print(summary(measure(cache)).to_string(index=False))
    print(canvas_effect(cache).to_string(index=False))
