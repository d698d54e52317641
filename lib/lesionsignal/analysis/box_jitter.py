"""How much the patch-local probe depends on a tight box: boxes shifted and resized by fractions of a token's cell.

The patch-local pool averages the tokens whose cells meet the box, so a box that is off by a cell or two pools
other tokens. Each positive box gets one seeded draw of four numbers u in [-1, 1] (centre shift x, y; width and
height change); at jitter j (in units of the encoder's patch, in canvas pixels p) the box's centre moves by
j p (u_x, u_y) and its sides change by j p (u_w, u_h), rounded to whole pixels, at least 1 px, and shifted back
onto the canvas where it would overhang. The negatives drawn for a positive move and resize by the same numbers,
so the box-level design stays size-matched (and, with same-position negatives, position-matched). The draws do not
depend on j or the encoder: a larger jitter moves the same boxes further in the same directions, and j = 0 leaves
every box exactly as it was, so the probe at j = 0 is the unjittered probe.

Only patch-local changes with the box; CLS and patch-mean pool the whole image and are the same at every j.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from lesionsignal.analysis.lesion_design import visible_samples
from lesionsignal.analysis.lesion_probes import Level, PoolFit, Skipped, box_level_data, fit_cell
from lesionsignal.analysis.lesions import BoxSample
from lesionsignal.analysis.probe import ProbeConfig
from lesionsignal.core.box import Box
from lesionsignal.core.kinds import Pool
from lesionsignal.features.extraction import PooledFeatures

JITTER_COLUMNS = (
    "model",
    "lesion_class",
    "jitter",
    "jitter_px",
    "pool",
    "auc",
    "ci_low",
    "ci_high",
    "n_train",
    "n_test",
    "n_test_positive",
    "rows_dropped",
    "best_c",
)
DRAWS_PER_BOX = 4  # centre x, centre y, width, height
JITTER_STREAM = 1


class JitterError(ValueError):
    """Jitter settings or boxes that cannot be used; the message names the argument or the box."""


PositiveKey = tuple[str, tuple[int, int, int, int]]  # (image id, box corners) of a positive


def jitter_draws(samples: Mapping[str, Sequence[BoxSample]], seed: int) -> dict[str, dict[PositiveKey, np.ndarray]]:
    """Per class (in the mapping's order) and positive (in sample order), its four numbers in [-1, 1].

    One ``default_rng([seed, JITTER_STREAM])`` is consumed class by class, positive by positive, so the draws depend
    only on the design and the seed, never on an encoder or a jitter level; the second number keeps them apart from
    the negatives' draws, which ``default_rng(seed)`` makes from the same seed.
    """
    rng = np.random.default_rng([seed, JITTER_STREAM])
    draws: dict[str, dict[PositiveKey, np.ndarray]] = {}
    for name, rows in samples.items():
        positives = [s for s in rows if s.label == 1]
        values = rng.uniform(-1.0, 1.0, size=(len(positives), DRAWS_PER_BOX))
        draws[name] = {(s.image_id, s.box.as_tuple()): v for s, v in zip(positives, values, strict=True)}
    return draws


def _round(value: float) -> int:
    return math.floor(value + 0.5)  # half up: no dependence on the parity Python's round() looks at


def jitter_box(box: Box, draw: np.ndarray, pixels: float, canvas: int) -> Box:
    """``box`` moved by pixels x (draw[0], draw[1]) and resized by pixels x (draw[2], draw[3]), on the canvas."""
    if pixels == 0:
        return box
    width = min(float(canvas), max(1.0, box.width + draw[2] * pixels))
    height = min(float(canvas), max(1.0, box.height + draw[3] * pixels))
    centre_x = (box.x1 + box.x2) / 2 + draw[0] * pixels
    centre_y = (box.y1 + box.y2) / 2 + draw[1] * pixels
    x1, y1 = _round(centre_x - width / 2), _round(centre_y - height / 2)
    x2, y2 = x1 + max(1, _round(width)), y1 + max(1, _round(height))
    # Shifted, never shrunk, back onto the canvas.
    dx = -x1 if x1 < 0 else min(0, canvas - x2)
    dy = -y1 if y1 < 0 else min(0, canvas - y2)
    return Box(x1 + dx, y1 + dy, x2 + dx, y2 + dy)


def jittered_samples(
    samples: Sequence[BoxSample], draws: Mapping[PositiveKey, np.ndarray], pixels: float, canvas: int
) -> list[BoxSample]:
    """Every sample with its box jittered by its positive's draw (``source_box`` points at the positive)."""
    if pixels < 0:
        raise JitterError(f"pixels: a jitter must be >= 0, got {pixels}")
    out = []
    for sample in samples:
        positive = samples[sample.source_box]
        key = (positive.image_id, positive.box.as_tuple())
        if key not in draws:
            raise JitterError(f"{positive.image_id}: no jitter draw for the positive box {key[1]}")
        out.append(replace(sample, box=jitter_box(sample.box, draws[key], pixels, canvas)))
    return out


def patch_pixels(patch: int, resize: int, canvas: int) -> float:
    """An encoder's patch (one token's cell) in canvas pixels: its side in model pixels scaled by canvas / resize."""
    return patch * canvas / resize


@dataclass(frozen=True)
class JitterPlan:
    """One source's jittered rows per (level, class): what it can pool, and how many rows its crop dropped."""

    levels: tuple[float, ...]
    pixels: float  # one patch in canvas pixels
    samples: Mapping[tuple[float, str], tuple[BoxSample, ...]]
    dropped: Mapping[tuple[float, str], int]

    def boxes_by_image(self) -> dict[str, set[Box]]:
        """Every box any level's rows pool at, per image."""
        wanted: dict[str, set[Box]] = {}
        for rows in self.samples.values():
            for sample in rows:
                wanted.setdefault(sample.image_id, set()).add(sample.box)
        return wanted


def jitter_plan(
    samples: Mapping[str, Sequence[BoxSample]],
    draws: Mapping[str, Mapping[PositiveKey, np.ndarray]],
    levels: Sequence[float],
    pixels: float,
    canvas: int,
    visible: Callable[[Box], bool],
) -> JitterPlan:
    """The rows at every jitter level of one source's box-level samples (``samples``: what it can pool unjittered)."""
    chosen: dict[tuple[float, str], tuple[BoxSample, ...]] = {}
    dropped: dict[tuple[float, str], int] = {}
    for level in levels:
        for name, rows in samples.items():
            moved = jittered_samples(rows, draws[name], level * pixels, canvas)
            kept, lost = visible_samples(moved, visible)
            chosen[(level, name)], dropped[(level, name)] = tuple(kept), len(lost)
    return JitterPlan(tuple(levels), pixels, chosen, dropped)


def jitter_fits(
    plan: JitterPlan, features: PooledFeatures, *, model: str, config: ProbeConfig, n_boot: int
) -> tuple[dict[tuple[float, str], PoolFit], list[Skipped]]:
    """The patch-local box-level probe at every (level, class) of the plan; ``features`` must hold every box."""
    fits: dict[tuple[float, str], PoolFit] = {}
    skipped: list[Skipped] = []
    for (level, name), rows in plan.samples.items():
        if not rows:
            skipped.append(Skipped(model, name, Level.BOX, f"jitter {level:g}: no box-level rows left"))
            continue
        outcome = fit_cell(
            box_level_data(rows, features),
            (str(Pool.PATCH_LOCAL),),
            model=model,
            lesion_class=name,
            level=Level.BOX,
            config=config,
            n_boot=n_boot,
        )
        if isinstance(outcome, Skipped):
            skipped.append(replace(outcome, reason=f"jitter {level:g}: {outcome.reason}"))
        else:
            fits[(level, name)] = outcome[0]
    return fits, skipped


def jitter_frame(plan: JitterPlan, fits: Mapping[tuple[float, str], PoolFit]) -> pd.DataFrame:
    """One row per fitted (level, class): AUC with its CI against the jitter, in patch widths and canvas pixels."""
    rows = [
        (
            fit.model,
            name,
            level,
            level * plan.pixels,
            fit.pool,
            fit.auc,
            fit.ci_low,
            fit.ci_high,
            fit.n_train,
            fit.n_test,
            int(fit.test_labels.sum()),
            plan.dropped[(level, name)],
            fit.best_c,
        )
        for (level, name), fit in fits.items()
    ]
    return pd.DataFrame(rows, columns=list(JITTER_COLUMNS))
