"""Embedding separation between clean and perturbed samples (protocol section 8): silhouette, Mahalanobis, UMAP.

These ask, without a probe, how far a perturbation moves the embedding cloud: the cosine silhouette of the two
groups, the distance between their centroids under a shrunk pooled covariance, and UMAP pictures. Labels are
0 = clean and 1 = perturbed throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.linalg
from scipy.stats import spearmanr
from sklearn.metrics import silhouette_score

from lesionsignal.core.files import load_arrays
from lesionsignal.core.parallel import one_thread
from lesionsignal.core.progress import widgetless_tqdm

CLEAN = 0
PERTURBED = 1


class SeparationError(ValueError):
    """Input a separation measure cannot be computed from; the message names the argument."""


@dataclass(frozen=True)
class Separation:
    silhouette: float  # cosine, on a stratified subsample
    mahalanobis: float  # centroid distance under the shrunk pooled covariance, on every row
    n: int  # rows used for the Mahalanobis distance (clean + perturbed)


def _matrix(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SeparationError(f"{name}: expected a non-empty 2-D array (rows x features), got shape {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise SeparationError(f"{name}: row {int(np.flatnonzero(~finite)[0])} has a NaN or infinite value")
    return arr


def _labels(labels: object, n: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size != n:
        raise SeparationError(f"{name}: expected {n} labels in a 1-D array, got shape {arr.shape}")
    return arr


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise SeparationError(f"{name}: must be a positive integer, got {value!r}")


def stratified_subsample(labels: object, max_points: int, seed: int) -> np.ndarray:
    """Sorted row indices, at most ``max_points``, keeping each label's share (largest-remainder rounding).

    Every row is kept when there are no more than ``max_points``; draws use ``default_rng(seed)`` label by label
    in sorted label order.
    """
    _check_positive_int(max_points, "max_points")
    values = np.asarray(labels)
    if values.ndim != 1:
        raise SeparationError(f"labels: expected a 1-D array, got shape {values.shape}")
    n = values.size
    if n <= max_points:
        return np.arange(n)
    classes, counts = np.unique(values, return_counts=True)
    quotas = counts * max_points / n
    take = np.floor(quotas).astype(np.int64)
    leftover = max_points - int(take.sum())
    take[np.argsort(-(quotas - take), kind="stable")[:leftover]] += 1
    if (take == 0).any():
        rare = classes[take == 0][0]
        raise SeparationError(f"labels: class {rare!r} is too rare to appear in a subsample of {max_points}")
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(values == c), size=int(k), replace=False) for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picks))


def silhouette_cosine(x: object, labels: object, max_points: int = 5000, seed: int = 42) -> float:
    """Mean cosine silhouette of the labelled groups on a stratified, seeded subsample of at most max_points."""
    arr = _matrix(x, "x")
    groups = _labels(labels, arr.shape[0])
    if np.unique(groups).size < 2:
        raise SeparationError("labels: need at least two groups for a silhouette")
    zero = np.linalg.norm(arr, axis=1) == 0
    if zero.any():
        raise SeparationError(f"x: row {int(np.flatnonzero(zero)[0])} is all zeros; its cosine distance is undefined")
    rows = stratified_subsample(groups, max_points, seed)
    return float(silhouette_score(arr[rows], groups[rows], metric="cosine"))


def shrunk_covariance(x_a: object, x_b: object, shrink: float = 0.1) -> np.ndarray:
    """Pooled within-group covariance S shrunk towards a scaled identity: (1 - shrink) S + shrink (tr S / d) I."""
    a = _matrix(x_a, "x_a")
    b = _matrix(x_b, "x_b")
    if a.shape[1] != b.shape[1]:
        raise SeparationError(f"x_a, x_b: feature counts differ ({a.shape[1]} vs {b.shape[1]})")
    if a.shape[0] + b.shape[0] <= 2:
        raise SeparationError("x_a, x_b: need more than two rows in all to estimate a pooled covariance")
    if not 0.0 <= shrink <= 1.0:
        raise SeparationError(f"shrink: must be in [0, 1], got {shrink}")
    centred = np.concatenate([a - a.mean(axis=0), b - b.mean(axis=0)])
    pooled = centred.T @ centred / (centred.shape[0] - 2)
    d = pooled.shape[0]
    return (1.0 - shrink) * pooled + shrink * (np.trace(pooled) / d) * np.eye(d)


def mahalanobis_distance(x_a: object, x_b: object, shrink: float = 0.1) -> float:
    """Distance between the group centroids under the shrunk pooled covariance (a linear solve, no inverse)."""
    covariance = shrunk_covariance(x_a, x_b, shrink)
    diff = np.asarray(x_a, dtype=np.float64).mean(axis=0) - np.asarray(x_b, dtype=np.float64).mean(axis=0)
    try:
        solved = scipy.linalg.solve(covariance, diff, assume_a="pos")
    except np.linalg.LinAlgError as error:
        raise SeparationError(
            f"x_a, x_b: the shrunk pooled covariance (shrink={shrink}) is not positive definite: {error}"
        ) from error
    return math.sqrt(max(float(diff @ solved), 0.0))


def separation(
    x_clean: object, x_perturbed: object, *, max_points: int = 5000, seed: int = 42, shrink: float = 0.1
) -> Separation:
    """Silhouette (clean vs perturbed, subsampled) and Mahalanobis distance (all rows) of one cell."""
    clean = _matrix(x_clean, "x_clean")
    perturbed = _matrix(x_perturbed, "x_perturbed")
    if clean.shape[1] != perturbed.shape[1]:
        raise SeparationError(f"x_clean, x_perturbed: feature counts differ ({clean.shape[1]} vs {perturbed.shape[1]})")
    stacked = np.concatenate([clean, perturbed])
    labels = np.repeat([CLEAN, PERTURBED], [clean.shape[0], perturbed.shape[0]])
    return Separation(
        silhouette=silhouette_cosine(stacked, labels, max_points=max_points, seed=seed),
        mahalanobis=mahalanobis_distance(clean, perturbed, shrink=shrink),
        n=int(stacked.shape[0]),
    )


def umap_embedding(
    x: object,
    *,
    n_neighbors: int = 30,
    min_dist: float = 0.1,
    metric: str = "cosine",
    seed: int = 42,
    max_points: int = 10000,
    labels: object | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """2-D UMAP coordinates (float32) of a seeded subsample and the sorted row indices of that subsample.

    With ``labels`` the subsample is stratified by label; without, it is uniform. A fixed random_state makes
    umap-learn deterministic (and single-threaded).
    """
    arr = _matrix(x, "x")
    _check_positive_int(max_points, "max_points")
    _check_positive_int(n_neighbors, "n_neighbors")
    n = arr.shape[0]
    if labels is not None:
        rows = stratified_subsample(_labels(labels, n), max_points, seed)
    elif n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    else:
        rows = np.arange(n)
    if rows.size <= n_neighbors:
        raise SeparationError(f"x: {rows.size} points is too few for n_neighbors={n_neighbors}")
    with widgetless_tqdm():
        import umap  # slow to import (numba): only the figures need it

    reducer = umap.UMAP(
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric=metric,
        n_components=2,
        random_state=seed,
        transform_seed=seed,
        n_jobs=1,
    )
    coords = np.asarray(reducer.fit_transform(arr[rows]), dtype=np.float32)
    return coords, rows


def rank_agreement(separations: Sequence[float], aucs: Sequence[float]) -> tuple[float, float]:
    """Spearman rho and its two-sided p between a separation measure and the probe AUC across cells."""
    sep = np.asarray(separations, dtype=np.float64)
    auc = np.asarray(aucs, dtype=np.float64)
    if sep.ndim != 1 or sep.shape != auc.shape:
        raise SeparationError(f"separations, aucs: need two 1-D sequences of one length, got {sep.shape}, {auc.shape}")
    if sep.size < 3:
        raise SeparationError(f"separations, aucs: need at least 3 cells for a rank correlation, got {sep.size}")
    for name, values in (("separations", sep), ("aucs", auc)):
        if not np.isfinite(values).all():
            raise SeparationError(f"{name}: entry {int(np.flatnonzero(~np.isfinite(values))[0])} is not finite")
        if np.ptp(values) == 0:
            raise SeparationError(f"{name}: all values are equal; the rank correlation is undefined")
    result = spearmanr(sep, auc)
    return float(result.statistic), float(result.pvalue)


# ------------------------------------------------------------------------- tables of many cells, and their ranks

CELL_KEYS = ("model", "dataset", "pool", "perturbation")
MEASURES = ("silhouette", "mahalanobis")


def umap_conditions(
    chosen: Sequence[str], available: Sequence[str], defaults: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(conditions to draw, conditions asked for but not extracted): ``chosen``, or ``defaults`` when empty.

    With nothing chosen and neither default extracted, the first available condition is drawn.
    """
    have = list(available)
    if chosen:
        return tuple(c for c in chosen if c in have), tuple(c for c in chosen if c not in have)
    drawn = tuple(c for c in defaults if c in have)
    return drawn or tuple(have[:1]), ()


