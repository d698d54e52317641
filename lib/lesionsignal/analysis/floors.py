"""Values at a floor: where a measure bottoms out, and how many cells of a run sit there.

A reader who sees a column of identical numbers takes it for a bug unless told what the number is. Three measures
of this study have a floor that a run with nothing to find reaches:
- AUC 0.5: chance. A probe that cannot tell clean from perturbed scores about 0.5, with a CI around it.
- SFDI 0.5: each AUC is clipped below at 0.5 before the geometric mean, so an encoder at chance on every
  condition of the panel has an index of (about) 0.5, never less.
- Cosine silhouette -1/m: when every perturbed embedding sits on its clean twin (the perturbation does not move
  the embedding), each point's other group is a copy of its own group plus its twin at distance 0. With m points
  per group its mean distance to its own group is D / (m - 1) and to the other D / m, so its silhouette is
  (D / m - D / (m - 1)) / (D / (m - 1)) = -1 / m, for every point, whatever the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesionsignal.analysis.sfdi import CHANCE

# SFDI values this close to 0.5 are "at the floor": a few conditions a hair above chance lift it by less.
SFDI_MARGIN = 0.01
# A silhouette within this fraction of -1/m is the twins' floor (the twins moved by next to nothing).
SILHOUETTE_RELATIVE = 0.02


@dataclass(frozen=True)
class FloorNote:
    """How many values of a measure sit at its floor, what the floor is, and why a value lands there."""

    measure: str
    floor: str
    at_floor: int
    total: int
    meaning: str

    def text(self) -> str:
        share = f"{self.at_floor} of {self.total}"
        return f"{share} {self.measure} values are at the floor ({self.floor}). {self.meaning}"

    def _repr_markdown_(self) -> str:
        return f"> **Floor.** {self.text()}"

    def __repr__(self) -> str:
        return self.text()


def auc_at_chance(frame: pd.DataFrame) -> FloorNote:
    """Probe cells whose 95 % CI contains 0.5."""
    covered = (frame["ci_low"] <= CHANCE) & (frame["ci_high"] >= CHANCE)
    return FloorNote(
        "AUC",
        "0.5, chance: the 95 % CI contains 0.5",
        int(covered.sum()),
        len(frame),
        "A linear probe that finds no difference between clean and perturbed scores near 0.5; a cell at chance "
        "means the pooled vectors do not carry that stimulus linearly, not that the probe failed.",
    )


def sfdi_at_floor(frame: pd.DataFrame) -> FloorNote:
    """SFDI values within SFDI_MARGIN of 0.5."""
    near = frame["sfdi"] <= CHANCE + SFDI_MARGIN
    return FloorNote(
        "SFDI",
        f"0.5, within {SFDI_MARGIN:g}",
        int(near.sum()),
        len(frame),
        "Each AUC is clipped below at 0.5 before the geometric mean, so an encoder at chance on every condition "
        "of the panel gets 0.5 and never less.",
    )


def silhouette_floor(n: np.ndarray | pd.Series, max_points: int) -> np.ndarray:
    """-1/m for the silhouette's two equal groups of m points (at most ``max_points`` rows are used in all)."""
    used = np.minimum(np.asarray(n, dtype=np.float64), max_points)
    return -2.0 / used


def silhouette_at_floor(frame: pd.DataFrame, max_points: int) -> FloorNote:
    """Separation cells whose silhouette is within SILHOUETTE_RELATIVE of -1/m (m points per group)."""
    floor = silhouette_floor(frame["n"], max_points)
    near = np.abs(frame["silhouette"].to_numpy(dtype=np.float64) - floor) <= SILHOUETTE_RELATIVE * np.abs(floor)
    sizes = sorted({int(m) for m in np.minimum(frame["n"], max_points) // 2})
    shown = ", ".join(f"-1/{m} = {-1 / m:.6f}" for m in sizes)
    return FloorNote(
        "silhouette",
        f"-1/m for m points per group: {shown}",
        int(near.sum()),
        len(frame),
        "When every perturbed vector sits on its clean twin, each point's own group and the other group differ only "
        "by the twin at distance 0, and the cosine silhouette of every point is exactly -1/m: the value of a "
        "perturbation that does not move the embedding at all.",
    )
