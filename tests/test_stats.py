"""Statistics of protocol section 6 against references: scikit-learn, a slow DeLong, hand-worked numbers."""

from __future__ import annotations

from fractions import Fraction
from math import erf, sqrt

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from lesionsignal.analysis import stats
from lesionsignal.analysis.stats import StatsError


def _binormal(rng: np.random.Generator, n_pos: int, n_neg: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    scores = rng.normal(size=y.size) + shift * y
    return y, scores


def _slow_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """O(m n) structural components straight from DeLong et al. (1988): returns (delta, variance of delta)."""
    comps10, comps01 = [], []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        comps10.append(psi.mean(axis=1))
        comps01.append(psi.mean(axis=0))
    m, n = comps10[0].size, comps01[0].size

    def cov(u: np.ndarray, v: np.ndarray) -> float:
        return float(((u - u.mean()) * (v - v.mean())).sum() / (u.size - 1))

    s10 = [[cov(comps10[i], comps10[j]) for j in range(2)] for i in range(2)]
    s01 = [[cov(comps01[i], comps01[j]) for j in range(2)] for i in range(2)]
    var = (s10[0][0] + s10[1][1] - 2 * s10[0][1]) / m + (s01[0][0] + s01[1][1] - 2 * s01[0][1]) / n
    return float(comps10[0].mean() - comps10[1].mean()), var


# --- AUC -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_auc_matches_sklearn_including_ties(decimals: int | None) -> None:
    rng = np.random.default_rng(3)
    y, scores = _binormal(rng, 70, 130, 0.8)
    if decimals is not None:
        scores = np.round(scores, decimals)  # decimals=0 leaves a handful of heavily tied values
    assert stats.auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-14)


def test_auc_accepts_booleans_and_known_values() -> None:
    assert stats.auc(np.array([False, False, True, True]), [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert stats.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert stats.auc([0, 0, 1, 1], [1, 2, 3, 4]) == 1.0


@pytest.mark.parametrize(
    ("y", "scores", "match"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "only class 1"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "row 2 is 2"),
        ([0, 1, 1], [0.1, 0.2], "length 2 does not match the 3"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "non-finite value nan at row 1"),
        ([[0, 1]], [0.1, 0.2], "1-D"),
    ],
)
def test_auc_rejects_bad_input(y: list, scores: list, match: str) -> None:
    with pytest.raises(StatsError, match=match):
        stats.auc(y, scores)


# --- DeLong ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_slow_structural_components(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, a = _binormal(rng, 40 + 10 * seed, 55, 1.0)
    b = 0.6 * a + rng.normal(size=a.size)
    if seed == 2:  # ties within and across classes
        a, b = np.round(a, 1), np.round(b, 0)
    result = stats.delong_test(y, a, b)
    delta, var = _slow_delong(y, a, b)
    assert result.delta == pytest.approx(delta, abs=1e-12)
    assert result.se**2 == pytest.approx(var, abs=1e-10)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert result.z == pytest.approx(delta / sqrt(var), rel=1e-9)
    assert result.p == pytest.approx(2 * norm.sf(abs(result.z)), rel=1e-9)


def test_delong_hand_worked_example() -> None:
    # Positives 1-3 and negatives 1-2; psi = 1 if positive > negative, 1/2 if tied, else 0.
    y = np.array([1, 1, 1, 0, 0])
    a = np.array([0.9, 0.6, 0.4, 0.6, 0.2])
    b = np.array([0.5, 0.8, 0.3, 0.7, 0.1])
    # Score a: positive rows of psi are (1, 1), (1/2, 1), (0, 1):
    #   V10 = (1, 3/4, 1/2), V01 = column means = (1/2, 1), AUC_a = 3/4.
    # Score b: rows (0, 1), (1, 1), (0, 1): V10 = (1/2, 1, 1/2), V01 = (1/3, 1), AUC_b = 2/3.
    # S10 (divisor m - 1 = 2): deviations a (1/4, 0, -1/4), b (-1/6, 1/3, -1/6)
    #   s_aa = (1/16 + 1/16) / 2 = 1/16, s_bb = (1/36 + 1/9 + 1/36) / 2 = 1/12, s_ab = (-1/24 + 1/24) / 2 = 0.
    # S01 (divisor n - 1 = 1): deviations a (-1/4, 1/4), b (-1/3, 1/3)
    #   s_aa = 1/8, s_bb = 2/9, s_ab = 1/12 + 1/12 = 1/6.
    # var = (1/16 + 1/12 - 0) / 3 + (1/8 + 2/9 - 2/6) / 2 = 7/144 + 1/144 = 1/18.
    var = Fraction(7, 144) + Fraction(1, 144)
    assert var == Fraction(1, 18)
    delta = Fraction(3, 4) - Fraction(2, 3)
    z = float(delta) / sqrt(float(var))  # = sqrt(18) / 12
    result = stats.delong_test(y, a, b)
    assert result.auc_a == pytest.approx(0.75, abs=1e-15)
    assert result.auc_b == pytest.approx(2 / 3, abs=1e-15)
    assert result.se == pytest.approx(sqrt(1 / 18), abs=1e-14)
    assert result.z == pytest.approx(sqrt(18) / 12, abs=1e-13)
    assert result.p == pytest.approx(1 - erf(z / sqrt(2)), abs=1e-12)


def test_delong_on_hanley_mcneil_ct_ratings() -> None:
    # Hanley & McNeil (1982), Radiology 143:29, Table 1: 5-point ratings of 58 normal and 51 abnormal CT images.
    # Published: area 0.893 with SE 0.032 from their exponential approximation; DeLong's nonparametric SE on
    # the same data must be close to it, not equal.
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(normal.size, dtype=int), np.ones(abnormal.size, dtype=int)]
    ratings = np.r_[normal, abnormal].astype(float)
    chance = np.zeros_like(ratings)  # AUC 1/2 with zero variance: the pair test's SE is the single-AUC SE
    result = stats.delong_test(y, ratings, chance)
    assert round(result.auc_a, 3) == 0.893
    assert result.auc_b == 0.5
    assert abs(result.se - 0.032) < 0.003


