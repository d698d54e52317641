"""Figures of the clinical-reader reporting: sensitivity at a fixed specificity, the patch-local minus CLS
sensitivity gap, AUC against box jitter, and AUC across size strata. Pure functions from frames to figures."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lesionsignal.paper.figures import (
    FigureError,
    PoolBars,
    _colour,
    _figure_legend,
    pool_bar_panels,
)

MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
MODEL_LINES = ("-", "--", ":", "-.")


def _error(values: pd.Series, low: pd.Series, high: pd.Series) -> np.ndarray:
    """Asymmetric error bars, never negative (a point estimate may sit on its interval's edge)."""
    v = values.to_numpy(dtype=float)
    return np.clip(np.vstack([v - low.to_numpy(dtype=float), high.to_numpy(dtype=float) - v]), 0.0, None)


def plot_lesion_sensitivity(operating: pd.DataFrame, level: str, target: float, title: str) -> Figure:
    """Test sensitivity at the training threshold for ``target`` specificity, with its 95 % interval, by pool and
    model; one panel per lesion class (rows of the lesion stage's operating points)."""
    part = operating.loc[(operating["level"] == level) & ((operating["target_specificity"] - target).abs() < 1e-9)]
    if part.empty:
        raise FigureError(f"no {level}-level operating points at specificity {target}")
    ylabel = f"sensitivity at {target:.0%} specificity\n(dashed: a probe at chance)"
    bars = PoolBars("sensitivity", "sensitivity_low", "sensitivity_high", 0.0, 1.0 - target, (0.0, 1.0), ylabel, True)
    return pool_bar_panels(part, bars, title)


def plot_sensitivity_gaps(gaps: pd.DataFrame, target: float, title: str) -> Figure:
    """Patch-local minus CLS sensitivity at ``target`` specificity per condition, with its paired 95 % interval;
    one panel per (model, dataset) (rows of the probes stage's sensitivity gaps)."""
    part = gaps.loc[(gaps["target_specificity"] - target).abs() < 1e-9]
    if part.empty:
        raise FigureError(f"no sensitivity gaps at specificity {target}")
    panels = part[["model", "dataset"]].drop_duplicates().to_numpy().tolist()
    conditions = list(dict.fromkeys(part["perturbation"]))
    figure = Figure(figsize=(max(6.0, 0.28 * len(conditions) + 1.5), 2.6 * len(panels) + 1.2), layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (model, dataset) in zip(axes, panels, strict=True):
        rows = part.loc[(part["model"] == model) & (part["dataset"] == dataset)].set_index("perturbation")
        rows = rows.reindex(conditions)
        x = np.arange(len(conditions))
        err = _error(rows["gap"], rows["gap_low"], rows["gap_high"])
        ax.errorbar(x, rows["gap"], yerr=err, fmt="o", color="#c44e52", markersize=3, elinewidth=0.8, capsize=2)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_ylim(-1.0, 1.0)
        ax.set_ylabel("sensitivity\npatch-local - CLS", fontsize=8)
        ax.set_title(f"{model} · {dataset}", fontsize=9)
    axes[-1].set_xticks(np.arange(len(conditions)), conditions, rotation=70, ha="right", fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


def plot_jitter(jitter: pd.DataFrame, cls_auc: pd.DataFrame, title: str) -> Figure:
    """Patch-local AUC against box jitter (in encoder patches), a line per model with 95 % intervals, one panel per
    lesion class; the unjittered box-level CLS AUC of each model as a dotted line of the same colour."""
    if jitter.empty:
        raise FigureError("no jitter results to plot")
    classes = list(dict.fromkeys(jitter["lesion_class"]))
    models = list(dict.fromkeys(jitter["model"]))
    colours = dict(zip(models, ("#c44e52", "#4c72b0", "#55a868", "#8172b2", "#937860", "#da8bc3"), strict=False))
    figure = Figure(figsize=(1.2 + 3.0 * len(classes), 3.6), layout="constrained")
    axes = figure.subplots(1, len(classes), squeeze=False, sharey=True)[0]
    for ax, name in zip(axes, classes, strict=True):
        for k, model in enumerate(models):
            rows = jitter.loc[(jitter["lesion_class"] == name) & (jitter["model"] == model)].sort_values("jitter")
            if rows.empty:
                continue
            offset = 0.03 * (k - (len(models) - 1) / 2)  # side by side, so the intervals do not hide each other
            colour = colours.get(model, "black")
            err = _error(rows["auc"], rows["ci_low"], rows["ci_high"])
            style = {"color": colour, "marker": MODEL_MARKERS[k % 7], "markersize": 4, "elinewidth": 0.8}
            ax.errorbar(
                rows["jitter"] + offset, rows["auc"], yerr=err, capsize=2, label=f"{model} patch-local", **style
            )
            ref = cls_auc.loc[(cls_auc["lesion_class"] == name) & (cls_auc["model"] == model), "auc"]
            if not ref.empty:
                ax.axhline(float(ref.iloc[0]), color=colour, linestyle=":", linewidth=1.0, label=f"{model} CLS")
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(sorted(jitter["jitter"].unique()))
        ax.set_xlabel("box jitter (encoder patches)")
        ax.set_title(name)
        ax.set_ylim(0.0, 1.0)
    axes[0].set_ylabel("box-level test AUC (95 % CI)")
    _figure_legend(figure, axes)
    figure.suptitle(title)
    return figure


def plot_size_strata(strata: pd.DataFrame, scheme: str, pools: Sequence[str], title: str) -> Figure:
    """AUC of each size stratum of ``scheme`` (smallest lesions left), a line per (model, pool) with 95 % intervals,
    a row of panels per level and a column per class; each stratum's positive count under its name."""
    part = strata.loc[(strata["scheme"] == scheme) & strata["pool"].isin(pools)].dropna(subset=["auc"])
    if part.empty:
        raise FigureError(f"no strata of scheme {scheme!r} for pools {list(pools)}")
    levels = list(dict.fromkeys(part["level"]))
    classes = list(dict.fromkeys(part["lesion_class"]))
    models = list(dict.fromkeys(part["model"]))
    stratum_names = list(dict.fromkeys(strata.loc[strata["scheme"] == scheme, "stratum"]))
    figure = Figure(figsize=(1.2 + 3.1 * len(classes), 2.9 * len(levels) + 0.8), layout="constrained")
    axes = figure.subplots(len(levels), len(classes), squeeze=False, sharey=True)
    lines = [(m, p) for m in models for p in pools]
    for r, level in enumerate(levels):
        for c, name in enumerate(classes):
            ax = axes[r, c]
            for k, (model, pool) in enumerate(lines):
                rows = part.loc[
                    (part["level"] == level) & (part["lesion_class"] == name) & (part["model"] == model)
                    & (part["pool"] == pool)
                ]  # fmt: skip
                if rows.empty:
                    continue
                x = np.asarray([stratum_names.index(s) for s in rows["stratum"]]) + 0.06 * (k - (len(lines) - 1) / 2)
                err = _error(rows["auc"], rows["ci_low"], rows["ci_high"])
                m = models.index(model)
                style = {"linestyle": MODEL_LINES[m % 4], "marker": MODEL_MARKERS[m % 7], "label": f"{model} · {pool}"}
                colour = _colour(pool, list(pools))
                ax.errorbar(x, rows["auc"], yerr=err, color=colour, markersize=4, elinewidth=0.7, capsize=2, **style)
            # A stratum's positives are the same rows for every model and pool of a panel: named once, on its tick.
            cell = strata.loc[
                (strata["scheme"] == scheme) & (strata["level"] == level) & (strata["lesion_class"] == name)
            ]  # fmt: skip
            positives = cell.groupby("stratum", sort=False)["n_positive"].first()
            ticks = [f"{s}\n{int(positives[s])} pos." if s in positives else s for s in stratum_names]
            ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
            ax.set_xticks(range(len(stratum_names)), ticks, fontsize=8)
            ax.set_title(f"{name}, {level} level", fontsize=9)
            ax.set_ylim(0.0, 1.0)
        axes[r, 0].set_ylabel("stratum AUC (95 % CI)")
    for ax in axes[-1]:
        ax.set_xlabel(f"size stratum ({scheme}; 1 = smallest)", fontsize=8)
    _figure_legend(figure, axes.ravel())
    figure.suptitle(title)
    return figure
