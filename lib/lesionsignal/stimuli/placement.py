"""Where a condition's patch goes: seeded by the image's file name, inside the central region of the canvas.

``rng = default_rng(int(sha256(f"{base_seed}_{basename}")[:8], 16))`` draws the top-left y, then x; the same
generator then feeds the condition's own random values. So for one image and one patch side every condition
lands at the same place, and the clean twin's location is known without perturbing anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from lesionsignal.core.box import Box
from lesionsignal.stimuli.convention import SPEC, PanelSwitches, PlacementBound
from lesionsignal.stimuli.panel import PanelError


def placement_seed(file_basename: str, base_seed: int = 42) -> int:
    """int(sha256(f"{base_seed}_{file_basename}").hexdigest()[:8], 16): the seed of one image's generator."""
    _check_basename(file_basename)
    digest = hashlib.sha256(f"{base_seed}_{file_basename}".encode()).hexdigest()
    return int(digest[:8], 16)


def _check_basename(file_basename: str) -> None:
    # A path instead of a basename would silently move every patch, since the seed hashes the string.
    if not file_basename or "/" in file_basename or "\\" in file_basename:
        raise PanelError(f"file_basename must be a non-empty base name without folders, got {file_basename!r}")


def central_region(canvas_size: int, margin: float) -> tuple[int, int]:
    """Half-open [lo, hi) of the central region on each axis: lo = int(margin * S), hi = S - lo."""
    if not 0.0 <= margin < 0.5:
        raise PanelError(f"margin must be in [0, 0.5), got {margin}")
    lo = int(margin * canvas_size)
    return lo, canvas_size - lo


def corner_range(canvas_size: int, margin: float, patch: int, bound: PlacementBound) -> tuple[int, int]:
    """Half-open [low, high) of the top-left corner's draw on each axis."""
    lo, hi = central_region(canvas_size, margin)
    if bound is PlacementBound.AUTHORS:
        # The authors' upper end: int(S (1 - m)), exclusive, then less P; 1 to 2 px short of S - lo - P + 1.
        return lo, int(canvas_size * (1 - margin)) - patch
    return lo, hi - patch + 1


def place(
    file_basename: str,
    patch: int,
    canvas_size: int,
    margin: float,
    base_seed: int,
    bound: PlacementBound = PlacementBound.SYMMETRIC,
) -> tuple[Box, np.random.Generator]:
    """The patch box and the generator, left positioned for the condition's own draws."""
    if patch < 1:
        raise PanelError(f"patch side must be >= 1 px, got {patch}")
    lo, hi = central_region(canvas_size, margin)
    low, high = corner_range(canvas_size, margin, patch, bound)
    if high <= low:
        raise PanelError(
            f"a {patch} px patch does not fit the central region [{lo}, {hi}) of a {canvas_size} px canvas "
            f"(margin {margin})"
        )
    rng = np.random.default_rng(placement_seed(file_basename, base_seed))
    # y first, then x (the protocol); the upper bound keeps the whole patch inside [lo, hi).
    y = int(rng.integers(low, high))
    x = int(rng.integers(low, high))
    return Box(x, y, x + patch, y + patch), rng


def patch_box(
    file_basename: str,
    patch: int,
    canvas_size: int = 1024,
    margin: float = 0.15,
    base_seed: int = 42,
    bound: PlacementBound = PlacementBound.SYMMETRIC,
) -> Box:
    """Where a P x P patch of this image goes: the same box for every condition with that P.

    rng = default_rng(placement_seed(...)); y = rng.integers(lo, hi - P + 1), then x likewise, with [lo, hi)
    the central region, so the whole patch lies inside it (``bound``: the authors' range, see ``corner_range``).
    """
    return place(file_basename, patch, canvas_size, margin, base_seed, bound)[0]


@dataclass(frozen=True)
class Placement:
    """The placement settings of a run: canvas side, margin of the central region, base seed, and the panel's
    switches (they travel here so every cache key holding a placement holds the convention too)."""

    canvas_size: int = 1024
    margin: float = 0.15
    base_seed: int = 42
    switches: PanelSwitches = field(default_factory=lambda: SPEC)

    def box(self, image_id: str, patch: int) -> Box:
        return patch_box(image_id, patch, self.canvas_size, self.margin, self.base_seed, self.switches.placement)
