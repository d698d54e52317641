"""The linear probe of protocol section 4: standardise, class-balanced L2 logistic regression, C by grouped CV.

Two solvers give the same fit. SKLEARN is the plain scikit-learn loop (one LogisticRegression per C and fold).
FAST solves every (C, fold) problem and every refit at once with a batched truncated-Newton method in torch.
It never builds a per-fold standardised copy of the data: standardising with the fold's own mean and scale is
an affine change of coordinates, so each problem is posed on ONE matrix standardised with the training-set
statistics, with the fold's scale ratio moved into a per-feature L2 weight. The minimiser is the same model.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

from lesionsignal.analysis.stats import as_binary_labels, auc
from lesionsignal.core.validate import FieldError

_ARMIJO = 1e-4  # sufficient-decrease constant of the backtracking line search
_MAX_HALVINGS = 40

# (directions of the live problems, their column indices) -> Hessian times those directions
HessianProduct = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and population std; an exactly constant column gets scale 1 so it maps to 0, not NaN."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    constant = x.max(axis=0) == x.min(axis=0)
    scale[constant] = 1.0
    return mean, scale


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    """n / (2 n_c) per row, as scikit-learn's class_weight="balanced"; the weights sum to n."""
    counts = np.bincount(y, minlength=2).astype(np.float64)
    return (y.size / (2.0 * counts))[y]


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
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for k, (train, val) in enumerate(splitter.split(np.zeros(labels.size), labels, group_arr)):
        for part, rows in (("training", train), ("validation", val)):
            if np.unique(labels[rows]).size < 2:
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


def _objective(z: torch.Tensor, v: torch.Tensor, y: torch.Tensor, w: torch.Tensor, pen: torch.Tensor) -> torch.Tensor:
    """Per-problem weighted log-loss plus half the weighted squared norm (weights pre-normalised)."""
    log_loss = torch.nn.functional.softplus(z) - y[:, None] * z
    return (w * log_loss).sum(dim=0) + 0.5 * (pen * v * v).sum(dim=0)


def _conjugate_gradient(hvp: HessianProduct, rhs: torch.Tensor, live: torch.Tensor, rtol: torch.Tensor) -> torch.Tensor:
    """CG on every live column of rhs at once; each column stops at its own ||r|| <= rtol ||rhs||.

    No preconditioner: on standardised features the Hessian diagonal is nearly constant, and Jacobi scaling
    was measured not to reduce the iteration count.
    """
    step = torch.zeros_like(rhs)
    residual = torch.where(live, rhs, torch.zeros_like(rhs))
    target = rtol * rhs.norm(dim=0)
    live = live & (residual.norm(dim=0) > target)
    direction = residual.clone()
    rho = (residual * residual).sum(dim=0)
    for _ in range(rhs.shape[0]):
        cols = torch.nonzero(live).flatten()
        if cols.numel() == 0:
            break
        d = direction[:, cols]
        hd = hvp(d, cols)
        alpha = rho[cols] / (d * hd).sum(dim=0)
        step[:, cols] += alpha * d
        residual[:, cols] -= alpha * hd
        r = residual[:, cols]
        rho_new = (r * r).sum(dim=0)
        direction[:, cols] = r + (rho_new / rho[cols]) * d
        rho[cols] = rho_new
        live[cols] = rho_new.sqrt() > target[cols]
    return step


