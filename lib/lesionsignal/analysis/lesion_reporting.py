"""What a clinical reader asks of the natural-lesion probes: operating points and size strata beyond the median.

Every fitted lesion probe (``lesion_probes.PoolFit``) gives its operating points (sensitivity at fixed
specificities from out-of-fold training thresholds, PPV / NPV at the run's prevalence; ``operating_points``), the
box-level patch-local minus CLS difference in sensitivity on paired resamples, and its size strata under every
scheme of the run (``size_strata``) with the counts and detectable differences of each.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lesionsignal.analysis.lesion_probes import Level, PoolFit
from lesionsignal.analysis.operating_points import (
    GAP_COLUMNS,
    OPERATING_COLUMNS,
    OperatingPoint,
    OperatingSettings,
    operating_points,
    sensitivity_gap,
)
from lesionsignal.analysis.power import PowerSettings
from lesionsignal.analysis.size_strata import GAP_COLUMNS as STRATA_GAP_COLUMNS
from lesionsignal.analysis.size_strata import STRATUM_COLUMNS, StrataScheme, strata_tables
from lesionsignal.core.kinds import Pool

FIT_KEY = ("model", "lesion_class", "level", "pool")
OPERATING_FIT_COLUMNS = (*FIT_KEY, *OPERATING_COLUMNS)
SENSITIVITY_GAP_COLUMNS = ("model", "lesion_class", "level", *GAP_COLUMNS)
STRATA_FIT_COLUMNS = (*FIT_KEY, *STRATUM_COLUMNS)
STRATA_GAP_FIT_COLUMNS = (*FIT_KEY, *STRATA_GAP_COLUMNS)


def _key(fit: PoolFit) -> dict[str, str]:
    return {"model": fit.model, "lesion_class": fit.lesion_class, "level": fit.level.value, "pool": fit.pool}


def fit_points(fit: PoolFit, settings: OperatingSettings) -> list[OperatingPoint]:
    return operating_points(fit.train_labels, fit.train_scores, fit.test_labels, fit.test_scores, settings)


def operating_tables(fits: Sequence[PoolFit], settings: OperatingSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every fit's operating points (OPERATING_FIT_COLUMNS), and the box-level sensitivity of patch-local minus CLS
    per (model, class) and target specificity (SENSITIVITY_GAP_COLUMNS)."""
    points = {id(fit): fit_points(fit, settings) for fit in fits}
    rows = [{**_key(fit), **point.row()} for fit in fits for point in points[id(fit)]]
    by_cell = {(f.model, f.lesion_class, f.level, f.pool): f for f in fits}
    gaps = []
    for (model, name, level, pool), fit in by_cell.items():
        other = by_cell.get((model, name, level, str(Pool.CLS)))
        if level is not Level.BOX or pool != str(Pool.PATCH_LOCAL) or other is None:
            continue
        key = {"model": model, "lesion_class": name, "level": level.value}
        pairs = zip(points[id(fit)], points[id(other)], strict=True)
        gaps += [{**key, **sensitivity_gap(a, b, settings.level)} for a, b in pairs]
    return (
        pd.DataFrame(rows, columns=list(OPERATING_FIT_COLUMNS)),
        pd.DataFrame(gaps, columns=list(SENSITIVITY_GAP_COLUMNS)),
    )


def size_strata_tables(
    fits: Sequence[PoolFit], schemes: Sequence[StrataScheme], power: PowerSettings, n_boot: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every fit's strata under every scheme (STRATA_FIT_COLUMNS) and each scheme's smallest-to-largest gap with
    the gap its strata could detect (STRATA_GAP_FIT_COLUMNS)."""
    strata, gaps = [], []
    for fit in fits:
        own, own_gaps = strata_tables(fit.strata_rows(), schemes, power, n_boot, seed)
        key = _key(fit)
        strata.append(own.assign(**key))
        gaps.append(own_gaps.assign(**key))
    strata_frame = pd.concat(strata, ignore_index=True) if strata else pd.DataFrame(columns=STRATA_FIT_COLUMNS)
    gap_frame = pd.concat(gaps, ignore_index=True) if gaps else pd.DataFrame(columns=STRATA_GAP_FIT_COLUMNS)
    return strata_frame[list(STRATA_FIT_COLUMNS)], gap_frame[list(STRATA_GAP_FIT_COLUMNS)]
