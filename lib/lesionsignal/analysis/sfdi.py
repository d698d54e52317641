"""The Small-Feature Detectability Index (protocol section 8): one number per (model, dataset, pool).

SFDI is the geometric mean over a panel of conditions of the probe AUC clipped below at 0.5: 0.5 means blind to
the whole panel, 1.0 perfect. The clip stops a below-chance AUC (noise, or a flipped probe) from dragging the
index under chance; the geometric mean makes one blind condition cost more than an arithmetic mean would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

CHANCE = 0.5
MEAN_LABEL = "mean"  # the dataset value of the mean-over-datasets rows
TABLE_INPUT = ("perturbation", "auc")


class SfdiError(ValueError):
    """Input the index cannot be computed from; the message names the condition, group or column."""


def _check_panel(panel: Sequence[str]) -> tuple[str, ...]:
    names = tuple(panel)
    if not names:
        raise SfdiError("panel: empty; need at least one condition")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SfdiError(f"panel: conditions listed more than once: {repeated}")
    return names


def sfdi(aucs: Mapping[str, float], panel: Sequence[str]) -> float:
    """Geometric mean of max(AUC, 0.5) over ``panel``; conditions in ``aucs`` outside the panel are ignored."""
    names = _check_panel(panel)
    missing = [name for name in names if name not in aucs]
    if missing:
        raise SfdiError(f"aucs: missing panel conditions {missing}")
    values = np.array([float(aucs[name]) for name in names], dtype=np.float64)
    bad = [name for name, value in zip(names, values, strict=True) if not (0.0 <= value <= 1.0)]
    if bad:
        raise SfdiError(f"aucs: not an AUC in [0, 1] (or NaN) for {bad}: {[aucs[name] for name in bad]}")
    return float(math.exp(float(np.mean(np.log(np.maximum(values, CHANCE))))))


def sfdi_table(
    frame: pd.DataFrame,
    panel: Sequence[str],
    by: Sequence[str] = ("model", "dataset", "pool"),
) -> pd.DataFrame:
    """One SFDI per group of ``by`` (columns ``by`` + sfdi, n_conditions, n_datasets).

    When "dataset" is one of ``by``, each group of the other keys also gets a row with dataset = "mean": the
    arithmetic mean of its per-dataset SFDIs (n_datasets says how many). Rows are sorted by the other keys, then
    by dataset with the mean row last.
    """
    names = _check_panel(panel)
    keys = list(by)
    if not keys:
        raise SfdiError("by: empty; need at least one grouping column")
    missing = [column for column in (*keys, *TABLE_INPUT) if column not in frame.columns]
    if missing:
        raise SfdiError(f"frame: missing columns {missing}; has {list(frame.columns)}")
    blank = frame[keys].isna().any(axis=1)
    if blank.any():
        raise SfdiError(f"frame row {frame.index[blank][0]!r}: a grouping column ({keys}) is empty")
    duplicated = frame.duplicated([*keys, "perturbation"], keep=False)
    if duplicated.any():
        row = frame.loc[duplicated].iloc[0]
        raise SfdiError(f"frame: more than one AUC for {dict(row[[*keys, 'perturbation']])}")
    rows = []
    for group, part in frame.groupby(keys, sort=True):
        label = dict(zip(keys, group, strict=True))
        aucs = dict(zip(part["perturbation"], part["auc"], strict=True))
        try:
            value = sfdi(aucs, names)
        except SfdiError as error:
            raise SfdiError(f"group {label}: {error}") from error
        rows.append({**label, "sfdi": value, "n_conditions": len(names), "n_datasets": 1})
    table = pd.DataFrame(rows, columns=[*keys, "sfdi", "n_conditions", "n_datasets"])
    if "dataset" in keys:
        table = _with_dataset_means(table, keys)
    return table.reset_index(drop=True)


def _with_dataset_means(table: pd.DataFrame, keys: list[str], value: str = "sfdi") -> pd.DataFrame:
    if (table["dataset"] == MEAN_LABEL).any():
        raise SfdiError(f"frame: a dataset is named {MEAN_LABEL!r}, which the mean-over-datasets rows use")
    others = [key for key in keys if key != "dataset"]
    if others:
        means = table.groupby(others, sort=True).agg(**{value: (value, "mean")}, n_datasets=("dataset", "size"))
        means = means.reset_index()
    else:
        means = pd.DataFrame({value: [table[value].mean()], "n_datasets": [len(table)]})
    means["dataset"] = MEAN_LABEL
    means["n_conditions"] = table["n_conditions"].iloc[0]
    combined = pd.concat([table, means[table.columns]], ignore_index=True)
    combined["_is_mean"] = combined["dataset"] == MEAN_LABEL
    order = [*others, "_is_mean", "dataset"]
    return combined.sort_values(order, kind="stable").drop(columns="_is_mean")


# ------------------------------------------------------------------------------ coverage, recovery, figure


@dataclass(frozen=True)
class PanelCoverage:
    """Which conditions of the SFDI panel a run extracted. An index over part of the panel is not the paper's
    index: every table and figure made from a partial panel says so."""

    wanted: tuple[str, ...]
    present: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def label(self) -> str:
        if self.complete:
            return f"full panel ({len(self.wanted)} conditions)"
        return (
            f"PARTIAL panel: {len(self.present)} of {len(self.wanted)} conditions (missing: {', '.join(self.missing)})"
        )


def panel_coverage(panel: Sequence[str], available: Sequence[str]) -> PanelCoverage:
    """Split the panel into the conditions the run has (in panel order) and those it lacks."""
    names = _check_panel(panel)
    have = set(available)
    return PanelCoverage(
        wanted=names,
        present=tuple(n for n in names if n in have),
        missing=tuple(n for n in names if n not in have),
    )


def sfdi_report(
    frame: pd.DataFrame, coverage: PanelCoverage, by: Sequence[str] = ("model", "dataset", "pool")
) -> pd.DataFrame:
    """`sfdi_table` over the conditions of the panel the run has, with a ``panel`` column saying how many."""
    if not coverage.present:
        raise SfdiError(f"none of the panel's conditions is in this run: {coverage.label}")
    table = sfdi_table(frame, coverage.present, by)
    table["panel"] = f"{len(coverage.present)}/{len(coverage.wanted)}"
    return table


def recovery_table(
    frame: pd.DataFrame,
    panel: Sequence[str],
    local: str = "patch_local",
    reference: str = "cls",
    by: Sequence[str] = ("model", "dataset"),
) -> pd.DataFrame:
    """Patch-local recovery: mean over the panel of AUC(local) - AUC(reference), per group of ``by``.

    Each group must have both pools for every panel condition; with "dataset" among ``by``, a dataset "mean"
    row per model averages the per-dataset values, as in `sfdi_table`.
    """
    names = _check_panel(panel)
    keys = list(by)
    needed = [*keys, "pool", *TABLE_INPUT]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise SfdiError(f"frame: missing columns {missing}; has {list(frame.columns)}")
    part = frame.loc[frame["perturbation"].isin(names) & frame["pool"].isin((local, reference))]
    wide = part.pivot_table(index=[*keys, "perturbation"], columns="pool", values="auc", aggfunc="first")
    rows = []
    for group, cells in wide.groupby(level=list(range(len(keys))), sort=True):
        label = dict(zip(keys, group if isinstance(group, tuple) else (group,), strict=True))
        have = {p for p in cells.index.get_level_values("perturbation")}
        absent = [n for n in names if n not in have]
        if absent or local not in cells or reference not in cells or cells[[local, reference]].isna().any().any():
            raise SfdiError(f"group {label}: needs {local} and {reference} AUCs for every panel condition {absent}")
        gap = (cells[local] - cells[reference]).to_numpy(dtype=np.float64)
        rows.append({**label, "recovery": float(gap.mean()), "n_conditions": len(names), "n_datasets": 1})
    if not rows:
        raise SfdiError(f"frame: no {local} / {reference} AUCs for the panel conditions {list(names)}")
    table = pd.DataFrame(rows, columns=[*keys, "recovery", "n_conditions", "n_datasets"])
    if "dataset" in keys:
        table = _with_dataset_means(table, keys, value="recovery")
    return table.reset_index(drop=True)
