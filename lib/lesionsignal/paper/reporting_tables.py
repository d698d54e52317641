"""Tables of the clinical-reader reporting, shaped from the stages' frames: operating points beside the AUC tables,
sensitivity gaps, size strata with their detectable differences, box jitter, and the two ChestX-Det10 splits.

Every function takes a stage frame and returns the frame a notebook writes; values stay numeric (intervals as
their own columns), so the CSVs read back as numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

SENSITIVITY_COLUMNS = ("sensitivity", "sensitivity_low", "sensitivity_high")
PREDICTIVE_COLUMNS = ("ppv", "ppv_low", "ppv_high", "npv", "npv_low", "npv_high")


class ReportingTableError(ValueError):
    """A frame a reporting table cannot be made from; the message names the missing column or value."""


def _check(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportingTableError(f"{what}: missing columns {missing}; has {list(frame.columns)}")


def at_specificity(frame: pd.DataFrame, target: float) -> pd.DataFrame:
    """The rows at one target specificity (as the stage wrote it), without the target column."""
    _check(frame, ("target_specificity",), "operating points")
    chosen = frame.loc[(frame["target_specificity"] - target).abs() < 1e-9]
    return chosen.drop(columns="target_specificity").reset_index(drop=True)


def operating_table(frame: pd.DataFrame, keys: Sequence[str], conditions: Sequence[str] | None = None) -> pd.DataFrame:
    """Each probe's operating points at every target: the training threshold's test sensitivity with its interval,
    test specificity, PPV and NPV at the run's prevalence, and the optimistic (test-chosen) sensitivity."""
    columns = [
        *keys,
        "target_specificity",
        *SENSITIVITY_COLUMNS,
        "specificity",
        "prevalence",
        *PREDICTIVE_COLUMNS,
        "sensitivity_optimistic",
        "n_test_positive",
        "n_test_negative",
    ]
    _check(frame, columns, "operating points")
    chosen = frame if conditions is None else frame.loc[frame["perturbation"].isin(conditions)]
    return chosen[columns].reset_index(drop=True)


def sensitivity_beside_auc(auc: pd.DataFrame, operating: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """AUC with its interval beside the sensitivity at each target specificity (one column group per target), for
    the probes that have operating points (not the fine-tuned CNN's rows)."""
    _check(auc, (*keys, "auc", "ci_low", "ci_high"), "AUC rows")
    out = auc[[*keys, "auc", "ci_low", "ci_high"]].copy()
    for target in sorted(operating["target_specificity"].unique()):
        part = at_specificity(operating, target)[[*keys, *SENSITIVITY_COLUMNS]]
        label = f"{round(100 * target)}"
        part = part.rename(columns={c: c.replace("sensitivity", f"sens_at_spec{label}") for c in SENSITIVITY_COLUMNS})
        out = out.merge(part, on=list(keys), how="inner")  # only the probes that have operating points
    return out


def gap_summary(gaps: pd.DataFrame, target: float, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Per model: the mean patch-local minus CLS sensitivity gap at ``target``, and how many cells' paired intervals
    lie above 0, below 0, or include it."""
    part = at_specificity(gaps, target)
    columns = [*by, "mean_gap", "cells", "above_zero", "below_zero", "include_zero"]
    rows = []
    for key, group in part.groupby(list(by), sort=False):
        above, below = int((group["gap_low"] > 0).sum()), int((group["gap_high"] < 0).sum())
        counts = {"cells": len(group), "above_zero": above, "below_zero": below}
        rows.append((*key, float(group["gap"].mean()), *counts.values(), len(group) - above - below))
    return pd.DataFrame(rows, columns=columns)


def strata_table(strata: pd.DataFrame, schemes: Sequence[str] | None = None) -> pd.DataFrame:
    """The size strata of the chosen schemes (all when None), in the stage's order."""
    _check(strata, ("scheme", "stratum", "n_positive", "auc", "detectable_vs_chance"), "size strata")
    chosen = strata if schemes is None else strata.loc[strata["scheme"].isin(schemes)]
    return chosen.reset_index(drop=True)


def jitter_table(jitter: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """Patch-local AUC at each jitter, with the box-level CLS AUC of the same rows beside it (CLS does not move)."""
    _check(jitter, ("cohort", "model", "lesion_class", "jitter", "auc"), "jitter")
    cls = fits.loc[(fits["level"] == "box") & (fits["pool"] == "cls"), ["cohort", "model", "lesion_class", "auc"]]
    return jitter.merge(cls.rename(columns={"auc": "auc_cls_unjittered"}), on=["cohort", "model", "lesion_class"])


def jitter_drop(jitter: pd.DataFrame) -> pd.DataFrame:
    """Per (cohort, model, class): the patch-local AUC unjittered and at the largest jitter, and the change."""
    rows = []
    for (cohort, model, name), part in jitter.groupby(["cohort", "model", "lesion_class"], sort=False):
        ordered = part.sort_values("jitter")
        first, last = ordered.iloc[0], ordered.iloc[-1]
        rows.append(
            {
                "cohort": cohort,
                "model": model,
                "lesion_class": name,
                "auc_at_jitter_0": float(first["auc"]) if first["jitter"] == 0 else float("nan"),
                "largest_jitter": float(last["jitter"]),
                "largest_jitter_px": float(last["jitter_px"]),
                "auc_at_largest": float(last["auc"]),
                "change": float(last["auc"] - first["auc"]) if first["jitter"] == 0 else float("nan"),
            }
        )
    return pd.DataFrame(rows)
