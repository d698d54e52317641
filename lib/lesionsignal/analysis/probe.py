"""The linear probe of protocol section 4: standardise, class-balanced L2 logistic regression, C by grouped CV.

Two solvers give the same fit. SKLEARN is the plain scikit-learn loop (one LogisticRegression per C and fold).
FAST solves every (C, fold) problem and every refit at once with a batched truncated-Newton method in torch
(`probe_solver`: one standardised matrix for all problems, a Gram preconditioner when rows >= features, the
rows' span when rows < features). Both use the same folds, which `grouped_stratified_folds` computes as
scikit-learn's StratifiedGroupKFold does, in a fraction of its time.
"""

from __future__ import annotations

import enum
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

from lesionsignal.analysis.probe_solver import Parts, solve
from lesionsignal.analysis.stats import as_binary_labels, auc
from lesionsignal.core.validate import FieldError


class ProbeError(ValueError):
    """Probe input that cannot be fitted; the message names the argument, and the row or column."""


class ProbeConvergenceWarning(UserWarning):
    """The FAST solver ran out of max_iter with a gradient above tol."""


class Solver(enum.Enum):
    FAST = "fast"
    SKLEARN = "sklearn"


class Precision(enum.Enum):
    FLOAT64 = "float64"
    FLOAT32 = "float32"  # for GPUs, where float64 is slow; agreement with sklearn is then looser


@dataclass(frozen=True)
class ProbeConfig:
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    folds: int = 5
    seed: int = 42
    max_iter: int = 2000
    tol: float = 1e-6
    solver: Solver = Solver.FAST
    device: str = "cpu"  # torch device of the FAST solver ("cpu", "cuda", "cuda:1")
    precision: Precision = Precision.FLOAT64

    def __post_init__(self) -> None:
        if not self.c_grid:
            raise FieldError("c_grid", "name at least one C")
        for i, c in enumerate(self.c_grid):
            if not (np.isfinite(c) and c > 0):
                raise FieldError(f"c_grid[{i}]", f"C must be a positive number, got {c}")
        if len(set(self.c_grid)) != len(self.c_grid):
            raise FieldError("c_grid", f"values repeat: {self.c_grid}")
        if self.folds < 2:
            raise FieldError("folds", f"must be at least 2, got {self.folds}")
        if self.max_iter < 1:
            raise FieldError("max_iter", f"must be at least 1, got {self.max_iter}")
        if not self.tol > 0:
            raise FieldError("tol", f"must be positive, got {self.tol}")


