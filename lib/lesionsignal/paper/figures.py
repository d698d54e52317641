"""Every figure of the paper: detection heatmaps and directional-blur curves, lesion-pool bars and stratum gaps,
SFDI beside patch-local recovery, and UMAP panels. Pure functions from result frames to matplotlib figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lesionsignal.analysis.lesion_probes import Level
from lesionsignal.analysis.separation import CLEAN, PERTURBED, SeparationError
from lesionsignal.analysis.sfdi import CHANCE, SfdiError
from lesionsignal.core.kinds import Pool

POOL_COLOURS = {Pool.CLS: "#4c72b0", Pool.PATCH_MEAN: "#55a868", Pool.PATCH_LOCAL: "#c44e52"}
_FALLBACK_COLOURS = ("#8172b2", "#937860", "#da8bc3", "#8c8c8c")
GROUP_COLOURS = {CLEAN: "#1f77b4", PERTURBED: "#d62728"}
GROUP_NAMES = {CLEAN: "clean", PERTURBED: "perturbed"}
UMAP_COLUMNS = 3
# Points are drawn in a shuffled order so neither group is painted wholly over the other; display only.
DRAW_ORDER_SEED = 0


class FigureError(ValueError):
    """Results a figure cannot be drawn from; the message names what is missing."""


def plot_heatmap(frame: pd.DataFrame, title: str) -> object:
    """Model x perturbation AUC heatmap on a fixed 0.5 (chance) to 1.0 scale, each cell annotated."""
    import matplotlib.pyplot as plt

    n_rows, n_cols = frame.shape
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * n_cols + 2.5), max(2.0, 0.38 * n_rows + 1.6)))
    image = ax.imshow(frame.to_numpy(dtype=float), vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_cols), frame.columns, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(n_rows), frame.index, fontsize=7)
    values = frame.to_numpy(dtype=float)
    for i in range(n_rows):
        for j in range(n_cols):
            if np.isfinite(values[i, j]):
                colour = "black" if values[i, j] > 0.8 else "white"
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=5.5, color=colour)
    fig.colorbar(image, ax=ax, label="AUC (0.5 and below: floor colour)", fraction=0.03)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_directional_curves(sweep: pd.DataFrame, title: str) -> object:
    """AUC vs patch side P, one line per (direction, L), one panel per (model, dataset), 95 % CI as bars."""
    import matplotlib.pyplot as plt

    if sweep.empty:
        raise FigureError("directional curves: the sweep is empty")
    panels = sweep[["model", "dataset"]].drop_duplicates().to_numpy().tolist()
    n_cols = min(3, len(panels))
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.0 * n_cols, 3.0 * n_rows), squeeze=False, sharey=True)
    lengths = sorted(sweep["length"].unique())
    colours = dict(zip(lengths, plt.get_cmap("viridis")(np.linspace(0.1, 0.85, len(lengths))), strict=True))
    lines = sweep[["direction", "length"]].drop_duplicates().sort_values(["direction", "length"])
    # Lines share the x positions: each is nudged sideways (on the log axis) so their CI bars stay apart.
    nudge = {key: 2.0 ** (0.05 * (k - (len(lines) - 1) / 2)) for k, key in enumerate(map(tuple, lines.to_numpy()))}
    for ax, (model, dataset) in zip(axes.ravel(), panels, strict=False):
        part = sweep[(sweep["model"] == model) & (sweep["dataset"] == dataset)]
        for (direction, length), line in part.groupby(["direction", "length"], sort=True):
            line = line.sort_values("patch")
            err = np.vstack([line["auc"] - line["ci_low"], line["ci_high"] - line["auc"]])
            ax.errorbar(
                line["patch"] * nudge[(direction, length)],
                line["auc"],
                yerr=np.clip(err, 0.0, None),
                elinewidth=0.7,
                color=colours[length],
                linestyle="-" if direction == "cranio" else "--",
                marker="o" if direction == "cranio" else "s",
                markersize=3,
                capsize=2,
                label=f"{direction} L{length}",
            )
        ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sweep["patch"].unique()), [str(p) for p in sorted(sweep["patch"].unique())])
        ax.set_title(f"{model} · {dataset}", fontsize=8)
        ax.set_xlabel("patch side P (px)", fontsize=8)
        ax.set_ylabel("CLS AUC", fontsize=8)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _colour(pool: str, order: Sequence[str]) -> str:
    return POOL_COLOURS.get(pool, _FALLBACK_COLOURS[list(order).index(pool) % len(_FALLBACK_COLOURS)])


def plot_pool_aucs(frame: pd.DataFrame, level: Level, title: str) -> Figure:
    """Test AUC with its 95 % CI by pool and model, one panel per lesion class (rows of ``fits_frame``)."""
    part = frame.loc[frame["level"] == level.value]
    if part.empty:
        raise FigureError(f"no {level.value}-level results to plot")
    classes = list(dict.fromkeys(part["lesion_class"]))
    models = list(dict.fromkeys(part["model"]))
    pools = list(dict.fromkeys(part["pool"]))
    figure = Figure(figsize=(1.2 + 1.1 * len(models) * len(classes), 3.6), layout="constrained")
    axes = figure.subplots(1, len(classes), squeeze=False, sharey=True)[0]
    width = 0.8 / len(pools)
    for ax, name in zip(axes, classes, strict=True):
        for k, pool in enumerate(pools):
            rows = part.loc[(part["lesion_class"] == name) & (part["pool"] == pool)].set_index("model")
            x = np.arange(len(models)) + (k - (len(pools) - 1) / 2) * width
            auc = rows["auc"].reindex(models).to_numpy(dtype=float)
            low = auc - rows["ci_low"].reindex(models).to_numpy(dtype=float)
            high = rows["ci_high"].reindex(models).to_numpy(dtype=float) - auc
            ax.bar(x, auc - 0.5, width, bottom=0.5, color=_colour(pool, pools), label=pool)
            ax.errorbar(x, auc, yerr=[low, high], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_title(name)
        ax.set_ylim(0.3, 1.0)
    axes[0].set_ylabel("test AUC (95 % CI)")
    axes[-1].legend(fontsize="small", loc="lower right")
    figure.suptitle(title)
    return figure


def plot_stratum_gaps(frame: pd.DataFrame, title: str) -> Figure:
    """Gap AUC(large) - AUC(small) by pool and model, one row of panels per level, one column per class."""
    part = frame.dropna(subset=["gap"])
    if part.empty:
        raise FigureError("no stratum gaps to plot (no class had both a small and a large stratum)")
    levels = [lv for lv in (Level.IMAGE.value, Level.BOX.value) if (part["level"] == lv).any()]
    classes = list(dict.fromkeys(part["lesion_class"]))
    models = list(dict.fromkeys(part["model"]))
    pools = list(dict.fromkeys(part["pool"]))
    figure = Figure(figsize=(1.2 + 1.1 * len(models) * len(classes), 2.9 * len(levels)), layout="constrained")
    axes = figure.subplots(len(levels), len(classes), squeeze=False, sharey=True)
    width = 0.8 / len(pools)
    for r, level in enumerate(levels):
        for c, name in enumerate(classes):
            ax = axes[r, c]
            cell = part.loc[(part["level"] == level) & (part["lesion_class"] == name)]
            for k, pool in enumerate(pools):
                gaps = cell.loc[cell["pool"] == pool].set_index("model")["gap"].reindex(models)
                x = np.arange(len(models)) + (k - (len(pools) - 1) / 2) * width
                ax.bar(x, gaps.to_numpy(dtype=float), width, color=_colour(pool, pools), label=pool)
            ax.axhline(0.0, color="grey", linewidth=0.8)
            ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{name}, {level} level", fontsize=9)
        axes[r, 0].set_ylabel("AUC(large) - AUC(small)")
    axes[0, -1].legend(fontsize="small")
    figure.suptitle(title)
    return figure


def plot_sfdi_recovery(sfdi_rows: pd.DataFrame, recovery_rows: pd.DataFrame, title: str) -> Figure:
    """Left: each model's SFDI per pool; right: its patch-local recovery (mean AUC gain over CLS on the panel).

    Both frames hold one row per model (and pool, for SFDI): pass the dataset-mean rows, or one dataset's.
    """
    for name, rows, columns in (
        ("sfdi_rows", sfdi_rows, ("model", "pool", "sfdi")),
        ("recovery_rows", recovery_rows, ("model", "recovery")),
    ):
        absent = [c for c in columns if c not in rows.columns]
        if absent or rows.empty:
            raise SfdiError(f"{name}: need a non-empty frame with columns {list(columns)}")
    models = list(dict.fromkeys(sfdi_rows["model"]))
    found = list(dict.fromkeys(sfdi_rows["pool"]))
    pools = [p for p in POOL_COLOURS if p in found] + [p for p in found if p not in POOL_COLOURS]
    figure = Figure(figsize=(3.0 + 1.6 * len(models), 3.8), layout="constrained")
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(pools)
    for k, pool in enumerate(pools):
        values = sfdi_rows.loc[sfdi_rows["pool"] == pool].set_index("model")["sfdi"].reindex(models)
        x = np.arange(len(models)) + (k - (len(pools) - 1) / 2) * width
        left.bar(x, values.to_numpy(dtype=float) - CHANCE, width, bottom=CHANCE, label=pool,
                 color=POOL_COLOURS.get(pool, "#8c8c8c"))  # fmt: skip
    left.axhline(CHANCE, color="grey", linestyle="--", linewidth=0.8)
    left.set_ylim(0.45, 1.0)
    left.set_ylabel("SFDI (0.5 blind, 1.0 perfect)")
    left.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize=8)
    left.legend(fontsize="small")
    left.set_title("SFDI by pool")
    recovery = recovery_rows.set_index("model")["recovery"].reindex(models).to_numpy(dtype=float)
    right.bar(np.arange(len(models)), recovery, 0.6, color=POOL_COLOURS["patch_local"])
    right.axhline(0.0, color="grey", linewidth=0.8)
    right.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("mean AUC(patch-local) - AUC(CLS)")
    right.set_title("patch-local recovery")
    figure.suptitle(title)
    return figure


def plot_umap_panels(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str) -> Figure:
    """A grid of UMAP scatters, one per (panel title, coords (n x 2), labels 0 clean / 1 perturbed)."""
    if not panels:
        raise SeparationError("panels: empty; need at least one (title, coords, labels)")
    columns = min(UMAP_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.0 * columns, 4.0 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, coords, labels) in zip(axes, panels, strict=False):
        points = np.asarray(coords, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise SeparationError(f"panel {name!r}: coords must be n x 2, got shape {points.shape}")
        groups = np.asarray(labels)
        if groups.shape != (points.shape[0],):
            raise SeparationError(f"panel {name!r}: {points.shape[0]} points but labels of shape {groups.shape}")
        if not np.isin(groups, (CLEAN, PERTURBED)).all():
            raise SeparationError(f"panel {name!r}: labels must be {CLEAN} (clean) or {PERTURBED} (perturbed)")
        order = np.random.default_rng(DRAW_ORDER_SEED).permutation(points.shape[0])
        colours = np.where(groups[order] == PERTURBED, GROUP_COLOURS[PERTURBED], GROUP_COLOURS[CLEAN])
        ax.scatter(points[order, 0], points[order, 1], c=colours, s=3, alpha=0.6, linewidths=0, rasterized=True)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    handles = [
        Line2D([], [], marker="o", linestyle="", color=GROUP_COLOURS[k], label=GROUP_NAMES[k])
        for k in (CLEAN, PERTURBED)
    ]
    axes[0].legend(handles=handles, loc="best", fontsize="small")
    figure.suptitle(title)
    return figure