def test_delong_identical_scores_give_p_one_and_tiny_samples_fail() -> None:
    rng = np.random.default_rng(5)
    y, a = _binormal(rng, 20, 20, 1.0)
    same = stats.delong_test(y, a, a.copy())
    assert (same.delta, same.se, same.z, same.p) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(StatsError, match="at least 2 positives"):
        stats.delong_test([1, 0, 0], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3])


# --- bootstrap -------------------------------------------------------------------------------------------------


def test_bootstrap_indices_stratified_keep_class_counts_and_are_deterministic() -> None:
    y = np.array([0] * 30 + [1] * 12)
    idx = stats.bootstrap_indices(y, 50, seed=7)
    assert idx.shape == (50, 42)
    assert (y[idx].sum(axis=1) == 12).all()
    assert np.array_equal(idx, stats.bootstrap_indices(y, 50, seed=7))
    assert not np.array_equal(idx, stats.bootstrap_indices(y, 50, seed=8))
    free = stats.bootstrap_indices(y, 200, seed=7, stratified=False)
    assert np.unique(y[free].sum(axis=1)).size > 1  # plain resampling lets the class counts move


@pytest.mark.parametrize("stratified", [True, False])
def test_resampled_aucs_equal_direct_auc_per_resample(stratified: bool) -> None:
    rng = np.random.default_rng(11)
    y, scores = _binormal(rng, 40, 60, 0.7)
    scores = np.round(scores, 1)
    idx = stats.bootstrap_indices(y, 40, seed=3, stratified=stratified)
    fast = stats.resampled_aucs(y, scores, idx)
    direct = np.array([roc_auc_score(y[row], scores[row]) for row in idx])
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-13)


def test_resampled_aucs_rejects_single_class_resample_and_bad_indices() -> None:
    y = np.array([0, 0, 1, 1])
    with pytest.raises(StatsError, match="resample 1 holds only one class"):
        stats.resampled_aucs(y, [0.1, 0.2, 0.3, 0.4], np.array([[0, 2, 1, 3], [0, 0, 1, 1]]))
    with pytest.raises(StatsError, match=r"values must lie in \[0, 4\)"):
        stats.resampled_aucs(y, [0.1, 0.2, 0.3, 0.4], np.array([[0, 4, 1, 3]]))


def test_bootstrap_ci_covers_true_auc_at_nominal_rate() -> None:
    # Binormal, unit variances, shift d: true AUC = Phi(d / sqrt(2)).
    shift = 1.0
    true_auc = norm.cdf(shift / np.sqrt(2))
    rng = np.random.default_rng(2024)
    hits = 0
    for rep in range(200):
        y, scores = _binormal(rng, 80, 80, shift)
        ci = stats.bootstrap_auc_ci(y, scores, n_boot=200, seed=rep)
        assert ci.low <= ci.estimate <= ci.high
        hits += ci.low <= true_auc <= ci.high
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_ci_is_deterministic_and_level_widens_it() -> None:
    rng = np.random.default_rng(1)
    y, scores = _binormal(rng, 50, 50, 1.0)
    first = stats.bootstrap_auc_ci(y, scores, n_boot=300, seed=9)
    assert first == stats.bootstrap_auc_ci(y, scores, n_boot=300, seed=9)
    assert first != stats.bootstrap_auc_ci(y, scores, n_boot=300, seed=10)
    wide = stats.bootstrap_auc_ci(y, scores, n_boot=300, seed=9, level=0.99)
    assert wide.low < first.low and wide.high > first.high
    assert first.estimate == stats.auc(y, scores)
    with pytest.raises(StatsError, match="level"):
        stats.bootstrap_auc_ci(y, scores, level=95)


