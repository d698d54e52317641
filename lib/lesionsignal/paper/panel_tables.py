"""The controlled-stimulus tables of the paper (T2 to T9, S2, S3, S5), sliced from long result frames.

Every probe of the panel is fitted once into one long frame (``detection.RESULT_COLUMNS``: one row per model,
dataset, pool and perturbation). Each table here is a selection of that frame reshaped the way the paper prints
it: rows are models (and pools where a table mixes probes), columns are ``"<dataset> <perturbation>"``. Cells the
run did not compute stay empty: nothing is filled in, and ``coverage`` says which conditions a table lacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from lesionsignal.core.kinds import ENCODER_POOLS, FINETUNED_POOLS, RAW_POOLS, Pool, RunKind
from lesionsignal.paper.reference import compare
from lesionsignal.paper.registry import (
    DIRECTIONAL_REPRESENTATIVE,
    GEOMETRIC,
    ISO_BLUR,
    PATHOLOGY,
    RAW_SLICE,
    TABLES,
    PaperTable,
    significant_column,
)
from lesionsignal.stimuli.panel import Family, get_condition

T4_POOLS = (Pool.CLS, *RAW_POOLS, *FINETUNED_POOLS)  # encoders (the DINO-ResNet control among them), baselines
GAP = "local_minus_cls"


class TableError(ValueError):
    """A results frame that cannot make the table asked for; the message names the column or row."""


def _check_columns(frame: pd.DataFrame, needed: Iterable[str], what: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise TableError(f"{what}: results lack columns {missing} (have {list(frame.columns)})")


def _first_seen(values: Iterable[object]) -> list[object]:
    return list(dict.fromkeys(values))


def _ordered(frame: pd.DataFrame, column: str, order: Sequence[object]) -> pd.Series:
    return pd.Categorical(frame[column], categories=list(order), ordered=True)


def _check_unique(frame: pd.DataFrame, keys: Sequence[str], what: str) -> None:
    repeated = frame[frame.duplicated(list(keys), keep=False)]
    if not repeated.empty:
        first = repeated.iloc[0]
        raise TableError(f"{what}: more than one result for {dict(first[list(keys)])}")


def matrix(
    results: pd.DataFrame,
    perturbations: Sequence[str],
    pools: Sequence[str],
    row_keys: Sequence[str] = ("model", "pool"),
    value: str = "auc",
) -> pd.DataFrame:
    """Rows ``row_keys`` (in first-seen order), columns ``"<dataset> <perturbation>"`` (datasets in first-seen
    order, perturbations in the order given). Only the listed perturbations and pools are kept; absent cells
    stay NaN. An empty frame means none of the table's cells was computed."""
    _check_columns(results, ("model", "dataset", "pool", "perturbation", value), "matrix")
    chosen = results[results["perturbation"].isin(perturbations) & results["pool"].isin(pools)].copy()
    if chosen.empty:
        return pd.DataFrame(columns=list(row_keys))
    _check_unique(chosen, ("model", "dataset", "pool", "perturbation"), "matrix")
    datasets = _first_seen(chosen["dataset"])
    present = [p for p in perturbations if p in set(chosen["perturbation"])]
    chosen["column"] = [f"{d} {p}" for d, p in zip(chosen["dataset"], chosen["perturbation"], strict=True)]
    wide = chosen.pivot(index=list(row_keys), columns="column", values=value)
    columns = [f"{d} {p}" for d in datasets for p in present if f"{d} {p}" in wide.columns]
    rows = chosen[list(row_keys)].drop_duplicates()
    out = rows.merge(wide[columns].reset_index(), on=list(row_keys), how="left")
    return out.reset_index(drop=True)


def t3_geometric(results: pd.DataFrame) -> pd.DataFrame:
    """T3 / S2 summary: CLS AUC of each encoder on the six geometric patterns, with the fine-tuned CNN ceiling."""
    return matrix(results, GEOMETRIC, ("cls", "finetuned"))


def t4_iso_blur(results: pd.DataFrame) -> pd.DataFrame:
    """T4: isotropic blur, every encoder's CLS (the frozen ResNet control included), raw and fine-tuned baselines."""
    return matrix(results, ISO_BLUR, T4_POOLS)


def t5_directional(results: pd.DataFrame) -> pd.DataFrame:
    """T5: the representative directional-blur cell (L 21, P 64), cranio-caudal and lateral, CLS."""
    return matrix(results, DIRECTIONAL_REPRESENTATIVE, ("cls",))


def t6_pathology(results: pd.DataFrame) -> pd.DataFrame:
    """T6: reticular (fine 32, coarse 64) and ground glass (64), CLS."""
    return matrix(results, PATHOLOGY, ("cls",))


