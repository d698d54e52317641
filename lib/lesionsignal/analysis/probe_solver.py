"""The FAST solver of the linear probe: every (C, fold) logistic regression and every refit in one batched solve.

No problem gets its own standardised copy of the data: standardising with a part's own mean and scale is an
affine change of coordinates, so each problem is posed on ONE matrix standardised with the training-set
statistics, with the part's scale ratio moved into a per-feature L2 weight. The minimiser is the same model.

Two exact forms of the same problems, chosen by shape:

* primal (rows >= features): truncated Newton on the features, its conjugate-gradient solves preconditioned by
  the refit's weighted Gram matrix; one eigendecomposition of it serves every fold, every C and every Newton
  step, because between them only a scalar curvature and the penalty change (measured on the benchmark's
  16,000 x 768 case: 12 Hessian products in all instead of 80 unpreconditioned);
* reduced (rows < features): the optimal weights lie in the span of the part's own rows, so each part is
  solved on the coordinates of that span (its kernel's eigenvectors), rows x rows instead of rows x features;
  the refit's weights are mapped back to the features at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from threadpoolctl import threadpool_limits

_ARMIJO = 1e-4  # sufficient-decrease constant of the backtracking line search
_MAX_HALVINGS = 40
# A kernel eigenvalue below this fraction of the largest is rounding noise: the penalty that a weight along it
# would cost (1 / (C n eigenvalue)) exceeds any loss it could remove, so dropping it leaves the minimiser.
_RANK_CUTOFF = 1e-10
# FAST stops at tol / 100 although tol is what it promises. A problem stopped at tol can sit far from its
# minimiser where the objective is flat (weak penalty, separable rows), and scikit-learn stopped there too,
# somewhere else: two such errors add. Newton's last steps converge quadratically, so this costs about one
# more step, and FAST's AUCs then carry only the reference's stopping error (measured: 2.5e-3 -> 1.3e-3).
_TIGHTER = 1e-2
# Widest primal problem (features + 1) preconditioned with the Gram matrix's eigenvectors: the Gram costs
# d / (4 problems) Hessian products and the eigendecomposition grows as d^3 (0.07 s at 769 on one thread,
# so about 1.3 s at 2048); wider problems run CG unpreconditioned.
_MAX_GRAM_DIM = 2048


@dataclass(frozen=True)
class Parts:
    """The fitted row sets: each fold's training part, then all training rows (the refit)."""

    rows: tuple[np.ndarray, ...]
    validation: tuple[np.ndarray, ...]  # each fold's held-out rows (none for the refit)

    @property
    def count(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, eq=False)
class Solution:
    """Decision values of every problem on every training row (rows x parts x C) and the refits' weights."""

    scores: np.ndarray
    refit_coef: np.ndarray  # (features, C): weights on the training-standardised features
    refit_intercept: np.ndarray  # (C,)
    unconverged: int