@dataclass(frozen=True, eq=False)
class LinearProbeModel:
    """The refitted probe: decision = ((x - mean) / scale) @ coef + intercept."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def decision_function(self, x: object, name: str = "x") -> np.ndarray:
        arr = _check_features(x, name)
        if arr.shape[1] != self.coef.size:
            raise ProbeError(f"{name}: {arr.shape[1]} columns, the probe was fitted on {self.coef.size}")
        return ((arr - self.mean) / self.scale) @ self.coef + self.intercept


@dataclass(frozen=True, eq=False)
class ProbeResult:
    auc: float
    f1: float  # on test, at `threshold`
    threshold: float  # maximises F1 on out-of-fold training scores; a test row is positive if score >= it
    best_c: float
    cv_auc: dict[float, float]  # mean validation AUC over the folds, per C
    test_scores: np.ndarray  # decision values (logits) of the refitted probe on the test rows
    test_labels: np.ndarray
    f1_at_test_optimal: float  # OPTIMISTIC: threshold picked on the test rows (the authors' choice)
    n_train: int
    n_test: int
    model: LinearProbeModel = field(repr=False)
    # Out-of-fold decision values of the training rows at the chosen C (each from the fold model that did not see
    # it): where thresholds are chosen, so no test row ever decides one (F1 here, operating points downstream).
    train_scores: np.ndarray = field(repr=False)
    train_labels: np.ndarray = field(repr=False)


def _check_features(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ProbeError(f"{name}: expected a 2-D feature matrix (rows x features), got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        row = int(np.flatnonzero(bad[:, cols[0]])[0])
        raise ProbeError(
            f"{name}: non-finite value {arr[row, cols[0]]} in column {cols[0]} (row {row}); "
            f"{cols.size} column(s) affected"
        )
    return arr


def _check_labels(y: object, n_rows: int, name: str) -> np.ndarray:
    labels = as_binary_labels(y, name)
    if labels.size != n_rows:
        raise ProbeError(f"{name}: {labels.size} labels for {n_rows} feature rows")
    return labels


# StratifiedGroupKFold's greedy pass sums each class's n_folds fold shares in order; numpy sums fewer than
# 8 numbers in order too, so up to 7 folds Python floats reproduce it bit for bit (tests compare the folds).
_MAX_REPLICATED_FOLDS = 7


def _fold_of_row(labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """The validation fold of each row, exactly as StratifiedGroupKFold(shuffle=True, random_state=seed).

    scikit-learn spends a few numpy calls per group and candidate fold (1.5 s for 6,400 groups, a third of a
    whole probe fit); this is its algorithm with the per-group step on Python floats, in the same order of
    operations, so ties (common: twin groups are all alike) break the same way.
    """
    if n_folds > _MAX_REPLICATED_FOLDS:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        fold_of_row = np.empty(labels.size, dtype=np.intp)
        for k, (_, val) in enumerate(splitter.split(np.zeros(labels.size), labels, groups)):
            fold_of_row[val] = k
        return fold_of_row
    _, class_of_row, class_totals = np.unique(labels, return_inverse=True, return_counts=True)
    _, group_of_row, group_sizes = np.unique(groups, return_inverse=True, return_counts=True)
    n_groups = group_sizes.size
    counts = np.zeros((n_groups, class_totals.size))
    np.add.at(counts, (group_of_row, class_of_row), 1)
    perm = np.arange(n_groups)
    np.random.RandomState(seed).shuffle(perm)
    counts = counts[perm]
    order = np.argsort(-np.std(counts, axis=1), kind="stable")
    totals = class_totals.astype(np.float64).tolist()
    fold_counts = [[0.0] * len(totals) for _ in range(n_folds)]
    fold_of_group = np.empty(n_groups, dtype=np.intp)
    for g in order.tolist():
        best = _best_fold(fold_counts, totals, counts[g].tolist())
        fold_counts[best] = [c + a for c, a in zip(fold_counts[best], counts[g].tolist(), strict=True)]
        fold_of_group[perm[g]] = best
    return fold_of_group[group_of_row]


def _best_fold(fold_counts: list[list[float]], totals: list[float], add: list[float]) -> int:
    """scikit-learn's _find_best_fold: lowest mean over classes of the std of the folds' class shares."""
    k = float(len(fold_counts))
    best, min_eval, min_samples = -1, math.inf, math.inf
    for i in range(len(fold_counts)):
        stds = []
        for j, total in enumerate(totals):
            shares = [(row[j] + add[j] if f == i else row[j]) / total for f, row in enumerate(fold_counts)]
            mean = 0.0
            for s in shares:
                mean += s
            mean /= k
            sq = 0.0
            for s in shares:
                sq += (s - mean) * (s - mean)
            stds.append(math.sqrt(sq / k))
        fold_eval = 0.0
        for s in stds:
            fold_eval += s
        fold_eval /= len(stds)
        samples = 0.0
        for c in fold_counts[i]:
            samples += c
        close = abs(fold_eval - min_eval) <= 1e-8 + 1e-5 * abs(min_eval)  # np.isclose's defaults
        if fold_eval < min_eval or (close and samples < min_samples):
            best, min_eval, min_samples = i, fold_eval, samples
    return best


def grouped_stratified_folds(y: object, groups: object, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs; a group never straddles folds and each part holds both classes."""
    labels = as_binary_labels(y)
    group_arr = np.asarray(groups)
    if group_arr.ndim != 1 or group_arr.size != labels.size:
        raise ProbeError(f"groups: {group_arr.size} group ids for {labels.size} labels (one per row needed)")
    if n_folds < 2:
        raise ProbeError(f"n_folds: must be at least 2, got {n_folds}")
    for cls in (0, 1):
        n_groups = np.unique(group_arr[labels == cls]).size
        if n_groups < n_folds:
            raise ProbeError(f"groups: class {cls} occurs in only {n_groups} group(s), fewer than the {n_folds} folds")
    fold_of_row = _fold_of_row(labels, group_arr, n_folds, seed)
    folds = []
    rows = np.arange(labels.size)
    for k in range(n_folds):
        train, val = rows[fold_of_row != k], rows[fold_of_row == k]
        for part, rows_k in (("training", train), ("validation", val)):
            if np.unique(labels[rows_k]).size < 2:
                raise ProbeError(f"groups: fold {k} {part} part holds one class only; use fewer folds")
        folds.append((train, val))
    return folds


def threshold_max_f1(y: object, scores: object) -> tuple[float, float]:
    """The score threshold (positive iff score >= threshold) maximising F1, and that F1.

    Candidates are the distinct scores; on a tie in F1 the highest threshold wins.
    """
    labels = as_binary_labels(y)
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != labels.shape or not np.isfinite(values).all():
        raise ProbeError(f"scores: need {labels.size} finite values, got shape {values.shape}")
    order = np.argsort(-values, kind="stable")
    ordered = values[order]
    true_pos = np.cumsum(labels[order])
    predicted = np.arange(1, labels.size + 1)
    f1 = 2.0 * true_pos / (predicted + labels.sum())
    # Only a cut after the last of a run of tied scores is a realisable threshold.
    last_of_tie = np.r_[ordered[1:] != ordered[:-1], True]
    f1 = np.where(last_of_tie, f1, -1.0)
    best = int(np.argmax(f1))
    return float(ordered[best]), float(f1[best])