def t8_raw(results: pd.DataFrame, perturbations: Sequence[str] = RAW_SLICE) -> pd.DataFrame:
    """T8: rows are perturbations, columns ``"<dataset> <baseline>"`` for raw-global and raw-oracle."""
    _check_columns(results, ("model", "dataset", "pool", "perturbation", "auc"), "T8")
    chosen = results[results["pool"].isin(RAW_POOLS) & results["perturbation"].isin(perturbations)].copy()
    if chosen.empty:
        return pd.DataFrame(columns=["perturbation"])
    _check_unique(chosen, ("dataset", "pool", "perturbation"), "T8")
    datasets = _first_seen(chosen["dataset"])
    chosen["column"] = [f"{d} {m}" for d, m in zip(chosen["dataset"], chosen["model"], strict=True)]
    wide = chosen.pivot(index="perturbation", columns="column", values="auc")
    models = [m for m in ("raw-global", "raw-oracle") if m in set(chosen["model"])]
    columns = [f"{d} {m}" for d in datasets for m in models if f"{d} {m}" in wide.columns]
    order = [p for p in perturbations if p in wide.index]
    return wide.loc[order, columns].reset_index().rename_axis(columns=None)


def pooling_comparison(results: pd.DataFrame, perturbations: Sequence[str] | None = None) -> pd.DataFrame:
    """T7 (the paper's slice) or S5 (``perturbations=None``: every cell): CLS, patch-mean and patch-local AUC side
    by side per (dataset, perturbation, model), with patch-local minus CLS."""
    _check_columns(results, ("model", "dataset", "pool", "perturbation", "auc"), "pooling comparison")
    chosen = results[results["pool"].isin(ENCODER_POOLS)]
    if perturbations is not None:
        chosen = chosen[chosen["perturbation"].isin(perturbations)]
    if chosen.empty:
        return pd.DataFrame(columns=["dataset", "perturbation", "model", *ENCODER_POOLS, GAP])
    _check_unique(chosen, ("model", "dataset", "pool", "perturbation"), "pooling comparison")
    keys = ["dataset", "perturbation", "model"]
    wide = chosen.pivot(index=keys, columns="pool", values="auc").reset_index().rename_axis(columns=None)
    for pool in ENCODER_POOLS:
        if pool not in wide.columns:
            wide[pool] = np.nan
    wide[GAP] = wide["patch_local"] - wide["cls"]
    order = list(perturbations) if perturbations is not None else _first_seen(chosen["perturbation"])
    wide["_d"] = _ordered(wide, "dataset", _first_seen(chosen["dataset"]))
    wide["_p"] = _ordered(wide, "perturbation", order)
    wide["_m"] = _ordered(wide, "model", _first_seen(chosen["model"]))
    wide = wide.sort_values(["_d", "_p", "_m"]).drop(columns=["_d", "_p", "_m"])
    return wide[[*keys, *ENCODER_POOLS, GAP]].reset_index(drop=True)


