"""Where a condition's patch goes: seeded by the image's file name, inside the central region of the canvas.

``rng = default_rng(int(sha256(f"{base_seed}_{basename}")[:8], 16))`` draws the top-left y, then x; the same
generator then feeds the condition's own random values. So for one image and one patch side every condition
lands at the same place, and the clean twin's location is known without perturbing anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from lesionsignal.core.box import Box
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


def place(
    file_basename: str, patch: int, canvas_size: int, margin: float, base_seed: int
) -> tuple[Box, np.random.Generator]:
    """The patch box and the generator, left positioned for the condition's own draws."""
    if patch < 1:
        raise PanelError(f"patch side must be >= 1 px, got {patch}")
    lo, hi = central_region(canvas_size, margin)
    if hi - lo < patch:
        raise PanelError(
            f"a {patch} px patch does not fit the central region [{lo}, {hi}) of a {canvas_size} px canvas "
            f"(margin {margin})"
        )
    rng = np.random.default_rng(placement_seed(file_basename, base_seed))
    # y first, then x (the protocol); the upper bound keeps the whole patch inside [lo, hi).
    y = int(rng.integers(lo, hi - patch + 1))
    x = int(rng.integers(lo, hi - patch + 1))
    return Box(x, y, x + patch, y + patch), rng


def patch_box(
    file_basename: str, patch: int, canvas_size: int = 1024, margin: float = 0.15, base_seed: int = 42
) -> Box:
    """Where a P x P patch of this image goes: the same box for every condition with that P.

    rng = default_rng(placement_seed(...)); y = rng.integers(lo, hi - P + 1), then x likewise, with [lo, hi)
    the central region, so the whole patch lies inside it.
    """
    return place(file_basename, patch, canvas_size, margin, base_seed)[0]


@dataclass(frozen=True)
class Placement:
    """The placement settings of a run: canvas side, margin of the central region, base seed."""

    canvas_size: int = 1024
    margin: float = 0.15
    base_seed: int = 42

    def box(self, image_id: str, patch: int) -> Box:
        return patch_box(image_id, patch, self.canvas_size, self.margin, self.base_seed)