def test_paired_bootstrap_uses_the_same_indices_for_both_scores() -> None:
    rng = np.random.default_rng(4)
    y, a = _binormal(rng, 60, 90, 1.2)
    b = a + rng.normal(scale=1.5, size=a.size)
    result = stats.paired_bootstrap_delta(y, a, b, n_boot=500, seed=13)
    idx = stats.bootstrap_indices(y, 500, seed=13)
    deltas = stats.resampled_aucs(y, a, idx) - stats.resampled_aucs(y, b, idx)
    assert (result.low, result.high) == tuple(np.percentile(deltas, [2.5, 97.5]))
    assert result.estimate == pytest.approx(stats.auc(y, a) - stats.auc(y, b), abs=1e-15)
    assert result.low < result.estimate < result.high
    # A pool compared with itself: only shared indices make every resampled delta exactly zero.
    self_delta = stats.paired_bootstrap_delta(y, a, a.copy(), n_boot=200, seed=13)
    assert (self_delta.estimate, self_delta.low, self_delta.high, self_delta.p) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_p_value_tracks_the_evidence() -> None:
    rng = np.random.default_rng(6)
    y, strong = _binormal(rng, 100, 100, 2.0)
    weak = strong + rng.normal(scale=3.0, size=strong.size)
    clear = stats.paired_bootstrap_delta(y, strong, weak, n_boot=2000, seed=1)
    assert clear.low > 0 and clear.p < 0.01
    twin = strong + rng.normal(scale=0.05, size=strong.size)
    null = stats.paired_bootstrap_delta(y, strong, twin, n_boot=2000, seed=1)
    assert null.low < 0 < null.high and null.p > 0.05
    assert isinstance(clear, stats.Interval)


def test_two_set_version_is_perturbed_minus_clean_on_shared_indices() -> None:
    rng = np.random.default_rng(8)
    y, clean = _binormal(rng, 50, 70, 1.5)
    perturbed = clean + rng.normal(scale=1.0, size=clean.size)
    two_sets = stats.paired_bootstrap_delta_two_sets(y, clean, perturbed, n_boot=400, seed=2)
    direct = stats.paired_bootstrap_delta(y, perturbed, clean, n_boot=400, seed=2)
    assert two_sets == direct
    assert two_sets.estimate < 0  # noise added to the scores costs AUC
    with pytest.raises(StatsError, match="scores_perturbed: length 3"):
        stats.paired_bootstrap_delta_two_sets(y, clean, [0.1, 0.2, 0.3])


# --- permutation test ------------------------------------------------------------------------------------------


def test_permutation_test_small_p_for_planted_difference() -> None:
    rng = np.random.default_rng(12)
    y, good = _binormal(rng, 80, 80, 2.0)
    poor = rng.normal(size=good.size) + 0.2 * y
    p = stats.permutation_test_paired_auc(y, good, poor, n_perm=999, seed=1)
    assert p == pytest.approx(1 / 1000)  # no relabelling reaches the observed gap


def test_permutation_test_large_p_for_exchangeable_scores() -> None:
    rng = np.random.default_rng(13)
    y = np.r_[np.ones(80, dtype=int), np.zeros(80, dtype=int)]
    a = rng.normal(size=y.size) + y
    b = rng.normal(size=y.size) + y
    p = stats.permutation_test_paired_auc(y, a, b, n_perm=999, seed=1)
    assert p > 0.2
    # Rank transform: a monotone rescaling of one model's scores changes nothing.
    assert stats.permutation_test_paired_auc(y, a, 100 * b + 7, n_perm=999, seed=1) == p
    assert stats.permutation_test_paired_auc(y, a, b, n_perm=999, seed=1) == p
    assert stats.permutation_test_paired_auc(y, a, b, n_perm=999, seed=2) != p


# --- Benjamini-Hochberg ----------------------------------------------------------------------------------------


def test_benjamini_hochberg_hand_example() -> None:
    # Sorted: 0.005, 0.01, 0.03, 0.04; p * m / rank = 0.02, 0.02, 0.04, 0.04 (already monotone).
    rejected, q = stats.benjamini_hochberg([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(q, [0.02, 0.04, 0.04, 0.02], rtol=1e-12)
    assert rejected.tolist() == [True, True, True, True]


def test_benjamini_hochberg_step_up_and_monotone_q() -> None:
    # m = 5. Sorted 0.001, 0.02, 0.021, 0.2, 0.9 -> p*5/rank = 0.005, 0.05, 0.035, 0.25, 0.9;
    # running minimum from the top: 0.005, 0.035, 0.035, 0.25, 0.9.
    p = [0.9, 0.02, 0.001, 0.2, 0.021]
    rejected, q = stats.benjamini_hochberg(p, alpha=0.04)
    np.testing.assert_allclose(q, [0.9, 0.035, 0.005, 0.25, 0.035], rtol=1e-12)
    assert rejected.tolist() == [False, True, True, False, True]
    _, q_big = stats.benjamini_hochberg([0.6, 0.9, 0.95], alpha=0.05)
    np.testing.assert_allclose(q_big, [0.95, 0.95, 0.95])


def test_benjamini_hochberg_rejects_bad_pvalues() -> None:
    with pytest.raises(StatsError, match=r"entry 1 is 1\.5"):
        stats.benjamini_hochberg([0.1, 1.5])
    with pytest.raises(StatsError, match="entry 0 is nan"):
        stats.benjamini_hochberg([np.nan])
    rejected, q = stats.benjamini_hochberg([])
    assert rejected.size == 0 and q.size == 0