def pooling_gap_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean, min and max of patch-local minus CLS over every (perturbation, dataset) cell with both."""
    table = pooling_comparison(results).dropna(subset=[GAP])
    if table.empty:
        return pd.DataFrame(columns=["model", "mean_gap", "min_gap", "max_gap", "cells"])
    grouped = table.groupby("model", sort=False)[GAP]
    out = grouped.agg(["mean", "min", "max", "count"]).reset_index()
    return out.rename(columns={"mean": "mean_gap", "min": "min_gap", "max": "max_gap", "count": "cells"})


def long_slice(results: pd.DataFrame, perturbations: Sequence[str], pools: Sequence[str]) -> pd.DataFrame:
    """Rows of the long frame for the given perturbations and pools, in their order (supplementary, with CIs)."""
    chosen = results[results["perturbation"].isin(perturbations) & results["pool"].isin(pools)].copy()
    chosen["_p"] = _ordered(chosen, "perturbation", perturbations)
    chosen["_d"] = _ordered(chosen, "dataset", _first_seen(results["dataset"]))
    chosen["_m"] = _ordered(chosen, "model", _first_seen(results["model"]))
    chosen = chosen.sort_values(["_m", "_d", "_p"], kind="stable").drop(columns=["_p", "_d", "_m"])
    return chosen.reset_index(drop=True)


def directional_sweep(results: pd.DataFrame, pools: Sequence[str] = ("cls",)) -> pd.DataFrame:
    """S3: every directional-blur cell as (model, dataset, pool, direction, length, patch, auc, ci)."""
    names = [n for n in _first_seen(results["perturbation"]) if get_condition(n).family is Family.DIRECTIONAL_BLUR]
    chosen = long_slice(results, names, pools)
    if chosen.empty:
        return pd.DataFrame(columns=["model", "dataset", "pool", "direction", "length", "patch", "auc"])
    conditions = [get_condition(n) for n in chosen["perturbation"]]
    chosen.insert(3, "direction", ["cranio" if c.angle_deg == 90.0 else "lateral" for c in conditions])
    chosen.insert(4, "length", [c.length for c in conditions])
    chosen.insert(5, "patch", [c.patch for c in conditions])
    chosen = chosen.sort_values(["direction", "length", "patch"], kind="stable")
    chosen["_m"] = _ordered(chosen, "model", _first_seen(results["model"]))
    chosen["_d"] = _ordered(chosen, "dataset", _first_seen(results["dataset"]))
    chosen = chosen.sort_values(["_m", "_d", "pool"], kind="stable").drop(columns=["_m", "_d"])
    keep = ["model", "dataset", "pool", "direction", "length", "patch", "perturbation", "auc", "ci_low", "ci_high"]
    return chosen[keep].reset_index(drop=True)


# ---------------------------------------------------------------- disease tables (T2, T9)


def t2_disease(cells: pd.DataFrame) -> pd.DataFrame:
    """T2: rows (task, model); per dataset the AUC with its CI and the F1 at the out-of-fold threshold."""
    _check_columns(cells, ("task", "model", "dataset", "auc", "ci_low", "ci_high", "f1"), "T2")
    if cells.empty:
        return pd.DataFrame(columns=["task", "model"])
    _check_unique(cells, ("task", "model", "dataset"), "T2")
    rows = cells[["task", "model"]].drop_duplicates()
    out = rows.copy()
    for dataset in _first_seen(cells["dataset"]):
        part = cells[cells["dataset"] == dataset][["task", "model", "auc", "ci_low", "ci_high", "f1"]]
        part = part.rename(columns={c: f"{dataset} {c}" for c in ("auc", "ci_low", "ci_high", "f1")})
        out = out.merge(part, on=["task", "model"], how="left")
    return out.reset_index(drop=True)


def t9_summary(cells: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """T9: per model, the mean delta AUC (perturbed minus clean), BH-significant cells, total cells, percent."""
    _check_columns(cells, ("model", "delta", "significant"), "T9")
    if cells.empty:
        return pd.DataFrame(columns=["model", "mean_delta_auc", significant_column(alpha), "total_cells"])
    grouped = cells.groupby("model", sort=False)
    out = pd.DataFrame(
        {
            "mean_delta_auc": grouped["delta"].mean(),
            "min_delta_auc": grouped["delta"].min(),
            "max_delta_auc": grouped["delta"].max(),
            significant_column(alpha): grouped["significant"].sum().astype("int64"),
            "total_cells": grouped.size().astype("int64"),
        }
    ).reset_index()
    out["percent_significant"] = 100.0 * out[significant_column(alpha)] / out["total_cells"]
    return out


# ---------------------------------------------------------------- which conditions each table lacks


def coverage(tables: Sequence[PaperTable], present: Iterable[str]) -> pd.DataFrame:
    """Per table: the conditions it wants, those the run has, and those it lacks (never filled in)."""
    have = set(present)
    rows = []
    for spec in tables:
        rows.append(
            {
                "table": f"{spec.id} {spec.title}",
                "wanted": len(spec.conditions),
                "present": ", ".join(c for c in spec.conditions if c in have) or "-",
                "absent": ", ".join(c for c in spec.conditions if c not in have) or "-",
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- reported vs reproduced (study runs only)


def reported_vs_reproduced(table: str, reproduced: pd.DataFrame, run: RunKind) -> pd.DataFrame:
    """The paper's cells beside this run's (``reference.compare``); refuses demo and smoke runs."""
    spec = TABLES[table]
    return compare(reproduced, table, spec.keys, spec.value, run)


def heatmap_frame(results: pd.DataFrame, pools: Sequence[str]) -> pd.DataFrame:
    """AUC with rows ``"<model> · <pool> · <dataset>"`` (parts that tell no row apart left out), columns
    perturbations in first-seen order."""
    chosen = results[results["pool"].isin(pools)]
    if chosen.empty:
        return pd.DataFrame()
    _check_unique(chosen, ("model", "dataset", "pool", "perturbation"), "heatmap")
    # The pool is named only where a model has several in the map; the dataset only where there are several.
    parts = ["model"]
    if chosen.groupby("model")["pool"].nunique().max() > 1:
        parts.append("pool")
    if chosen["dataset"].nunique() > 1:
        parts.append("dataset")
    labels = chosen[parts].astype(str).agg(" · ".join, axis=1)
    frame = chosen.assign(row=labels)
    wide = frame.pivot(index="row", columns="perturbation", values="auc")
    rows = _first_seen(labels)
    columns = [p for p in _first_seen(results["perturbation"]) if p in wide.columns]
    return wide.loc[rows, columns]