def _gradient(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, pen: torch.Tensor, v: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of `_objective` per problem, and the fitted probabilities it used."""
    prob = torch.sigmoid(z)
    return x.T @ (w * (prob - y[:, None])) + pen * v, prob


def _batched_newton(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, pen: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise, per column k: sum_i w_ik logloss(y_i, x_i . v_k) + 0.5 sum_j pen_jk v_jk^2.

    x carries a ones column for the intercept (pen 0 there). Truncated Newton: CG solves of the Newton system
    with Hessian-vector products (two matrix products over all live problems), Armijo backtracking per
    problem. Returns the coefficients (features + 1, problems) and a per-problem flag: False where max_iter
    ran out with the gradient's largest entry still above tol.
    """
    n_problems = w.shape[1]
    v = torch.zeros(x.shape[1], n_problems, dtype=x.dtype, device=x.device)
    z = x @ v
    loss = _objective(z, v, y, w, pen)
    done = torch.zeros(n_problems, dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        grad, prob = _gradient(x, y, w, pen, v, z)
        done |= grad.abs().amax(dim=0) <= tol
        if bool(done.all()):
            break
        curvature = w * prob * (1.0 - prob)

        def hvp(d: torch.Tensor, cols: torch.Tensor, curvature=curvature) -> torch.Tensor:
            return x.T @ (curvature[:, cols] * (x @ d)) + pen[:, cols] * d

        rtol = torch.clamp(grad.norm(dim=0).sqrt(), max=0.5)
        step = _conjugate_gradient(hvp, -grad, ~done, rtol)
        z_step = x @ step
        slope = (grad * step).sum(dim=0)
        t = torch.ones(n_problems, dtype=x.dtype, device=x.device)
        pending = ~done
        for _ in range(_MAX_HALVINGS):
            trial = _objective(z + t * z_step, v + t * step, y, w, pen)
            accept = pending & (trial <= loss + _ARMIJO * t * slope)
            v = torch.where(accept, v + t * step, v)
            loss = torch.where(accept, trial, loss)
            pending &= ~accept
            if not bool(pending.any()):
                break
            t = torch.where(pending, 0.5 * t, t)
        # No decrease at all along a descent direction: the problem sits at its floating-point floor
        # (float32 on a GPU reaches it above tol); more iterations cannot move it.
        done |= pending
        z = x @ v
    else:
        done |= _gradient(x, y, w, pen, v, z)[0].abs().amax(dim=0) <= tol
    return v, done


def _fold_problems(
    x_train: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], c_grid: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised training matrix with a ones column, its mean/scale, per-problem row weights and L2 weights.

    Problem order: for each C, one problem per fold, then the refit on all rows.
    In a fold's own standardisation z = a * x_std + c with a = s_all / s_fold, so w . z = (a * w) . x_std
    plus a constant, and the penalty ||w||^2 is sum (s_fold / s_all)^2 v^2 in shared coordinates v = a * w.
    """
    mean, scale = _standardiser(x_train)
    n, d = x_train.shape
    # Built in place: for 64k x 4096 rows one copy of the features is 2 GB.
    x_aug = np.empty((n, d + 1))
    np.subtract(x_train, mean, out=x_aug[:, :d])
    x_aug[:, :d] /= scale
    x_aug[:, d] = 1.0
    parts = [*(train for train, _ in folds), np.arange(n)]
    n_problems = len(c_grid) * len(parts)
    weights = np.zeros((n, n_problems))
    penalty = np.zeros((d + 1, n_problems))
    for p, rows in enumerate(parts):
        _, part_scale = _standardiser(x_train[rows])
        ratio_sq = (part_scale / scale) ** 2
        part_weights = _balanced_weights(y[rows])
        for c_index, c in enumerate(c_grid):
            k = c_index * len(parts) + p
            # Dividing objective by the weight total (= row count) keeps tol on the scale of a mean loss.
            weights[rows, k] = part_weights / rows.size
            penalty[:d, k] = ratio_sq / (c * rows.size)
    return x_aug, mean, scale, weights, penalty


def _fast_fit(
    x_train: np.ndarray,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    config: ProbeConfig,
) -> tuple[np.ndarray, list[LinearProbeModel]]:
    """Out-of-fold decision values per C (C x n) and the refitted model per C, from one batched solve."""
    device, dtype = _torch_setup(config)
    x_aug, mean, scale, weights, penalty = _fold_problems(x_train, y, folds, config.c_grid)
    as_tensor = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    x_t = as_tensor(x_aug)
    coefs, converged = _batched_newton(
        x_t, as_tensor(y), as_tensor(weights), as_tensor(penalty), config.max_iter, config.tol
    )
    if not bool(converged.all()):
        warnings.warn(
            f"FAST probe: {int((~converged).sum())} of {converged.numel()} problems stopped at "
            f"max_iter={config.max_iter} above tol={config.tol}",
            ProbeConvergenceWarning,
            stacklevel=3,
        )
    coefs_np = coefs.to(device="cpu", dtype=torch.float64).numpy()
    scores_all = (x_t @ coefs).to(device="cpu", dtype=torch.float64).numpy()
    n_parts = len(folds) + 1
    oof = np.empty((len(config.c_grid), y.size))
    models = []
    for c_index in range(len(config.c_grid)):
        for f, (_, val) in enumerate(folds):
            oof[c_index, val] = scores_all[val, c_index * n_parts + f]
        refit = coefs_np[:, c_index * n_parts + n_parts - 1]
        models.append(LinearProbeModel(mean, scale, refit[:-1].copy(), float(refit[-1])))
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
    )
