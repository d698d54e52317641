"""Statistics of protocol section 6: AUC, bootstrap intervals, DeLong and permutation tests, Benjamini-Hochberg.

Every resampling function takes its seed explicitly; `bootstrap_indices` is the one index generator, so two
analyses that must share resamples (paired pools, clean vs perturbed) can be handed the same array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr
from scipy.stats import rankdata

# Rows of a (resamples x cases) work matrix held at once: bounds memory at about 64 MB of float64.
_CHUNK_CELLS = 8_000_000


class StatsError(ValueError):
    """Input that a statistic cannot be computed from; the message names the argument."""


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class DeltaInterval(Interval):
    """A paired difference with its percentile interval and a two-sided bootstrap p-value."""

    p: float


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    delta: float  # auc_a - auc_b
    se: float
    z: float
    p: float  # two-sided


def as_binary_labels(y: object, name: str = "y") -> np.ndarray:
    """Labels as an int8 vector of 0 / 1 with both classes present, or a StatsError naming ``name``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise StatsError(f"{name}: expected a 1-D label vector, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise StatsError(f"{name}: labels must be 0/1 numbers or booleans, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr != 0) & (arr != 1))
    if bad.size:
        raise StatsError(f"{name}: labels must be 0 or 1; row {bad[0]} is {arr[bad[0]].item()!r}")
    labels = arr.astype(np.int8)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        only = 1 if n_pos else 0
        raise StatsError(f"{name}: only class {only} present ({labels.size} rows); both classes are needed")
    return labels


def as_scores(scores: object, n: int, name: str = "scores") -> np.ndarray:
    """Scores as a finite float64 vector of length ``n``, or a StatsError naming ``name`` and the bad row."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise StatsError(f"{name}: expected a 1-D score vector, got shape {arr.shape}")
    if arr.size != n:
        raise StatsError(f"{name}: length {arr.size} does not match the {n} labels")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise StatsError(f"{name}: non-finite value {arr[bad[0]]} at row {bad[0]}")
    return arr


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise StatsError(f"level: must be in (0, 1), got {level}")


def _check_count(value: int, name: str) -> None:
    if int(value) != value or value < 1:
        raise StatsError(f"{name}: must be a positive integer, got {value}")


def auc(y: object, scores: object) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic; ties count one half (midranks)."""
    labels = as_binary_labels(y)
    values = as_scores(scores, labels.size)
    ranks = rankdata(values)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_indices(y: object, n_boot: int, seed: int, stratified: bool = True) -> np.ndarray:
    """Resample index matrix of shape (n_boot, n); stratified rows keep the class counts of ``y``.

    Stratified rows list the resampled positives first, then the resampled negatives.
    """
    labels = as_binary_labels(y)
    _check_count(n_boot, "n_boot")
    rng = np.random.default_rng(seed)
    if not stratified:
        return rng.integers(0, labels.size, size=(n_boot, labels.size))
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    draw_pos = pos[rng.integers(0, pos.size, size=(n_boot, pos.size))]
    draw_neg = neg[rng.integers(0, neg.size, size=(n_boot, neg.size))]
    return np.concatenate([draw_pos, draw_neg], axis=1)


