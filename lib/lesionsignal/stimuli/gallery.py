"""The perturbation gallery: every condition of the panel shown on real radiographs.

For one film and one condition a panel holds the whole perturbed film with the patch box drawn, the zoomed crop
around the box, the same crop of the clean film, and their difference. Perturbations this small are invisible at
film scale; the crop and the difference map are what make them visible, which is the point of the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesionsignal.core.box import Box
from lesionsignal.stimuli.convention import SPEC, PanelSwitches
from lesionsignal.stimuli.inject import Perturbed, apply
from lesionsignal.stimuli.panel import Condition


@dataclass(frozen=True)
class GalleryPanel:
    film_id: str
    condition: Condition
    perturbed: np.ndarray  # whole canvas
    box: Box
    window: Box  # the crop window on the canvas
    clean_crop: np.ndarray
    perturbed_crop: np.ndarray

    @property
    def difference(self) -> np.ndarray:
        return self.perturbed_crop.astype(np.int16) - self.clean_crop.astype(np.int16)


def crop_window(box: Box, side: int, canvas_size: int) -> Box:
    """A ``side`` x ``side`` window centred on the box, grown to hold the box and shifted to stay on the canvas."""
    side = min(max(side, box.width + 8, box.height + 8), canvas_size)
    cx, cy = (box.x1 + box.x2) // 2, (box.y1 + box.y2) // 2
    x1 = int(np.clip(cx - side // 2, 0, canvas_size - side))
    y1 = int(np.clip(cy - side // 2, 0, canvas_size - side))
    return Box(x1, y1, x1 + side, y1 + side)


def make_panel(
    canvas: np.ndarray,
    film_id: str,
    condition: Condition,
    *,
    crop: int,
    margin: float,
    base_seed: int,
    switches: PanelSwitches = SPEC,
) -> GalleryPanel:
    result = apply(canvas, condition, film_id, margin=margin, base_seed=base_seed, switches=switches)
    window = crop_window(result.box, crop, canvas.shape[0])
    rows, cols = slice(window.y1, window.y2), slice(window.x1, window.x2)
    return GalleryPanel(
        film_id=film_id,
        condition=condition,
        perturbed=result.image,
        box=result.box,
        window=window,
        clean_crop=canvas[rows, cols].copy(),
        perturbed_crop=result.image[rows, cols].copy(),
    )


def plot_gallery(panels: Sequence[GalleryPanel], title: str) -> object:
    """One row per panel: whole film with the box, clean crop, perturbed crop, difference (perturbed - clean)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not panels:
        raise ValueError("plot_gallery needs at least one panel")
    fig, axes = plt.subplots(len(panels), 4, figsize=(9.6, 2.5 * len(panels) + 0.6), squeeze=False)
    for row, panel in zip(axes, panels, strict=True):
        box, window = panel.box, panel.window
        row[0].imshow(panel.perturbed, cmap="gray", vmin=0, vmax=255)
        row[0].add_patch(_rect(Rectangle, window, "deepskyblue", 0.8))
        row[0].set_title(f"{panel.condition.name}  ({panel.film_id})", fontsize=8)
        extent = (window.x1, window.x2, window.y2, window.y1)
        row[1].imshow(panel.clean_crop, cmap="gray", vmin=0, vmax=255, extent=extent, interpolation="nearest")
        row[1].set_title("clean crop", fontsize=8)
        row[2].imshow(panel.perturbed_crop, cmap="gray", vmin=0, vmax=255, extent=extent, interpolation="nearest")
        row[2].add_patch(_rect(Rectangle, box, "orange", 0.6))
        row[2].set_title(f"perturbed, P = {panel.condition.patch} px", fontsize=8)
        diff = panel.difference
        _difference(fig, row[3], diff, extent, f"difference (max |d| = {int(np.abs(diff).max())})")
        _bare(row)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.02, 1, 0.98))
    return fig