class Design(Protocol):
    """The linear map from each problem's coefficients (columns, part-major) to its logits on all rows."""

    def forward(self, v: torch.Tensor) -> torch.Tensor: ...
    def adjoint(self, u: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class SharedDesign:
    """Primal form: one matrix (rows x features + ones column) for every problem."""

    x: torch.Tensor

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.x @ v

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        return self.x.T @ u


@dataclass(frozen=True, eq=False)
class PartDesign:
    """Reduced form: one matrix per part (parts x rows x coordinates + ones column), shared by its C values."""

    x: torch.Tensor
    x_t: torch.Tensor  # x.transpose(1, 2), contiguous: bmm on a transposed view copies it every call
    n_c: int

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        f, n_problems = v.shape
        blocks = torch.bmm(self.x, v.reshape(f, -1, self.n_c).permute(1, 0, 2))
        return blocks.permute(1, 0, 2).reshape(-1, n_problems)

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        n, n_problems = u.shape
        blocks = torch.bmm(self.x_t, u.reshape(n, -1, self.n_c).permute(1, 0, 2))
        return blocks.permute(1, 0, 2).reshape(-1, n_problems)


class Preconditioner(Protocol):
    """An approximate inverse Hessian per problem, given each problem's mean curvature."""

    def apply(self, r: torch.Tensor, curvature_scale: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class DiagonalPreconditioner:
    """M_k = a_k diag(G_k) + penalty_k: exact for equal curvatures where the weighted Gram G_k is diagonal."""

    gram_diagonal: torch.Tensor  # (coordinates, problems)
    penalty: torch.Tensor  # (coordinates, problems)

    def apply(self, r: torch.Tensor, curvature_scale: torch.Tensor) -> torch.Tensor:
        return r / (curvature_scale * self.gram_diagonal + self.penalty)


class IdentityPreconditioner:
    """No preconditioning: beyond _MAX_GRAM_DIM features the Gram matrix and its eigenvectors cost more than CG."""

    def apply(self, r: torch.Tensor, curvature_scale: torch.Tensor) -> torch.Tensor:
        return r


@dataclass(frozen=True, eq=False)
class GramPreconditioner:
    """M_k = a_k G + lam_k I, applied through the eigenbasis of G, the refit's weighted Gram matrix.

    The Hessian of every problem at probability 1/2 is G_p / 4 + its penalty; a fold's G_p is the refit's G
    less a fifth of the rows, and the penalty is lam_k times the part's squared scale ratios (near 1), so one
    eigendecomposition, with the mean curvature a_k of each problem at each Newton step, serves them all.
    """

    basis: torch.Tensor  # (f, f)
    basis_t: torch.Tensor  # its transpose, contiguous
    eigenvalues: torch.Tensor  # (f,)
    lam: torch.Tensor  # (problems,)

    def apply(self, r: torch.Tensor, curvature_scale: torch.Tensor) -> torch.Tensor:
        coords = self.basis_t @ r
        coords = coords / (curvature_scale * self.eigenvalues[:, None] + self.lam)
        return self.basis @ coords


def _objective(z: torch.Tensor, v: torch.Tensor, y: torch.Tensor, w: torch.Tensor, pen: torch.Tensor) -> torch.Tensor:
    """Per-problem weighted log-loss plus half the weighted squared norm (weights pre-normalised)."""
    log_loss = torch.nn.functional.softplus(z) - y[:, None] * z
    return (w * log_loss).sum(dim=0) + 0.5 * (pen * v * v).sum(dim=0)


def _conjugate_gradient(hvp, precondition, rhs: torch.Tensor, live: torch.Tensor, rtol: torch.Tensor) -> torch.Tensor:
    """Preconditioned CG on every live column at once; a column stops at ||r|| <= rtol ||rhs||.

    All columns move through each product (finished ones with a zero step): one wide matrix product costs
    little more than a narrow one, and the part-blocked products need whole blocks.
    """
    step = torch.zeros_like(rhs)
    residual = torch.where(live, rhs, torch.zeros_like(rhs))
    target = rtol * rhs.norm(dim=0)
    live = live & (residual.norm(dim=0) > target)
    z = precondition(residual)
    direction = torch.where(live, z, torch.zeros_like(z))
    rho = (residual * z).sum(dim=0)
    for _ in range(rhs.shape[0]):
        if not bool(live.any()):
            break
        hd = hvp(direction)
        alpha = torch.where(live, rho / (direction * hd).sum(dim=0), torch.zeros_like(rho))
        step += alpha * direction
        residual -= alpha * hd
        z = precondition(residual)
        rho_new = (residual * z).sum(dim=0)
        beta = torch.where(live, rho_new / rho, torch.zeros_like(rho))
        direction = torch.where(live, z + beta * direction, direction)
        rho = torch.where(live, rho_new, rho)
        live = live & (residual.norm(dim=0) > target)
        direction = torch.where(live, direction, torch.zeros_like(direction))
    return step


def batched_newton(
    design: Design,
    preconditioner: Preconditioner,
    y: torch.Tensor,
    w: torch.Tensor,
    pen: torch.Tensor,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise, per column k: sum_i w_ik logloss(y_i, z_ik) + 0.5 sum_j pen_jk v_jk^2, z = design(v).

    The last coefficient multiplies the ones column (pen 0 there). Truncated Newton: preconditioned CG solves
    of the Newton system with Hessian-vector products, Armijo backtracking per problem. Returns the
    coefficients (coordinates + 1, problems), a per-problem flag (False where max_iter ran out with the
    gradient's largest entry above tol) and that largest entry at the returned coefficients.
    """
    n_problems = w.shape[1]
    v = torch.zeros(pen.shape[0], n_problems, dtype=w.dtype, device=w.device)
    z = torch.zeros_like(w)
    loss = _objective(z, v, y, w, pen)
    done = torch.zeros(n_problems, dtype=torch.bool, device=w.device)
    for _ in range(max_iter):
        prob = torch.sigmoid(z)
        grad = design.adjoint(w * (prob - y[:, None])) + pen * v
        grad_max = grad.abs().amax(dim=0)
        done |= grad_max <= tol
        if bool(done.all()):
            break
        curvature = w * prob * (1.0 - prob)
        scale = curvature.sum(dim=0)  # weights sum to 1: the problem's mean curvature

        def hvp(d: torch.Tensor, curvature: torch.Tensor = curvature) -> torch.Tensor:
            return design.adjoint(curvature * design.forward(d)) + pen * d

        def precondition(r: torch.Tensor, scale: torch.Tensor = scale) -> torch.Tensor:
            return preconditioner.apply(r, scale)

        rtol = torch.clamp(grad.norm(dim=0).sqrt(), max=0.5)
        step = _conjugate_gradient(hvp, precondition, -grad, ~done, rtol)
        z_step = design.forward(step)
        slope = (grad * step).sum(dim=0)
        t = torch.ones(n_problems, dtype=w.dtype, device=w.device)
        pending = ~done
        for _ in range(_MAX_HALVINGS):
            trial = _objective(z + t * z_step, v + t * step, y, w, pen)
            accept = pending & (trial <= loss + _ARMIJO * t * slope)
            v = torch.where(accept, v + t * step, v)
            z = torch.where(accept, z + t * z_step, z)
            loss = torch.where(accept, trial, loss)
            pending &= ~accept
            if not bool(pending.any()):
                break
            t = torch.where(pending, 0.5 * t, t)
        # No decrease at all along a descent direction: the problem sits at its floating-point floor
        # (float32 reaches it above tol); more iterations cannot move it.
        done |= pending
    else:
        prob = torch.sigmoid(z)
        grad_max = (design.adjoint(w * (prob - y[:, None])) + pen * v).abs().amax(dim=0)
        done |= grad_max <= tol
    return v, done, grad_max


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _scale_ratios_sq(x: np.ndarray, parts: Parts, scale: np.ndarray) -> np.ndarray:
    """(s_part / s_all)^2 per part and column; 1 for the refit, whose part is all rows.

    A fold's training part is the union of the other folds' validation blocks, so per-block means and squared
    deviations, pooled (Chan et al.), give every part's variance in one pass over the rows instead of one each.
    """
    blocks = parts.validation
    counts = np.array([b.size for b in blocks], dtype=np.float64)
    means = np.stack([x[b].mean(axis=0) for b in blocks])
    sq_dev = np.stack([((x[b] - m) ** 2).sum(axis=0) for b, m in zip(blocks, means, strict=True)])
    highs = np.stack([x[b].max(axis=0) for b in blocks])
    lows = np.stack([x[b].min(axis=0) for b in blocks])
    ratios = np.ones((parts.count, x.shape[1]))
    for p in range(len(blocks)):
        keep = np.arange(len(blocks)) != p
        n_part = counts[keep].sum()
        part_mean = (counts[keep, None] * means[keep]).sum(axis=0) / n_part
        pooled = (sq_dev[keep] + counts[keep, None] * (means[keep] - part_mean) ** 2).sum(axis=0)
        part_scale = np.sqrt(pooled / n_part)
        part_scale[highs[keep].max(axis=0) == lows[keep].min(axis=0)] = 1.0  # constant there: as `standardiser`
        ratios[p] = (part_scale / scale) ** 2
    return ratios


def _weights(y: np.ndarray, parts: Parts, n_c: int) -> np.ndarray:
    """Row weights per problem (part-major): balanced, divided by the part's row count so tol is on a mean loss."""
    weights = np.zeros((y.size, parts.count * n_c))
    for p, rows in enumerate(parts.rows):
        weights[rows, p * n_c : (p + 1) * n_c] = (_balanced_weights(y[rows]) / rows.size)[:, None]
    return weights


def _penalty_scales(parts: Parts, c_grid: tuple[float, ...]) -> np.ndarray:
    """1 / (C n_part) per problem: scikit-learn's 1 / (2 C) ||w||^2 after dividing the objective by n_part."""
    return np.array([1.0 / (c * rows.size) for rows in parts.rows for c in c_grid])


def _eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.linalg.eigh on one BLAS thread.

    LAPACK's tridiagonal reduction synchronises its threads at every column: on a shared two-core machine a
    descheduled thread stalls it (measured 15-100x slower with two threads under load; alone, one thread is
    as fast for these sizes).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return np.linalg.eigh(matrix)


def _refit_gram(x_aug: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The refit's weighted Gram matrix X^T W X (balanced weights over the row count), summed in float32."""
    gram = np.zeros((x_aug.shape[1], x_aug.shape[1]))
    for cls in (0, 1):
        rows = torch.from_numpy(x_aug[y == cls].astype(np.float32))
        gram += (rows.T @ rows).double().numpy() / (2.0 * rows.shape[0])
    return gram


def _primal(
    x_aug: np.ndarray, y: np.ndarray, parts: Parts, ratios: np.ndarray, c_grid: tuple[float, ...], dtype, device
) -> tuple[SharedDesign, Preconditioner, np.ndarray]:
    """The problems on the shared standardised matrix; the penalty is (s_part / s_all)^2 / (C n_part) per column."""
    d = x_aug.shape[1] - 1
    lam = _penalty_scales(parts, c_grid)
    penalty = np.zeros((d + 1, lam.size))
    penalty[:d] = np.repeat(ratios, len(c_grid), axis=0).T * lam
    as_tensor = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    if d + 1 > _MAX_GRAM_DIM:
        return SharedDesign(as_tensor(x_aug)), IdentityPreconditioner(), penalty
    eigenvalues, basis = _eigh(_refit_gram(x_aug, y))
    basis_t = as_tensor(basis)
    pre = GramPreconditioner(basis_t, basis_t.T.contiguous(), as_tensor(eigenvalues.clip(min=0.0)), as_tensor(lam))
    return SharedDesign(as_tensor(x_aug)), pre, penalty


def _span_coordinates(
    x_std: np.ndarray, rows: np.ndarray, ratio_sq: np.ndarray, row_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's coordinates in the part's row span, and the map from coordinates to weights on its rows.

    In the metric where the penalty is isotropic the features are x / r (r = s_part / s_all). With the part's
    rows X, row weights W and kernel K = X R^-2 X^T, the eigendecomposition W^1/2 K W^1/2 = U S^2 U^T gives the
    span an orthonormal basis V = X^T R^-1 W^1/2 U S^-1 in which the weighted Gram (the Hessian at equal
    curvatures) is S^2, diagonal; a row's coordinates are x R^-1 V = K[row] W^1/2 U / S. Returns the
    coordinates (all rows x rank), S^2, and W^1/2 U / S (the weights on the part's rows per coordinate).
    """
    kernel = x_std @ (x_std[rows] / ratio_sq).T
    root_w = np.sqrt(row_weights)
    inner = root_w[:, None] * kernel[rows] * root_w[None, :]
    eigenvalues, vectors = _eigh(0.5 * (inner + inner.T))
    keep = eigenvalues > _RANK_CUTOFF * eigenvalues[-1]
    to_rows = root_w[:, None] * vectors[:, keep] / np.sqrt(eigenvalues[keep])
    return kernel @ to_rows, eigenvalues[keep], to_rows


def _reduced(
    x_std: np.ndarray, y: np.ndarray, parts: Parts, ratios: np.ndarray, c_grid: tuple[float, ...], dtype, device
) -> tuple[PartDesign, DiagonalPreconditioner, np.ndarray, np.ndarray]:
    """The problems on each part's row-span coordinates (zero-padded to a common width), isotropic penalty."""
    weights = _weights(y, parts, 1)
    spans = [
        _span_coordinates(x_std, rows, ratio, weights[rows, p])
        for p, (rows, ratio) in enumerate(zip(parts.rows, ratios, strict=True))
    ]
    width = max(coords.shape[1] for coords, _, _ in spans)
    stacked = np.zeros((parts.count, x_std.shape[0], width + 1))
    gram_diagonal = np.zeros((parts.count, width + 1))
    for p, (coords, sq, _) in enumerate(spans):
        stacked[p, :, : coords.shape[1]] = coords
        gram_diagonal[p, : sq.size] = sq
    stacked[:, :, width] = 1.0
    gram_diagonal[:, width] = 1.0  # the ones column: the weights sum to 1
    n_c = len(c_grid)
    lam = _penalty_scales(parts, c_grid)
    penalty = np.zeros((width + 1, lam.size))
    penalty[:width] = lam  # padded coordinates are zero columns: the penalty holds their weight at 0
    x_t = torch.as_tensor(stacked, dtype=dtype, device=device)
    as_tensor = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    pre = DiagonalPreconditioner(as_tensor(np.repeat(gram_diagonal, n_c, axis=0).T), as_tensor(penalty))
    return PartDesign(x_t, x_t.transpose(1, 2).contiguous(), n_c), pre, penalty, spans[-1][2]


def _stopping_tol(tol: float, dtype: torch.dtype) -> float:
    """tol * _TIGHTER in float64; float32's gradients bottom out near 1e-7, so there it stays tol."""
    return tol * _TIGHTER if dtype == torch.float64 else tol


def _prefers_reduced(n_rows: int, n_features: int) -> bool:
    return n_rows < n_features


def _standardised_with_ones(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(x - mean) / scale with a ones column appended, built in place: for 64k x 4096 one copy is 2 GB."""
    n, d = x.shape
    x_aug = np.empty((n, d + 1))
    np.subtract(x, mean, out=x_aug[:, :d])
    x_aug[:, :d] /= scale
    x_aug[:, d] = 1.0
    return x_aug


def solve(
    x_train: np.ndarray,
    y: np.ndarray,
    parts: Parts,
    c_grid: tuple[float, ...],
    max_iter: int,
    tol: float,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, Solution]:
    """Training mean and scale, and every problem's solution; the reduced form when rows < features."""
    mean, scale = standardiser(x_train)
    ratios = _scale_ratios_sq(x_train, parts, scale)
    x_aug = _standardised_with_ones(x_train, mean, scale)
    n, d = x_train.shape
    n_c = len(c_grid)
    reduced = _prefers_reduced(n, d)
    if reduced:
        design, pre, penalty, refit_to_rows = _reduced(x_aug[:, :d], y, parts, ratios, c_grid, dtype, device)
    else:
        design, pre, penalty = _primal(x_aug, y, parts, ratios, c_grid, dtype, device)
    as_tensor = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    weights = as_tensor(_weights(y, parts, n_c))
    coefs, done, grad_max = batched_newton(
        design, pre, as_tensor(y), weights, as_tensor(penalty), max_iter, _stopping_tol(tol, dtype)
    )
    scores = design.forward(coefs).to(device="cpu", dtype=torch.float64).numpy().reshape(n, parts.count, n_c)
    refit = coefs[:, -n_c:].to(device="cpu", dtype=torch.float64).numpy()
    # The reduced refit's weights live on its rows (all training rows): map them back onto the features.
    coef = x_aug[:, :d].T @ (refit_to_rows @ refit[: refit_to_rows.shape[1]]) if reduced else refit[:d]
    solution = Solution(scores, coef, refit[-1].copy(), int((~done & (grad_max > tol)).sum()))
    return mean, scale, solution