def _check_indices(indices: np.ndarray, n: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.dtype.kind not in "iu":
        raise StatsError(f"indices: expected a 2-D integer array, got shape {idx.shape} dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise StatsError(f"indices: values must lie in [0, {n}), got [{idx.min()}, {idx.max()}]")
    return idx


def resampled_aucs(y: object, scores: object, indices: np.ndarray) -> np.ndarray:
    """AUC of every resample (row of ``indices``), exact with ties, in O(n) per resample.

    Why not `auc` per row: a resample only changes how often each original case counts, so one sort of the
    original negatives serves every resample (cumulative counts of negatives below each positive).
    """
    labels = as_binary_labels(y)
    values = as_scores(scores, labels.size)
    idx = _check_indices(indices, labels.size)
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    neg_sorted = neg[np.argsort(values[neg], kind="stable")]
    neg_values = values[neg_sorted]
    below = np.searchsorted(neg_values, values[pos], side="left")
    up_to = np.searchsorted(neg_values, values[pos], side="right")
    n = labels.size
    chunk = max(1, _CHUNK_CELLS // n)
    out = np.empty(idx.shape[0], dtype=np.float64)
    for start in range(0, idx.shape[0], chunk):
        block = idx[start : start + chunk]
        rows = block.shape[0]
        offsets = (np.arange(rows)[:, None] * n + block).ravel()
        counts = np.bincount(offsets, minlength=rows * n).reshape(rows, n).astype(np.float64)
        neg_counts = counts[:, neg_sorted]
        cum = np.concatenate([np.zeros((rows, 1)), np.cumsum(neg_counts, axis=1)], axis=1)
        credit = cum[:, below] + 0.5 * (cum[:, up_to] - cum[:, below])
        pos_counts = counts[:, pos]
        n_pos = pos_counts.sum(axis=1)
        n_neg = neg_counts.sum(axis=1)
        empty = np.flatnonzero((n_pos == 0) | (n_neg == 0))
        if empty.size:
            raise StatsError(f"indices: resample {start + empty[0]} holds only one class; use stratified resampling")
        out[start : start + rows] = (pos_counts * credit).sum(axis=1) / (n_pos * n_neg)
    return out


def _percentile_interval(estimate: float, draws: np.ndarray, level: float) -> tuple[float, float, float]:
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(estimate), float(low), float(high)


def bootstrap_auc_ci(y: object, scores: object, n_boot: int = 1000, seed: int = 42, level: float = 0.95) -> Interval:
    """AUC with a percentile interval from stratified bootstrap resamples (positives and negatives apart)."""
    _check_level(level)
    idx = bootstrap_indices(y, n_boot, seed, stratified=True)
    draws = resampled_aucs(y, scores, idx)
    return Interval(*_percentile_interval(auc(y, scores), draws, level))


def _bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided p of 'delta = 0' by inverting the percentile interval, with the +1 rule so it is never 0."""
    n = deltas.size
    below = (1 + np.count_nonzero(deltas <= 0.0)) / (n + 1)
    above = (1 + np.count_nonzero(deltas >= 0.0)) / (n + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def paired_bootstrap_delta(
    y: object,
    scores_a: object,
    scores_b: object,
    n_boot: int = 10000,
    seed: int = 42,
    level: float = 0.95,
    stratified: bool = True,
) -> DeltaInterval:
    """Delta = AUC(a) - AUC(b), both scored on the SAME resample indices, with percentile CI and p."""
    _check_level(level)
    labels = as_binary_labels(y)
    a = as_scores(scores_a, labels.size, "scores_a")
    b = as_scores(scores_b, labels.size, "scores_b")
    idx = bootstrap_indices(labels, n_boot, seed, stratified=stratified)
    deltas = resampled_aucs(labels, a, idx) - resampled_aucs(labels, b, idx)
    estimate, low, high = _percentile_interval(auc(labels, a) - auc(labels, b), deltas, level)
    return DeltaInterval(estimate, low, high, _bootstrap_p(deltas))


def paired_bootstrap_delta_two_sets(
    y: object,
    scores_clean: object,
    scores_perturbed: object,
    n_boot: int = 10000,
    seed: int = 42,
    level: float = 0.95,
    stratified: bool = True,
) -> DeltaInterval:
    """Clean-vs-perturbed protocol: the same images scored clean and perturbed, resampled together.

    Delta = AUC(perturbed) - AUC(clean), so a negative delta means the perturbation cost disease signal.
    """
    labels = as_binary_labels(y)
    as_scores(scores_clean, labels.size, "scores_clean")
    as_scores(scores_perturbed, labels.size, "scores_perturbed")
    return paired_bootstrap_delta(labels, scores_perturbed, scores_clean, n_boot, seed, level, stratified)


def delong_test(y: object, scores_a: object, scores_b: object) -> DeLongResult:
    """Two-sided DeLong test of AUC(a) = AUC(b) on one test set (midrank algorithm of Sun and Xu, 2014)."""
    labels = as_binary_labels(y)
    a = as_scores(scores_a, labels.size, "scores_a")
    b = as_scores(scores_b, labels.size, "scores_b")
    pos = labels == 1
    m = int(pos.sum())
    n = labels.size - m
    if m < 2 or n < 2:
        raise StatsError(f"y: DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    v10 = np.empty((2, m))
    v01 = np.empty((2, n))
    aucs = np.empty(2)
    for k, values in enumerate((a, b)):
        x, z = values[pos], values[~pos]
        combined = rankdata(np.concatenate([x, z]))
        within_x, within_z = rankdata(x), rankdata(z)
        v10[k] = (combined[:m] - within_x) / n
        v01[k] = 1.0 - (combined[m:] - within_z) / m
        aucs[k] = v10[k].mean()
    cov = np.cov(v10) / m + np.cov(v01) / n
    # Rounding can leave a hair below zero when the two score sets rank every pair identically.
    var = max(0.0, float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]))
    delta = float(aucs[0] - aucs[1])
    se = float(np.sqrt(var))
    # se is 0 when no case's structural component varies: z is then 0 if the AUCs agree, infinite if not.
    infinite = 0.0 if delta == 0.0 else float(np.copysign(np.inf, delta))
    z_stat = delta / se if se > 0.0 else infinite
    p = float(2.0 * ndtr(-abs(z_stat)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), delta, se, float(z_stat), p)


def _row_aucs(matrix: np.ndarray, pos: np.ndarray) -> np.ndarray:
    ranks = rankdata(matrix, axis=1)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    return (ranks[:, pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def permutation_test_paired_auc(
    y: object,
    scores_a: object,
    scores_b: object,
    n_perm: int = 5000,
    seed: int = 42,
    rank_transform: bool = True,
) -> float:
    """Two-sided label-swap permutation p-value for AUC(a) = AUC(b): each case's a/b scores swap at random.

    With ``rank_transform`` each score set is first replaced by its normalised midranks: AUC is unchanged, but
    two probes whose scores live on different scales become exchangeable under the null, which swapping needs.
    """
    labels = as_binary_labels(y)
    a = as_scores(scores_a, labels.size, "scores_a")
    b = as_scores(scores_b, labels.size, "scores_b")
    _check_count(n_perm, "n_perm")
    if rank_transform:
        a, b = rankdata(a) / a.size, rankdata(b) / b.size
    pos = labels == 1
    observed = abs(auc(labels, a) - auc(labels, b))
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // labels.size)
    extreme = 0
    for start in range(0, n_perm, chunk):
        rows = min(chunk, n_perm - start)
        swap = rng.random((rows, labels.size)) < 0.5
        perm_a = np.where(swap, b, a)
        perm_b = np.where(swap, a, b)
        deltas = np.abs(_row_aucs(perm_a, pos) - _row_aucs(perm_b, pos))
        # AUCs are ratios of integers computed in floating point: equal values may differ in the last bits.
        extreme += int(np.count_nonzero(deltas >= observed - 1e-12))
    return (1 + extreme) / (n_perm + 1)


def benjamini_hochberg(pvalues: object, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg step-up: (rejected, q-values) in the input order; q is monotone and capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise StatsError(f"pvalues: expected a 1-D vector, got shape {p.shape}")
    if not 0.0 < alpha < 1.0:
        raise StatsError(f"alpha: must be in (0, 1), got {alpha}")
    bad = np.flatnonzero(~((p >= 0.0) & (p <= 1.0)))
    if bad.size:
        raise StatsError(f"pvalues: entry {bad[0]} is {p[bad[0]]}, not a probability")
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    q = np.empty(m)
    q[order] = q_sorted
    return q <= alpha, q
