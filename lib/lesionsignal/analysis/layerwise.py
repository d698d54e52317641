"""Layer-wise probing: the linear probe of protocol section 4 on the three pools read after every block of the same
forward pass, so a curve of AUC against depth shows at which block, if any, the global token stops carrying a
stimulus that the local tokens still hold.

Each (model, dataset, condition, pool, block) is one paired detection design (``analysis.detection``): the clean
and perturbed views of the same images, folds grouped by image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from lesionsignal.analysis.detection import PairedDesign, probe_cell
from lesionsignal.analysis.probe import ProbeConfig

LAYER_COLUMNS = (
    "model",
    "dataset",
    "perturbation",
    "pool",
    "layer",
    "depth",
    "auc",
    "ci_low",
    "ci_high",
    "best_c",
    "n_train",
    "n_test",
)
PEAK_COLUMNS = ("model", "dataset", "perturbation", "pool", "peak_layer", "peak_auc", "last_layer", "last_auc", "drop")


@dataclass(frozen=True)
class LayerCell:
    model: str
    dataset: str
    perturbation: str
    pool: str
    layer: int  # 1-based block index
    depth: int  # blocks in the model


def layer_probes(cells: Iterable[tuple[LayerCell, PairedDesign]], config: ProbeConfig, n_boot: int) -> pd.DataFrame:
    """One probe per cell, in the order given."""
    rows = []
    for cell, design in cells:
        _, summary = probe_cell(design, config, n_boot)
        rows.append(
            {
                "model": cell.model,
                "dataset": cell.dataset,
                "perturbation": cell.perturbation,
                "pool": cell.pool,
                "layer": cell.layer,
                "depth": cell.depth,
                **{k: summary[k] for k in ("auc", "ci_low", "ci_high", "best_c", "n_train", "n_test")},
            }
        )
    return pd.DataFrame(rows, columns=list(LAYER_COLUMNS))


def peak_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """Per curve: the block of highest AUC (the earliest on a tie), the last block's AUC, and peak - last (how much
    of what the curve held at its best the final block gives up)."""
    rows = []
    for keys, curve in frame.groupby(["model", "dataset", "perturbation", "pool"], sort=False):
        ordered = curve.sort_values("layer", kind="stable")
        best = ordered.loc[ordered["auc"].idxmax()]
        last = ordered.iloc[-1]
        peak = {"peak_layer": int(best["layer"]), "peak_auc": float(best["auc"])}
        end = {"last_layer": int(last["layer"]), "last_auc": float(last["auc"])}
        rows.append(
            {
                **dict(zip(PEAK_COLUMNS[:4], keys, strict=True)),
                **peak,
                **end,
                "drop": peak["peak_auc"] - end["last_auc"],
            }
        )
    return pd.DataFrame(rows, columns=list(PEAK_COLUMNS))