def _difference(fig: object, ax: object, diff: np.ndarray, extent: tuple[int, int, int, int], title: str) -> None:
    """A signed difference map on a symmetric scale (at least +-1, so an all-zero map still has a colour bar)."""
    limit = max(1, int(np.abs(diff).max()))
    image = ax.imshow(diff, cmap="RdBu_r", vmin=-limit, vmax=limit, extent=extent, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def _bare(axes: Sequence[object]) -> None:
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def _rect(rectangle: type, box: Box, colour: str, width: float) -> object:
    return rectangle((box.x1 - 0.5, box.y1 - 0.5), box.width, box.height, fill=False, edgecolor=colour, linewidth=width)


def differences_table(panels: Sequence[GalleryPanel]) -> pd.DataFrame:
    """Per film and condition: pixels changed, and mean / max absolute gray-level change inside the patch box."""
    rows = []
    for panel in panels:
        diff = np.abs(panel.difference)
        box, window = panel.box, panel.window
        inside = diff[box.y1 - window.y1 : box.y2 - window.y1, box.x1 - window.x1 : box.x2 - window.x1]
        rows.append(
            {
                "film": panel.film_id,
                "condition": panel.condition.name,
                "patch_px": panel.condition.patch,
                "pixels_changed": int((inside > 0).sum()),
                "mean_abs_change_in_box": float(inside.mean()),
                "max_abs_change": int(diff.max()),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ConventionPair:
    """One condition on one film drawn under two sets of switches (each on its own canvas, since the canvas step
    is itself a switch): ``a`` and ``b`` are the whole perturbed canvases."""

    film_id: str
    condition: Condition
    a: Perturbed
    b: Perturbed

    @property
    def difference(self) -> np.ndarray:
        """b - a over the whole canvas, int16."""
        return self.b.image.astype(np.int16) - self.a.image.astype(np.int16)


def convention_pairs(
    canvases: tuple[np.ndarray, np.ndarray],
    film_id: str,
    conditions: Sequence[Condition],
    switches: tuple[PanelSwitches, PanelSwitches],
    *,
    margin: float,
    base_seed: int,
) -> list[ConventionPair]:
    """Every condition drawn on ``canvases[0]`` with ``switches[0]`` and on ``canvases[1]`` with ``switches[1]``."""
    pairs = []
    for condition in conditions:
        a, b = (
            apply(canvas, condition, film_id, margin=margin, base_seed=base_seed, switches=chosen)
            for canvas, chosen in zip(canvases, switches, strict=True)
        )
        pairs.append(ConventionPair(film_id, condition, a, b))
    return pairs


def convention_table(pairs: Sequence[ConventionPair]) -> pd.DataFrame:
    """Per film and condition: whether the boxes coincide, pixels that differ (whole canvas, and inside the union
    of the two boxes), and the mean signed change b - a over the differing pixels."""
    rows = []
    for pair in pairs:
        diff = pair.difference
        union = np.zeros(diff.shape, dtype=bool)
        union[pair.a.box.slices()] = union[pair.b.box.slices()] = True
        moved = diff != 0
        rows.append(
            {
                "film": pair.film_id,
                "condition": pair.condition.name,
                "family": pair.condition.family.value,
                "same_box": pair.a.box == pair.b.box,
                "pixels_differing": int(moved.sum()),
                "pixels_differing_in_boxes": int((moved & union).sum()),
                "mean_change": float(diff[moved].mean()) if moved.any() else 0.0,
            }
        )
    return pd.DataFrame(rows)


def plot_convention_pairs(pairs: Sequence[ConventionPair], labels: tuple[str, str], crop: int, title: str) -> object:
    """One row per condition: crop of ``a``, crop of ``b`` (both boxes drawn), and b - a, around the two boxes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not pairs:
        raise ValueError("plot_convention_pairs needs at least one pair")
    fig, axes = plt.subplots(len(pairs), 3, figsize=(7.6, 2.4 * len(pairs) + 0.6), squeeze=False)
    for row, pair in zip(axes, pairs, strict=True):
        both = Box(
            min(pair.a.box.x1, pair.b.box.x1),
            min(pair.a.box.y1, pair.b.box.y1),
            max(pair.a.box.x2, pair.b.box.x2),
            max(pair.a.box.y2, pair.b.box.y2),
        )
        window = crop_window(both, crop, pair.a.image.shape[0])
        rows, cols = slice(window.y1, window.y2), slice(window.x1, window.x2)
        extent = (window.x1, window.x2, window.y2, window.y1)
        for ax, result, label, colour in ((row[0], pair.a, labels[0], "orange"), (row[1], pair.b, labels[1], "lime")):
            ax.imshow(result.image[rows, cols], cmap="gray", vmin=0, vmax=255, extent=extent, interpolation="nearest")
            ax.add_patch(_rect(Rectangle, result.box, colour, 0.8))
            ax.set_title(f"{pair.condition.name}: {label}", fontsize=8)
        diff = pair.difference[rows, cols]
        _difference(fig, row[2], diff, extent, f"{labels[1]} - {labels[0]} ({int(np.count_nonzero(diff))} px differ)")
        _bare(row)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.02, 1, 0.98))
    return fig