def separation_row(
    labels: dict[str, str], x_clean: object, x_perturbed: object, *, max_points: int, seed: int, shrink: float
) -> dict[str, object]:
    """One table row: the cell's ``labels`` (CELL_KEYS) with its silhouette, Mahalanobis distance and size."""
    missing = [key for key in CELL_KEYS if key not in labels]
    if missing:
        raise SeparationError(f"labels: missing cell keys {missing}")
    where = ", ".join(f"{k}={labels[k]}" for k in CELL_KEYS)
    try:
        result = separation(x_clean, x_perturbed, max_points=max_points, seed=seed, shrink=shrink)
    except SeparationError as err:
        raise SeparationError(f"{where}: {err}") from err
    return {**{k: labels[k] for k in CELL_KEYS}, **{m: getattr(result, m) for m in MEASURES}, "n": result.n}


def rank_agreement_table(
    separations: pd.DataFrame, aucs: pd.DataFrame, measures: Sequence[str] = MEASURES
) -> pd.DataFrame:
    """Spearman rho (and p) between each separation measure and the probe AUC of the same cells: over all cells,
    then per pool. A scope with fewer than 3 cells, or constant values, gets NaN and a note saying why."""
    for name, frame, columns in (
        ("separations", separations, (*CELL_KEYS, *measures)),
        ("aucs", aucs, (*CELL_KEYS, "auc")),
    ):
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise SeparationError(f"{name}: missing columns {absent}; has {list(frame.columns)}")
    merged = separations.merge(aucs[[*CELL_KEYS, "auc"]], on=list(CELL_KEYS), how="left", validate="one_to_one")
    unmatched = merged["auc"].isna()
    if unmatched.any():
        first = dict(merged.loc[unmatched, list(CELL_KEYS)].iloc[0])
        raise SeparationError(f"aucs: no probe AUC for {int(unmatched.sum())} separation cell(s), e.g. {first}")
    scopes = [("all pools", merged)] + [(f"pool {p}", part) for p, part in merged.groupby("pool", sort=False)]
    rows = []
    for scope, part in scopes:
        for measure in measures:
            sep = part[measure].to_numpy(dtype=np.float64)
            auc = part["auc"].to_numpy(dtype=np.float64)
            note = ""
            if sep.size < 3:
                note = f"{sep.size} cell(s): a rank correlation needs at least 3"
            elif np.ptp(sep) == 0 or np.ptp(auc) == 0:
                note = "constant values: the rank correlation is undefined"
            rho, p = rank_agreement(sep, auc) if not note else (math.nan, math.nan)
            row = {"scope": scope, "measure": measure, "spearman_rho": rho, "p": p, "n_cells": int(sep.size)}
            rows.append({**row, "note": note})
    return pd.DataFrame(rows)


