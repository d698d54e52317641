"""Every figure of the paper: detection heatmaps and directional-blur curves, lesion-pool bars and stratum gaps,
SFDI beside patch-local recovery, and UMAP panels. Pure functions from result frames to matplotlib figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
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
POOL_AUC_FLOOR = 0.3  # lower end of the AUC axis unless a CI reaches below it
BAR_PANEL_MIN_IN = 2.2  # narrower bar panels run their neighbouring titles together
# Points are drawn in a shuffled order so neither group is painted wholly over the other; display only.
DRAW_ORDER_SEED = 0
# Heatmap cells are sized so the 8 pt numbers in them stay legible as saved: "0.50" is about 0.25 x 0.11 inches.
HEATMAP_CELL_IN = (0.5, 0.3)
HEATMAP_MIN_AXES_IN = 1.4  # a one-row heatmap still gets a colorbar tall enough for its ticks
HEATMAP_COLORBAR_IN = 0.15
HEATMAP_NUMBER_PT = 8
HEATMAP_TICK_PT = 8
HEATMAP_XTICK_ROTATION = 70


class FigureError(ValueError):
    """Results a figure cannot be drawn from; the message names what is missing."""


def _text_inches(labels: Sequence[object], size_pt: float) -> float:
    """A generous width of the longest label (0.62 em a character), to leave room for it beside the cells."""
    return max((len(str(label)) for label in labels), default=0) * 0.62 * size_pt / 72


def _heatmap_size(frame: pd.DataFrame) -> tuple[float, float]:
    """Figure inches giving each cell ``HEATMAP_CELL_IN`` after the labels, title and colorbar have their room."""
    width, height = HEATMAP_CELL_IN
    side = _text_inches(frame.index, HEATMAP_TICK_PT) + 1.9  # row labels; colorbar, its ticks and its label
    below = _text_inches(frame.columns, HEATMAP_TICK_PT) * math.sin(math.radians(HEATMAP_XTICK_ROTATION)) + 0.7
    return width * frame.shape[1] + side, max(height * frame.shape[0], HEATMAP_MIN_AXES_IN) + below


def _heatmap_colorbar_shape(n_rows: int, n_cols: int) -> dict[str, float]:
    """A colorbar ``HEATMAP_COLORBAR_IN`` wide and as tall as the cells, whatever the number of rows and columns."""
    width, height = HEATMAP_CELL_IN
    fraction = min(0.15, HEATMAP_COLORBAR_IN / (width * n_cols))
    return {"fraction": fraction, "aspect": max(height * n_rows, HEATMAP_MIN_AXES_IN) / HEATMAP_COLORBAR_IN}


def plot_heatmap(frame: pd.DataFrame, title: str) -> object:
    """Model x perturbation AUC heatmap on a fixed 0.5 (chance) to 1.0 scale, each cell annotated."""
    import matplotlib.pyplot as plt

    n_rows, n_cols = frame.shape
    fig, ax = plt.subplots(figsize=_heatmap_size(frame), layout="constrained")
    values = frame.to_numpy(dtype=float)
    image = ax.imshow(values, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_cols), frame.columns, rotation=HEATMAP_XTICK_ROTATION, ha="right", fontsize=HEATMAP_TICK_PT)
    ax.set_yticks(range(n_rows), frame.index, fontsize=HEATMAP_TICK_PT)
    for i in range(n_rows):
        for j in range(n_cols):
            if np.isfinite(values[i, j]):
                colour = "black" if values[i, j] > 0.8 else "white"
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=HEATMAP_NUMBER_PT, color=colour)
    colorbar = fig.colorbar(image, ax=ax, **_heatmap_colorbar_shape(n_rows, n_cols))
    colorbar.set_label("AUC\n(0.5 and below: floor colour)", fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def plot_directional_curves(sweep: pd.DataFrame, title: str) -> object:
    """AUC vs patch side P, one line per (direction, L), one panel per (model, dataset), 95 % CI as bars."""
    import matplotlib.pyplot as plt

    if sweep.empty:
        raise FigureError("directional curves: the sweep is empty")
    panels = sweep[["model", "dataset"]].drop_duplicates().to_numpy().tolist()
    n_cols = min(3, len(panels))
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(4.0 * n_cols, 3.0 * n_rows + 0.5), squeeze=False, sharey=True, layout="constrained"
    )
    lengths = sorted(sweep["length"].unique())
    colours = dict(zip(lengths, plt.get_cmap("viridis")(np.linspace(0.1, 0.85, len(lengths))), strict=True))
    lines = sweep[["direction", "length"]].drop_duplicates().sort_values(["direction", "length"])
    # Lines share the x positions: each is nudged sideways (on the log axis) so their CI bars stay apart.
    nudge = {key: 2.0 ** (0.05 * (k - (len(lines) - 1) / 2)) for k, key in enumerate(map(tuple, lines.to_numpy()))}
    handles: dict[tuple[str, int], Artist] = {}
    for ax, (model, dataset) in zip(axes.ravel(), panels, strict=False):
        part = sweep[(sweep["model"] == model) & (sweep["dataset"] == dataset)]
        for (direction, length), line in part.groupby(["direction", "length"], sort=True):
            line = line.sort_values("patch")
            err = np.vstack([line["auc"] - line["ci_low"], line["ci_high"] - line["auc"]])
            handles[(direction, length)] = ax.errorbar(
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
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    # One legend under the panels (inside them it hid the error bars): a column per L, a row per direction.
    order = sorted(handles, key=lambda key: (key[1], key[0]))
    labels = [f"{direction} L{length}" for direction, length in order]
    fig.legend([handles[k] for k in order], labels, loc="outside lower center", ncols=len(lengths), fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def _handles_by_label(axes: Sequence[Axes]) -> dict[str, Artist]:
    """Each labelled artist of the panels once, in the order first drawn: the entries of one figure legend."""
    handles: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    return handles


def _figure_legend(figure: Figure, axes: Sequence[Axes]) -> None:
    """One legend below every panel, so no legend covers a bar or an error bar."""
    handles = _handles_by_label(axes)
    figure.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles))


def _bar_panels_width(n_models: int, n_panels: int) -> float:
    """Inches for a row of bar panels, 1.1 a model and at least ``BAR_PANEL_MIN_IN`` a panel."""
    return 1.2 + max(1.1 * n_models, BAR_PANEL_MIN_IN) * n_panels


def _auc_floor(ci_low: pd.Series) -> float:
    """``POOL_AUC_FLOOR``, lowered to the tenth below the lowest CI so that no error bar is cut off."""
    lowest = float(np.nanmin(np.append(ci_low.to_numpy(dtype=float), POOL_AUC_FLOOR)))
    return math.floor(10 * lowest) / 10


def _colour(pool: str, order: Sequence[str]) -> str:
    return POOL_COLOURS.get(pool, _FALLBACK_COLOURS[list(order).index(pool) % len(_FALLBACK_COLOURS)])


@dataclass(frozen=True)
class PoolBars:
    """How ``pool_bar_panels`` draws one statistic: its columns (value, interval low, interval high), where its
    bars start, the dashed reference line, the y range and label."""

    value: str
    low: str
    high: str
    bottom: float
    reference: float
    ylim: tuple[float, float]
    ylabel: str
    clip_errors: bool = False  # an estimate may sit just outside a resampled interval: draw no negative bar


def pool_bar_panels(part: pd.DataFrame, bars: PoolBars, title: str) -> Figure:
    """A statistic with its interval by pool and model, one panel per lesion class (rows with ``lesion_class``,
    ``pool`` and ``model``)."""
    classes = list(dict.fromkeys(part["lesion_class"]))
    models = list(dict.fromkeys(part["model"]))
    pools = list(dict.fromkeys(part["pool"]))
    figure = Figure(figsize=(_bar_panels_width(len(models), len(classes)), 4.0), layout="constrained")
    axes = figure.subplots(1, len(classes), squeeze=False, sharey=True)[0]
    width = 0.8 / len(pools)
    for ax, name in zip(axes, classes, strict=True):
        for k, pool in enumerate(pools):
            rows = part.loc[(part["lesion_class"] == name) & (part["pool"] == pool)].set_index("model").reindex(models)
            x = np.arange(len(models)) + (k - (len(pools) - 1) / 2) * width
            value = rows[bars.value].to_numpy(dtype=float)
            errors = np.vstack(
                [value - rows[bars.low].to_numpy(dtype=float), rows[bars.high].to_numpy(dtype=float) - value]
            )
            if bars.clip_errors:
                errors = np.clip(errors, 0.0, None)
            ax.bar(x, value - bars.bottom, width, bottom=bars.bottom, color=_colour(pool, pools), label=pool)
            ax.errorbar(x, value, yerr=errors, fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        ax.axhline(bars.reference, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_title(name)
        ax.set_ylim(*bars.ylim)
    axes[0].set_ylabel(bars.ylabel)
    _figure_legend(figure, axes)
    figure.suptitle(title)
    return figure


def plot_pool_aucs(frame: pd.DataFrame, level: Level, title: str) -> Figure:
    """Test AUC with its 95 % CI by pool and model, one panel per lesion class (rows of ``fits_frame``)."""
    part = frame.loc[frame["level"] == level.value]
    if part.empty:
        raise FigureError(f"no {level.value}-level results to plot")
    floor = _auc_floor(part["ci_low"])
    return pool_bar_panels(
        part, PoolBars("auc", "ci_low", "ci_high", 0.5, 0.5, (floor, 1.0), "test AUC (95 % CI)"), title
    )


def plot_stratum_gaps(frame: pd.DataFrame, title: str) -> Figure:
    """Gap AUC(large) - AUC(small) by pool and model, one row of panels per level, one column per class."""
    part = frame.dropna(subset=["gap"])
    if part.empty:
        raise FigureError("no stratum gaps to plot (no class had both a small and a large stratum)")
    levels = [lv for lv in (Level.IMAGE.value, Level.BOX.value) if (part["level"] == lv).any()]
    classes = list(dict.fromkeys(part["lesion_class"]))
    models = list(dict.fromkeys(part["model"]))
    pools = list(dict.fromkeys(part["pool"]))
    size = (_bar_panels_width(len(models), len(classes)), 2.9 * len(levels) + 0.4)
    figure = Figure(figsize=size, layout="constrained")
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
    _figure_legend(figure, axes.ravel())
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
    figure = Figure(figsize=(3.0 + 1.6 * len(models), 4.2), layout="constrained")
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(pools)
    for k, pool in enumerate(pools):
        values = sfdi_rows.loc[sfdi_rows["pool"] == pool].set_index("model")["sfdi"].reindex(models)
        x = np.arange(len(models)) + (k - (len(pools) - 1) / 2) * width
        # Bars rise from 0, not from chance: an index at chance is a half-height bar, not an invisible one.
        left.bar(x, values.to_numpy(dtype=float), width, label=pool, color=POOL_COLOURS.get(pool, "#8c8c8c"))
    left.axhline(CHANCE, color="grey", linestyle="--", linewidth=0.8, label=f"chance ({CHANCE:g})")
    left.set_ylim(0.0, 1.0)
    left.set_ylabel("SFDI (0.5 blind, 1.0 perfect)")
    left.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize=8)
    left.set_title("SFDI by pool")
    recovery = recovery_rows.set_index("model")["recovery"].reindex(models).to_numpy(dtype=float)
    right.bar(np.arange(len(models)), recovery, 0.6, color=POOL_COLOURS["patch_local"])
    right.axhline(0.0, color="grey", linewidth=0.8)
    right.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("mean AUC(patch-local) - AUC(CLS)")
    right.set_title("patch-local recovery")
    _figure_legend(figure, [left])
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
    # Below the panels: inside one, the legend hid its points.
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    figure.suptitle(title)
    return figure
