"""The native-resolution control: stimuli drawn into each encoder's own input resolution (the film is brought to the
model's size first, the patch drawn after), so a P px stimulus is P model pixels and P / patch token cells wide.

The footprint table says, per encoder and condition, how big the stimulus is in model pixels and in patches, and
whether each pool's AUC is at the floor: its 95 % CI reaches 0.5, so the probe cannot be told from chance.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

CHANCE = 0.5
FOOTPRINT_COLUMNS = (
    "model",
    "dataset",
    "perturbation",
    "pool",
    "model_px",
    "patches",
    "sub_patch",
    "auc",
    "ci_low",
    "ci_high",
    "at_floor",
)


def footprint_table(results: pd.DataFrame, patch_px: Mapping[str, int], sides: Mapping[str, int]) -> pd.DataFrame:
    """Probe rows (model, dataset, pool, perturbation, auc, ci_low, ci_high) with each stimulus's footprint:
    ``sides[condition]`` model pixels, ``patch_px[model]`` pixels per token cell."""
    missing = sorted(set(results["model"]) - set(patch_px))
    if missing:
        raise ValueError(f"no patch size for models {missing}")
    frame = results.loc[:, ["model", "dataset", "perturbation", "pool", "auc", "ci_low", "ci_high"]].copy()
    frame["model_px"] = frame["perturbation"].map(sides).astype(int)
    frame["patches"] = frame["model_px"] / frame["model"].map(patch_px)
    frame["sub_patch"] = frame["patches"] < 1
    frame["at_floor"] = frame["ci_low"] <= CHANCE
    return frame.sort_values(["model", "dataset", "pool", "patches", "perturbation"], kind="stable")[
        list(FOOTPRINT_COLUMNS)
    ].reset_index(drop=True)


def sub_patch_floor(table: pd.DataFrame) -> pd.DataFrame:
    """Per model and dataset: how many sub-patch stimuli there are and how many sit at the floor in every pool."""
    rows = []
    for (model, dataset), own in table.groupby(["model", "dataset"], sort=False):
        small = own.loc[own["sub_patch"]]
        every = small.groupby("perturbation")["at_floor"].all()
        rows.append(
            {
                "model": model,
                "dataset": dataset,
                "sub_patch_conditions": int(every.size),
                "at_floor_in_every_pool": int(every.sum()),
                "conditions": ", ".join(sorted(every.index[every])),
            }
        )
    return pd.DataFrame(rows)
