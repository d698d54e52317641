"""Section 07's figures: AUC against depth per pool, the readouts and model-chosen ROIs beside CLS and the oracle box,
and the native-resolution AUC against the stimulus's footprint in patches. Pure functions from result frames to
matplotlib figures; every axis starts at the chance line's neighbourhood so a curve at the floor reads as one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from lesionsignal.analysis.native_resolution import CHANCE
from lesionsignal.paper.figures import POOL_COLOURS, FigureError

PANEL_IN = (3.0, 2.4)
_BAR_COLOURS = ("#4c72b0", "#c44e52", "#55a868", "#8172b2", "#937860", "#da8bc3", "#8c8c8c")


def _grid(rows: int, cols: int) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(PANEL_IN[0] * cols, PANEL_IN[1] * rows + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def _chance(ax: Axes) -> None:
    ax.axhline(CHANCE, color="#888888", lw=0.8, ls="--", zorder=0)
    ax.set_ylim(0.0, 1.02)


def _model_panels(
    frame: pd.DataFrame,
) -> tuple[Figure, np.ndarray, list[tuple[Axes, tuple[str, str, str], pd.DataFrame]]]:
    """A row of panels per model, one panel per (model, cohort, condition or class) of ``frame`` in order; the grid's
    unused panels stay hidden. Returns the figure, its axes and each panel's axes, key and rows."""
    panels = list(frame.groupby(["model", "dataset", "perturbation"], sort=False))
    models = list(dict.fromkeys(frame["model"]))
    cols = max(sum(1 for (m, _, _), _ in panels if m == model) for model in models)
    fig, axes = _grid(len(models), cols)
    for ax in axes.flat:
        ax.set_visible(False)
    filled = {model: 0 for model in models}
    placed = []
    for key, own in panels:
        model = key[0]
        ax = axes[models.index(model), filled[model]]
        filled[model] += 1
        ax.set_visible(True)
        placed.append((ax, key, own))
    return fig, axes, placed


def plot_layerwise(frame: pd.DataFrame, title: str) -> Figure:
    """One panel per (model, cohort, condition): AUC of each pool after every block, with its 95 % CI."""
    if frame.empty:
        raise FigureError("no layer-wise probes to draw")
    fig, axes, placed = _model_panels(frame)
    for ax, (model, dataset, condition), own in placed:
        for pool, curve in own.groupby("pool", sort=False):
            curve = curve.sort_values("layer")
            colour = POOL_COLOURS.get(pool, "#8c8c8c")
            ax.plot(curve["layer"], curve["auc"], marker="o", ms=3, color=colour, label=str(pool))
            ax.fill_between(curve["layer"], curve["ci_low"], curve["ci_high"], color=colour, alpha=0.12, lw=0)
        _chance(ax)
        ax.set_xticks(sorted(own["layer"].unique()))
        ax.set_title(f"{model}\n{dataset} / {condition}", fontsize=8)
        ax.set_xlabel("block", fontsize=8)
        ax.set_ylabel("AUC", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_bars(frame: pd.DataFrame, category: str, order: Sequence[str], title: str) -> Figure:
    """One panel per (model, cohort, condition or class): AUC of each readout or ROI with its 95 % CI; an ROI's
    hit rate, where the frame has one, is written above its bar."""
    if frame.empty:
        raise FigureError(f"no {category} rows to draw")
    fig, _, placed = _model_panels(frame)
    names = [n for n in order if n in set(frame[category])]
    for ax, (model, dataset, condition), own in placed:
        rows = own.set_index(category).reindex(names)
        x = np.arange(len(names))
        err = np.vstack([rows["auc"] - rows["ci_low"], rows["ci_high"] - rows["auc"]])
        colours = [_BAR_COLOURS[i % len(_BAR_COLOURS)] for i in range(len(names))]
        ax.bar(x, rows["auc"], color=colours, yerr=err, capsize=2, error_kw={"lw": 0.8})
        if "hit_rate" in rows:
            for i, rate in enumerate(rows["hit_rate"]):
                if np.isfinite(rate):
                    ax.text(i, 1.0, f"{rate:.0%}", ha="center", va="bottom", fontsize=6, color="#333333")
        _chance(ax)
        ax.set_ylim(0.0, 1.12)
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{model}\n{dataset} / {condition}", fontsize=8)
        ax.set_ylabel("AUC", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_native(table: pd.DataFrame, title: str) -> Figure:
    """One panel per (model, cohort): AUC of each pool against the stimulus side in patches (log scale); the
    dotted line is one patch, hollow markers are AUCs at the floor (CI reaching 0.5)."""
    if table.empty:
        raise FigureError("no native-resolution probes to draw")
    panels = list(table.groupby(["model", "dataset"], sort=False))
    fig, axes = _grid(1, len(panels))
    for ax, ((model, dataset), own) in zip(axes.flat, panels, strict=True):
        for pool, curve in own.groupby("pool", sort=False):
            curve = curve.groupby("patches", as_index=False)[["auc", "ci_low"]].max().sort_values("patches")
            colour = POOL_COLOURS.get(pool, "#8c8c8c")
            ax.plot(curve["patches"], curve["auc"], color=colour, lw=1, label=str(pool))
            floor = curve["ci_low"] <= CHANCE
            ax.scatter(curve["patches"][~floor], curve["auc"][~floor], color=colour, s=14, zorder=3)
            ax.scatter(curve["patches"][floor], curve["auc"][floor], facecolors="white", edgecolors=colour, s=14,
                       zorder=3)  # fmt: skip
        ax.axvline(1.0, color="#333333", lw=0.8, ls=":")
        _chance(ax)
        ax.set_xscale("log")
        ticks = sorted(set(own["patches"].round(3)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], rotation=45, fontsize=7)
        ax.set_xlabel("stimulus side in patches (dotted: one patch)", fontsize=8)
        ax.set_ylabel("AUC", fontsize=8)
        ax.set_title(f"{model} / {dataset}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    return fig
