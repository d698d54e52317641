"""The controlled-stimulus detection experiment: can a linear probe tell a clean image from its perturbed twin?

Paired design (SPEC section 2): every image of the detection set gives one clean and one perturbed row, so the
classes are balanced 50:50 and the two rows of an image share a CV group (they never straddle folds). Train and test
rows come from the cohort's patient-disjoint split. One probe per (source, cohort, condition, pool); every AUC is
reported with its stratified bootstrap CI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesionsignal.probe import ProbeConfig, ProbeResult, fit_probe
from lesionsignal.stats import bootstrap_auc_ci

RESULT_COLUMNS = (
    "model",
    "dataset",
    "pool",
    "perturbation",
    "auc",
    "ci_low",
    "ci_high",
    "f1",
    "f1_optimistic",
    "best_c",
    "n_train",
    "n_test",
)


class DetectionError(ValueError):
    """The arrays of one condition cannot form a paired design: the message names the source and condition."""


@dataclass(frozen=True)
class PairedDesign:
    x_train: np.ndarray
    y_train: np.ndarray
    groups_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    groups_test: np.ndarray


def paired_design(
    clean: np.ndarray, perturbed: np.ndarray, image_ids: Sequence[str], splits: Mapping[str, str]
) -> PairedDesign:
    """Stack clean (label 0) and perturbed (label 1) rows; the split of each image comes from the manifest."""
    if clean.shape != perturbed.shape:
        raise DetectionError(f"clean {clean.shape} and perturbed {perturbed.shape} arrays differ in shape")
    ids = np.asarray(image_ids)
    if len(ids) != clean.shape[0]:
        raise DetectionError(f"{len(ids)} image ids for {clean.shape[0]} rows")
    unknown = [i for i in ids if i not in splits]
    if unknown:
        raise DetectionError(f"images without a split in the manifest: {unknown[:5]}")
    split = np.asarray([splits[i] for i in ids])
    parts = {}
    for name in ("train", "test"):
        mask = split == name
        if not mask.any():
            raise DetectionError(f"no {name} images in the detection set")
        x = np.concatenate([clean[mask], perturbed[mask]])
        y = np.concatenate([np.zeros(mask.sum(), np.int64), np.ones(mask.sum(), np.int64)])
        parts[name] = (x, y, np.concatenate([ids[mask], ids[mask]]))
    return PairedDesign(*parts["train"], *parts["test"])


def probe_cell(design: PairedDesign, config: ProbeConfig, n_boot: int) -> tuple[ProbeResult, dict[str, float]]:
    """Fit the probe of SPEC section 4 on one design and summarise it with its bootstrap CI."""
    result = fit_probe(design.x_train, design.y_train, design.groups_train, design.x_test, design.y_test, config)
    interval = bootstrap_auc_ci(result.test_labels, result.test_scores, n_boot=n_boot, seed=config.seed)
    summary = {
        "auc": result.auc,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "f1": result.f1,
        "f1_optimistic": result.f1_at_test_optimal,
        "best_c": result.best_c,
        "n_train": result.n_train,
        "n_test": result.n_test,
    }
    return result, summary


@dataclass(frozen=True)
class CellSpec:
    model: str
    dataset: str
    pool: str
    perturbation: str
    clean_key: str  # array names in the assembled condition file
    perturbed_key: str


def cells_for(model: str, dataset: str, perturbation: str, pools: Iterable[str]) -> list[CellSpec]:
    return [CellSpec(model, dataset, p, perturbation, f"clean_{p}", f"perturbed_{p}") for p in pools]


def run_cells(
    cells: Sequence[CellSpec],
    load: Callable[[CellSpec], Mapping[str, np.ndarray]],
    splits: Mapping[str, Mapping[str, str]],
    config: ProbeConfig,
    n_boot: int,
    progress: bool = True,
) -> pd.DataFrame:
    """Probe every cell; ``load`` gives a cell's arrays, ``splits[dataset]`` maps image id to split."""
    rows = []
    iterator = cells
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(cells, desc="probes", unit="probe")
    for cell in iterator:
        arrays = load(cell)
        try:
            design = paired_design(
                arrays[cell.clean_key], arrays[cell.perturbed_key], arrays["image_ids"], splits[cell.dataset]
            )
        except (DetectionError, KeyError) as err:
            raise DetectionError(f"{cell.model} / {cell.dataset} / {cell.perturbation} / {cell.pool}: {err}") from err
        _, summary = probe_cell(design, config, n_boot)
        rows.append(
            {"model": cell.model, "dataset": cell.dataset, "pool": cell.pool, "perturbation": cell.perturbation}
        )
        rows[-1].update(summary)
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def pooling_gaps(results: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean, min and max of patch-local AUC minus CLS AUC over its (perturbation, dataset) cells."""
    wide = results.pivot_table(index=["model", "dataset", "perturbation"], columns="pool", values="auc")
    if not {"cls", "patch_local"} <= set(wide.columns):
        raise DetectionError("pooling gaps need both cls and patch_local results")
    gap = (wide["patch_local"] - wide["cls"]).rename("gap").reset_index()
    summary = gap.groupby("model")["gap"].agg(["mean", "min", "max", "count"]).reset_index()
    return summary.rename(columns={"mean": "mean_gap", "min": "min_gap", "max": "max_gap", "count": "cells"})
