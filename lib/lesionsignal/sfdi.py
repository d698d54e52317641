"""The Small-Feature Detectability Index (SPEC section 8): one number per (model, dataset, pool).

SFDI is the geometric mean over a panel of conditions of the probe AUC clipped below at 0.5: 0.5 means blind to
the whole panel, 1.0 perfect. The clip stops a below-chance AUC (noise, or a flipped probe) from dragging the
index under chance; the geometric mean makes one blind condition cost more than an arithmetic mean would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

DEFAULT_PANEL = (
    "C1",
    "C2",
    "L4",
    "L8",
    "S4",
    "S8",
    "iso_blur_4",
    "iso_blur_8",
    "reticular_fine_32",
    "ground_glass_64",
)
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


def sfdi(aucs: Mapping[str, float], panel: Sequence[str] = DEFAULT_PANEL) -> float:
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
    panel: Sequence[str] = DEFAULT_PANEL,
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


def _with_dataset_means(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if (table["dataset"] == MEAN_LABEL).any():
        raise SfdiError(f"frame: a dataset is named {MEAN_LABEL!r}, which the mean-over-datasets rows use")
    others = [key for key in keys if key != "dataset"]
    if others:
        means = table.groupby(others, sort=True).agg(sfdi=("sfdi", "mean"), n_datasets=("dataset", "size"))
        means = means.reset_index()
    else:
        means = pd.DataFrame({"sfdi": [table["sfdi"].mean()], "n_datasets": [len(table)]})
    means["dataset"] = MEAN_LABEL
    means["n_conditions"] = table["n_conditions"].iloc[0]
    combined = pd.concat([table, means[table.columns]], ignore_index=True)
    combined["_is_mean"] = combined["dataset"] == MEAN_LABEL
    order = [*others, "_is_mean", "dataset"]
    return combined.sort_values(order, kind="stable").drop(columns="_is_mean")