def _f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    true_pos = np.count_nonzero(predicted & (labels == 1))
    return float(2.0 * true_pos / (np.count_nonzero(predicted) + np.count_nonzero(labels)))


def _torch_setup(config: ProbeConfig) -> tuple[torch.device, torch.dtype]:
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError(f"device: {config.device!r} asked for, but torch sees no CUDA device")
    dtype = torch.float64 if config.precision is Precision.FLOAT64 else torch.float32
    return device, dtype


def _fast_fit(
    x_train: np.ndarray,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    config: ProbeConfig,
) -> tuple[np.ndarray, list[LinearProbeModel]]:
    """Out-of-fold decision values per C (C x n) and the refitted model per C, from one batched solve."""
    device, dtype = _torch_setup(config)
    parts = Parts((*(train for train, _ in folds), np.arange(y.size)), tuple(val for _, val in folds))
    mean, scale, solution = solve(x_train, y, parts, config.c_grid, config.max_iter, config.tol, dtype, device)
    if solution.unconverged:
        warnings.warn(
            f"FAST probe: {solution.unconverged} of {parts.count * len(config.c_grid)} problems stopped at "
            f"max_iter={config.max_iter} above tol={config.tol}",
            ProbeConvergenceWarning,
            stacklevel=3,
        )
    oof = np.empty((len(config.c_grid), y.size))
    for f, (_, val) in enumerate(folds):
        oof[:, val] = solution.scores[val, f, :].T
    models = [
        LinearProbeModel(mean, scale, solution.refit_coef[:, i].copy(), float(solution.refit_intercept[i]))
        for i in range(len(config.c_grid))
    ]
    return oof, models


def _sklearn_model(x: np.ndarray, y: np.ndarray, c: float, config: ProbeConfig) -> LinearProbeModel:
    # scikit-learn's own scaler here, so the reference path shares no code with the FAST one.
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=c, class_weight="balanced", solver="lbfgs", max_iter=config.max_iter, tol=config.tol)
    clf.fit(scaler.transform(x), y)
    coef = clf.coef_[0].astype(np.float64)
    return LinearProbeModel(scaler.mean_, scaler.scale_, coef, float(clf.intercept_[0]))


def _sklearn_oof(
    x_train: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], config: ProbeConfig
) -> np.ndarray:
    oof = np.empty((len(config.c_grid), y.size))
    for c_index, c in enumerate(config.c_grid):
        for train, val in folds:
            model = _sklearn_model(x_train[train], y[train], c, config)
            oof[c_index, val] = model.decision_function(x_train[val])
    return oof


def fit_probe(
    x_train: object,
    y_train: object,
    groups_train: object,
    x_test: object,
    y_test: object,
    config: ProbeConfig | None = None,
) -> ProbeResult:
    """protocol section 4: C by grouped CV on the training rows, refit on all of them, one evaluation on test."""
    config = config or ProbeConfig()
    xtr = _check_features(x_train, "x_train")
    xte = _check_features(x_test, "x_test")
    if xtr.shape[1] != xte.shape[1]:
        raise ProbeError(f"x_test: {xte.shape[1]} columns, x_train has {xtr.shape[1]}")
    ytr = _check_labels(y_train, xtr.shape[0], "y_train")
    yte = _check_labels(y_test, xte.shape[0], "y_test")
    folds = grouped_stratified_folds(ytr, groups_train, config.folds, config.seed)

    if config.solver is Solver.FAST:
        oof, models = _fast_fit(xtr, ytr, folds, config)
    else:
        oof, models = _sklearn_oof(xtr, ytr, folds, config), []
    cv_auc = {c: float(np.mean([auc(ytr[val], oof[i, val]) for _, val in folds])) for i, c in enumerate(config.c_grid)}
    # First best in grid order, so ties resolve the same way for both solvers.
    best_index = int(np.argmax([cv_auc[c] for c in config.c_grid]))
    best_c = config.c_grid[best_index]
    model = models[best_index] if models else _sklearn_model(xtr, ytr, best_c, config)

    threshold, _ = threshold_max_f1(ytr, oof[best_index])
    test_scores = model.decision_function(xte, "x_test")
    return ProbeResult(
        auc=auc(yte, test_scores),
        f1=_f1_at(yte, test_scores, threshold),
        threshold=threshold,
        best_c=best_c,
        cv_auc=cv_auc,
        test_scores=test_scores,
        test_labels=yte,
        f1_at_test_optimal=threshold_max_f1(yte, test_scores)[1],
        n_train=int(ytr.size),
        n_test=int(yte.size),
        model=model,
        train_scores=oof[best_index].copy(),
        train_labels=ytr,
    )
