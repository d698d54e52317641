"""The natural-lesion probes on two splits of one cohort, side by side: ChestX-Det10's official split (the paper's,
which puts some patients on both sides) against its patient-disjoint re-split (protocol section 1.3).

For every probe both splits have, the AUC and the median-stratum gap (large minus small) of each, and the re-split
minus the official value with a percentile interval. The two test sets are different rows (they share the test
images of the patients that never crossed), so each split is resampled on its own and the intervals of the
differences treat the two as independent: sharing rows makes the true difference vary less, so the intervals err
wide, on the safe side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lesionsignal.analysis.lesion_probes import PoolFit
from lesionsignal.analysis.size_strata import StrataScheme, stratum_auc_draws
from lesionsignal.analysis.stats import bootstrap_indices, resampled_aucs

MEDIAN = StrataScheme((0.5,))
COMPARISON_COLUMNS = (
    "model",
    "lesion_class",
    "level",
    "pool",
    "auc_official",
    "auc_resplit",
    "auc_difference",
    "auc_difference_low",
    "auc_difference_high",
    "gap_official",
    "gap_resplit",
    "gap_difference",
    "gap_difference_low",
    "gap_difference_high",
    "n_test_positive_official",
    "n_test_positive_resplit",
)


def _interval(estimate: float, draws: np.ndarray, level: float) -> tuple[float, float, float]:
    tail = 100.0 * (1.0 - level) / 2.0
    finite = draws[np.isfinite(draws)]
    if math.isnan(estimate) or not finite.size:
        return estimate, math.nan, math.nan
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return estimate, float(low), float(high)


def _auc_draws(fit: PoolFit, n_boot: int, seed: int) -> np.ndarray:
    return resampled_aucs(fit.test_labels, fit.test_scores, bootstrap_indices(fit.test_labels, n_boot, seed))


def _gap_draws(fit: PoolFit, n_boot: int, seed: int) -> tuple[float, np.ndarray]:
    if fit.strata_note:
        return math.nan, np.full(n_boot, np.nan)
    draws = stratum_auc_draws(fit.strata_rows(), MEDIAN, n_boot, seed)
    return fit.strata["gap"], draws[-1] - draws[0]


def compare_splits(
    official: Sequence[PoolFit], resplit: Sequence[PoolFit], n_boot: int, seed: int, level: float = 0.95
) -> pd.DataFrame:
    """One row per (model, class, level, pool) fitted on both splits (COMPARISON_COLUMNS)."""
    other = {(f.model, f.lesion_class, f.level, f.pool): f for f in resplit}
    rows = []
    for a in official:
        b = other.get((a.model, a.lesion_class, a.level, a.pool))
        if b is None:
            continue
        # Different seeds on the two sides: independent resamples of two different test sets.
        auc_diff = _interval(b.auc - a.auc, _auc_draws(b, n_boot, seed + 1) - _auc_draws(a, n_boot, seed), level)
        gap_a, draws_a = _gap_draws(a, n_boot, seed)
        gap_b, draws_b = _gap_draws(b, n_boot, seed + 1)
        gap_diff = _interval(gap_b - gap_a, draws_b - draws_a, level)
        rows.append(
            (
                a.model,
                a.lesion_class,
                a.level.value,
                a.pool,
                a.auc,
                b.auc,
                *auc_diff,
                gap_a,
                gap_b,
                *gap_diff,
                int(a.test_labels.sum()),
                int(b.test_labels.sum()),
            )
        )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
