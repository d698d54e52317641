"""Operating points of a fitted probe: sensitivity at a fixed specificity, and PPV / NPV at a chosen prevalence.

The threshold for a target specificity is chosen on the probe's out-of-fold TRAINING scores (each training row
scored by the fold model that did not see it), then applied once to the test rows; no test row ever moves it.
The sensitivity a threshold chosen on the test rows themselves would give is reported beside it, labelled
optimistic. Intervals come from a stratified bootstrap that resamples both sides: the training rows (so the
threshold moves as it would with another training set) and the test rows (so the rates move as they would with
another test set). Two probes scored on the same rows (two pools of one cell) get the very same resamples, so
their difference in sensitivity has a paired interval.

PPV and NPV follow from the test sensitivity and specificity at the prevalence the run sets (Bayes' rule), not
from the test set's own class balance, which the paired designs fix at 50:50.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lesionsignal.analysis.stats import Interval, as_binary_labels, as_scores, bootstrap_indices

# Replicates handled at once: bounds the (replicates x rows) work matrices at a few tens of MB for 64,000 rows.
_CHUNK_CELLS = 4_000_000
# A product like 0.95 x 20 may come out as 19.000000000000004; this many decimals are kept before rounding up.
_COUNT_DECIMALS = 9

OPERATING_COLUMNS = (
    "target_specificity",
    "threshold",
    "train_specificity",
    "sensitivity",
    "sensitivity_low",
    "sensitivity_high",
    "specificity",
    "specificity_low",
    "specificity_high",
    "prevalence",
    "ppv",
    "ppv_low",
    "ppv_high",
    "npv",
    "npv_low",
    "npv_high",
    "sensitivity_optimistic",
    "n_test_positive",
    "n_test_negative",
)
GAP_COLUMNS = ("target_specificity", "sensitivity_a", "sensitivity_b", "gap", "gap_low", "gap_high")


class OperatingPointError(ValueError):
    """Settings or scores an operating point cannot be computed from; the message names the argument."""


@dataclass(frozen=True)
class OperatingSettings:
    """Which specificities to hold, the prevalence for PPV / NPV, and the bootstrap of the intervals."""

    specificities: tuple[float, ...] = (0.90, 0.95)
    prevalence: float = 0.03
    n_boot: int = 1000
    seed: int = 42
    level: float = 0.95

    def __post_init__(self) -> None:
        if not self.specificities:
            raise OperatingPointError("specificities: name at least one target specificity")
        for value in self.specificities:
            if not 0.0 < value < 1.0:
                raise OperatingPointError(f"specificities: each must lie in (0, 1), got {value}")
        if not 0.0 < self.prevalence < 1.0:
            raise OperatingPointError(f"prevalence: must lie in (0, 1), got {self.prevalence}")
        if self.n_boot < 1:
            raise OperatingPointError(f"n_boot: must be positive, got {self.n_boot}")
        if not 0.0 < self.level < 1.0:
            raise OperatingPointError(f"level: must lie in (0, 1), got {self.level}")


@dataclass(frozen=True, eq=False)
class OperatingPoint:
    """One target specificity of one probe: the training-chosen threshold and what it gives on the test rows."""

    target_specificity: float
    threshold: float  # positive iff score >= threshold; +inf when no training score clears the negatives
    train_specificity: float  # reached on the out-of-fold training scores (>= target)
    sensitivity: Interval
    specificity: Interval
    prevalence: float
    ppv: Interval
    npv: Interval
    sensitivity_optimistic: float  # threshold chosen on the test rows: an upper bound, never a result
    n_test_positive: int
    n_test_negative: int
    sensitivity_draws: np.ndarray  # one per bootstrap replicate, for paired differences

    def row(self) -> dict[str, float | int]:
        """The point as a row of OPERATING_COLUMNS."""
        return {
            "target_specificity": self.target_specificity,
            "threshold": self.threshold,
            "train_specificity": self.train_specificity,
            "sensitivity": self.sensitivity.estimate,
            "sensitivity_low": self.sensitivity.low,
            "sensitivity_high": self.sensitivity.high,
            "specificity": self.specificity.estimate,
            "specificity_low": self.specificity.low,
            "specificity_high": self.specificity.high,
            "prevalence": self.prevalence,
            "ppv": self.ppv.estimate,
            "ppv_low": self.ppv.low,
            "ppv_high": self.ppv.high,
            "npv": self.npv.estimate,
            "npv_low": self.npv.low,
            "npv_high": self.npv.high,
            "sensitivity_optimistic": self.sensitivity_optimistic,
            "n_test_positive": self.n_test_positive,
            "n_test_negative": self.n_test_negative,
        }


def negatives_below(n_negatives: int, specificity: float) -> int:
    """How many negatives must score below the threshold for the specificity to reach ``specificity``."""
    return max(1, math.ceil(round(specificity * n_negatives, _COUNT_DECIMALS)))


def threshold_at_specificity(y: object, scores: object, specificity: float) -> float:
    """The lowest realisable threshold whose specificity on (y, scores) is at least ``specificity``.

    A row is positive iff its score >= threshold. With the negatives sorted, k = ceil(specificity x negatives) of
    them must score below it, so it must exceed the k-th lowest negative score v; the lowest score of any row above
    v is the lowest such threshold that some row reaches (the candidates are the scores themselves, as for the F1
    threshold), and the lowest one keeps the most positives. When no score lies above v, nothing can be called
    positive: +inf.
    """
    labels = as_binary_labels(y)
    values = as_scores(scores, labels.size)
    negatives = np.sort(values[labels == 0])
    v = negatives[negatives_below(negatives.size, specificity) - 1]
    above = values[values > v]
    return float(above.min()) if above.size else math.inf


def rates_at(y: object, scores: object, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the rule score >= threshold on the rows (y, scores)."""
    labels = as_binary_labels(y)
    values = as_scores(scores, labels.size)
    called = values >= threshold
    return float(called[labels == 1].mean()), float((~called[labels == 0]).mean())


