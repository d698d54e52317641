"""How small an AUC difference a test set of given size can detect (protocol section 7, size strata).

The variance of an AUC estimate from n1 positives and n0 negatives is Hanley and McNeil's (1982):

    V(A) = [A (1 - A) + (n1 - 1) (Q1 - A^2) + (n0 - 1) (Q2 - A^2)] / (n1 n0),  Q1 = A / (2 - A),  Q2 = 2 A^2 / (1 + A)

and a difference D is detectable by a two-sided z-test at level alpha with power 1 - beta when

    z(1 - alpha / 2) sqrt(V_null) + z(1 - beta) sqrt(V_alternative(D)) <= D

(the variance under each hypothesis, as Obuchowski's sample-size formulas use it). The minimum detectable
difference (MDD) is the smallest such D, found by bisection. Two comparisons are offered: one stratum's AUC
against chance (0.5), and the gap between two strata whose AUCs are estimated on separate rows (independent;
where two strata share their negatives, as image-level strata do, the gap's true variance is smaller and the MDD
errs large, on the safe side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm

_BISECTIONS = 60  # halves the bracket to below 1e-15 of an AUC


class PowerError(ValueError):
    """Counts or levels a detectable difference cannot be computed from; the message names the argument."""


@dataclass(frozen=True)
class PowerSettings:
    alpha: float = 0.05  # two-sided
    power: float = 0.80

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise PowerError(f"alpha: must lie in (0, 1), got {self.alpha}")
        if not 0.0 < self.power < 1.0:
            raise PowerError(f"power: must lie in (0, 1), got {self.power}")

    @property
    def z_alpha(self) -> float:
        return float(norm.ppf(1.0 - self.alpha / 2.0))

    @property
    def z_beta(self) -> float:
        return float(norm.ppf(self.power))


def _check_counts(n_positive: int, n_negative: int) -> None:
    if n_positive < 1 or n_negative < 1:
        raise PowerError(f"counts: need at least one positive and one negative, got {n_positive} and {n_negative}")


def hanley_mcneil_variance(auc: float, n_positive: int, n_negative: int) -> float:
    """Variance of an AUC estimate at true AUC ``auc`` from the given counts (Hanley and McNeil 1982)."""
    _check_counts(n_positive, n_negative)
    if not 0.0 <= auc <= 1.0:
        raise PowerError(f"auc: must lie in [0, 1], got {auc}")
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc**2 / (1.0 + auc)
    spread = auc * (1.0 - auc) + (n_positive - 1) * (q1 - auc**2) + (n_negative - 1) * (q2 - auc**2)
    return max(spread, 0.0) / (n_positive * n_negative)


def _smallest_root(shortfall: object, upper: float) -> float:
    """The smallest D in (0, upper] where shortfall(D) <= 0 (shortfall falls through zero once); NaN if none."""
    if shortfall(upper) > 0:  # type: ignore[operator]
        return math.nan
    low, high = 0.0, upper
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2.0
        if shortfall(middle) > 0:  # type: ignore[operator]
            low = middle
        else:
            high = middle
    return high


def detectable_vs_chance(n_positive: int, n_negative: int, settings: PowerSettings) -> float:
    """The smallest AUC - 0.5 a stratum of these counts detects (two-sided, settings' alpha and power); NaN when
    even a perfect AUC of 1 would not be detected."""
    null = math.sqrt(hanley_mcneil_variance(0.5, n_positive, n_negative))

    def shortfall(d: float) -> float:
        alternative = math.sqrt(hanley_mcneil_variance(0.5 + d, n_positive, n_negative))
        return settings.z_alpha * null + settings.z_beta * alternative - d

    return _smallest_root(shortfall, 0.5)


def detectable_gap(
    counts_a: tuple[int, int], counts_b: tuple[int, int], base_auc: float, settings: PowerSettings
) -> float:
    """The smallest gap AUC(b) - AUC(a) detectable between two independent strata of (positives, negatives)
    ``counts_a`` and ``counts_b``, the two AUCs lying symmetrically about ``base_auc``; NaN when no gap that keeps
    both AUCs in [0, 1] is detectable."""
    if not 0.0 < base_auc < 1.0:
        raise PowerError(f"base_auc: must lie in (0, 1), got {base_auc}")
    null = math.sqrt(hanley_mcneil_variance(base_auc, *counts_a) + hanley_mcneil_variance(base_auc, *counts_b))

    def shortfall(d: float) -> float:
        lower, upper = base_auc - d / 2.0, base_auc + d / 2.0
        alternative = math.sqrt(hanley_mcneil_variance(lower, *counts_a) + hanley_mcneil_variance(upper, *counts_b))
        return settings.z_alpha * null + settings.z_beta * alternative - d

    return _smallest_root(shortfall, 2.0 * min(base_auc, 1.0 - base_auc))