def separation_table(
    files: Mapping[tuple[str, str, str], Path], pools: Sequence[str], *, max_points: int, seed: int, shrink: float
) -> pd.DataFrame:
    """S7: one row per (model, dataset, condition) file and pool. One thread: the numbers do not depend on the
    core count (and many small problems run fastest so)."""
    rows = []
    with one_thread():
        for (model, dataset, condition), path in files.items():
            arrays = load_arrays(path)
            for pool in pools:
                labels = {"model": model, "dataset": dataset, "pool": str(pool), "perturbation": condition}
                clean, perturbed = arrays[f"clean_{pool}"], arrays[f"perturbed_{pool}"]
                rows.append(separation_row(labels, clean, perturbed, max_points=max_points, seed=seed, shrink=shrink))
    return pd.DataFrame(rows)


def umap_panels(
    files: Mapping[str, Path], pools: Sequence[str], *, n_neighbors: int, min_dist: float, seed: int, max_points: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(title, 2-D coordinates, labels) of the clean and perturbed vectors of each condition file and pool."""
    panels = []
    for name, path in files.items():
        arrays = load_arrays(path)
        for pool in pools:
            clean, perturbed = arrays[f"clean_{pool}"], arrays[f"perturbed_{pool}"]
            labels = np.repeat([CLEAN, PERTURBED], [len(clean), len(perturbed)])
            coords, rows_used = umap_embedding(
                np.concatenate([clean, perturbed]),
                n_neighbors=n_neighbors,
                min_dist=min_dist,
                seed=seed,
                max_points=max_points,
                labels=labels,
            )
            panels.append((f"{name} / {pool}", coords, labels[rows_used]))
    return panels