def predictive_values(sensitivity: object, specificity: object, prevalence: float) -> tuple[np.ndarray, np.ndarray]:
    """(PPV, NPV) at ``prevalence`` by Bayes' rule; NaN where nothing is called positive (or negative)."""
    se = np.asarray(sensitivity, dtype=np.float64)
    sp = np.asarray(specificity, dtype=np.float64)
    true_pos, false_pos = se * prevalence, (1.0 - sp) * (1.0 - prevalence)
    true_neg, false_neg = sp * (1.0 - prevalence), (1.0 - se) * prevalence
    with np.errstate(invalid="ignore", divide="ignore"):
        ppv = np.where(true_pos + false_pos > 0, true_pos / (true_pos + false_pos), np.nan)
        npv = np.where(true_neg + false_neg > 0, true_neg / (true_neg + false_neg), np.nan)
    return ppv, npv


def _thresholds_of_resamples(values: np.ndarray, labels: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """``threshold_at_specificity`` of every resample (row of ``idx``, stratified: its positives first, then its
    negatives, as ``bootstrap_indices`` lays them out)."""
    n_pos = int(labels.sum())
    resampled = values[idx]
    negatives = resampled[:, n_pos:]
    v = np.partition(negatives, k - 1, axis=1)[:, k - 1]
    above = np.where(resampled > v[:, None], resampled, np.inf)
    return above.min(axis=1)


def _rates_of_resamples(
    values: np.ndarray, labels: np.ndarray, idx: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n_pos = int(labels.sum())
    called = values[idx] >= thresholds[:, None]
    return called[:, :n_pos].mean(axis=1), (~called[:, n_pos:]).mean(axis=1)


def _interval(estimate: float, draws: np.ndarray, level: float) -> Interval:
    tail = 100.0 * (1.0 - level) / 2.0
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        return Interval(float(estimate), math.nan, math.nan)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return Interval(float(estimate), float(low), float(high))


def operating_points(
    train_labels: object,
    train_scores: object,
    test_labels: object,
    test_scores: object,
    settings: OperatingSettings,
) -> list[OperatingPoint]:
    """One OperatingPoint per target specificity; thresholds from the training scores only (out-of-fold)."""
    y_train = as_binary_labels(train_labels, "train_labels")
    s_train = as_scores(train_scores, y_train.size, "train_scores")
    y_test = as_binary_labels(test_labels, "test_labels")
    s_test = as_scores(test_scores, y_test.size, "test_scores")
    # Seeds of the two sides differ, so a training resample is never the mirror of a test resample; both depend on
    # the settings' seed alone, so every pool of a cell gets the same resamples (paired differences).
    train_idx = bootstrap_indices(y_train, settings.n_boot, settings.seed)
    test_idx = bootstrap_indices(y_test, settings.n_boot, settings.seed + 1)
    n_neg_train = int((y_train == 0).sum())
    points = []
    for target in settings.specificities:
        threshold = threshold_at_specificity(y_train, s_train, target)
        train_specificity = rates_at(y_train, s_train, threshold)[1]
        se, sp = rates_at(y_test, s_test, threshold)
        optimistic = rates_at(y_test, s_test, threshold_at_specificity(y_test, s_test, target))[0]
        k = negatives_below(n_neg_train, target)
        se_draws, sp_draws = np.empty(settings.n_boot), np.empty(settings.n_boot)
        chunk = max(1, _CHUNK_CELLS // max(y_train.size, y_test.size))
        for start in range(0, settings.n_boot, chunk):
            part = slice(start, start + chunk)
            thresholds = _thresholds_of_resamples(s_train, y_train, train_idx[part], k)
            se_draws[part], sp_draws[part] = _rates_of_resamples(s_test, y_test, test_idx[part], thresholds)
        ppv, npv = predictive_values(se, sp, settings.prevalence)
        ppv_draws, npv_draws = predictive_values(se_draws, sp_draws, settings.prevalence)
        points.append(
            OperatingPoint(
                target_specificity=target,
                threshold=threshold,
                train_specificity=train_specificity,
                sensitivity=_interval(se, se_draws, settings.level),
                specificity=_interval(sp, sp_draws, settings.level),
                prevalence=settings.prevalence,
                ppv=_interval(float(ppv), ppv_draws, settings.level),
                npv=_interval(float(npv), npv_draws, settings.level),
                sensitivity_optimistic=optimistic,
                n_test_positive=int(y_test.sum()),
                n_test_negative=int((y_test == 0).sum()),
                sensitivity_draws=se_draws,
            )
        )
    return points


def sensitivity_gap(a: OperatingPoint, b: OperatingPoint, level: float = 0.95) -> dict[str, float]:
    """Sensitivity of ``a`` minus that of ``b`` at one target specificity, with the paired percentile interval.

    Only meaningful when both came from the same rows with the same settings (two pools of one cell), so that
    their bootstrap draws are the same resamples; the row counts and the target are checked.
    """
    same_rows = (a.n_test_positive, a.n_test_negative) == (b.n_test_positive, b.n_test_negative)
    same_draws = a.sensitivity_draws.shape == b.sensitivity_draws.shape
    if a.target_specificity != b.target_specificity or not same_rows or not same_draws:
        raise OperatingPointError("sensitivity_gap: the two operating points were not computed on the same rows")
    gap = _interval(a.sensitivity.estimate - b.sensitivity.estimate, a.sensitivity_draws - b.sensitivity_draws, level)
    return {
        "target_specificity": a.target_specificity,
        "sensitivity_a": a.sensitivity.estimate,
        "sensitivity_b": b.sensitivity.estimate,
        "gap": gap.estimate,
        "gap_low": gap.low,
        "gap_high": gap.high,
    }
