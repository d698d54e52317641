"""Floors: the silhouette of unmoved twins is exactly -1/m, and the notes count the cells that sit at a floor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesionsignal.analysis.floors import auc_at_chance, sfdi_at_floor, silhouette_at_floor, silhouette_floor
from lesionsignal.analysis.separation import separation


@pytest.mark.parametrize("m", [5, 40, 300])
def test_twins_that_do_not_move_have_silhouette_minus_one_over_m(m: int) -> None:
    clean = np.random.default_rng(m).normal(size=(m, 12))
    result = separation(clean, clean.copy(), max_points=10_000)
    assert result.silhouette == pytest.approx(-1 / m, abs=1e-12)
    assert silhouette_floor(np.array([result.n]), 10_000)[0] == pytest.approx(-1 / m)


def test_silhouette_note_counts_the_floor_and_names_it() -> None:
    moved = np.random.default_rng(1).normal(size=(50, 12))
    frame = pd.DataFrame(
        {
            "silhouette": [separation(moved, moved.copy()).silhouette, separation(moved, moved + 3.0).silhouette],
            "n": [100, 100],
        }
    )
    note = silhouette_at_floor(frame, max_points=5000)
    assert (note.at_floor, note.total) == (1, 2)
    assert "-1/50 = -0.020000" in note.text()
    assert note._repr_markdown_().startswith("> **Floor.**")


def test_the_floor_follows_the_subsample_when_there_are_more_rows_than_points() -> None:
    assert silhouette_floor(np.array([600, 20_000]), 5000).tolist() == [-1 / 300, -1 / 2500]


def test_auc_and_sfdi_notes_count_cells_at_chance() -> None:
    probes = pd.DataFrame({"ci_low": [0.40, 0.70, 0.5], "ci_high": [0.60, 0.90, 0.8]})
    note = auc_at_chance(probes)
    assert (note.at_floor, note.total) == (2, 3)
    sfdi = pd.DataFrame({"sfdi": [0.5, 0.5099, 0.52, 0.9]})
    assert (sfdi_at_floor(sfdi).at_floor, sfdi_at_floor(sfdi).total) == (2, 4)
