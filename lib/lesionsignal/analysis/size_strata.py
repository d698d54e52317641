"""Size strata at any percentiles of the positive areas, each with its AUC, its counts and its detectable difference.

The paper splits the test positives at their median area; a scheme here cuts them at any percentiles (0.5: the
median split; 1/3: the smallest third against the rest; 1/3 and 2/3: terciles). As in the median split, an area
equal to a cut goes to the lower stratum, so the scheme (0.5,) reproduces the median strata exactly. Each stratum is
scored against its negatives: at image level every test negative (shared by all strata), at box level the negatives
drawn for its own positives (size-matched). Beside each stratum's AUC stand its positive and negative counts and
the smallest AUC - 0.5 it could detect; beside each scheme, the gap between its largest and smallest stratum and the
smallest gap the two strata could detect (``analysis.power``), so a reader sees which gaps the data can support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from lesionsignal.analysis.power import PowerSettings, detectable_gap, detectable_vs_chance
from lesionsignal.analysis.stats import bootstrap_auc_ci, bootstrap_indices, resampled_aucs

SHARED = -1  # owner of a negative every stratum is scored against (image level)
STRATUM_COLUMNS = (
    "scheme",
    "stratum",
    "area_low",
    "area_high",
    "n_positive",
    "n_negative",
    "auc",
    "ci_low",
    "ci_high",
    "detectable_vs_chance",
)
GAP_COLUMNS = ("scheme", "auc_smallest", "auc_largest", "gap", "detectable_gap", "supported", "note")


class StrataError(ValueError):
    """A scheme or rows strata cannot be formed from; the message names the argument."""


@dataclass(frozen=True)
class StrataScheme:
    """Cut points as fractions of the positives' area distribution, increasing, each strictly inside (0, 1)."""

    cuts: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.cuts:
            raise StrataError("cuts: name at least one percentile")
        if any(not 0.0 < c < 1.0 for c in self.cuts) or list(self.cuts) != sorted(set(self.cuts)):
            raise StrataError(f"cuts: need increasing fractions strictly between 0 and 1, got {list(self.cuts)}")

    @property
    def name(self) -> str:
        """'median' for (0.5,), else the cuts as rounded percentiles: 'p33', 'p33-p67'."""
        if self.cuts == (0.5,):
            return "median"
        return "-".join(f"p{round(100 * c)}" for c in self.cuts)

    @property
    def count(self) -> int:
        return len(self.cuts) + 1

    def stratum_names(self) -> tuple[str, ...]:
        """'1 of 3' (the smallest areas) to '3 of 3' (the largest)."""
        return tuple(f"{i + 1} of {self.count}" for i in range(self.count))


def cut_values(areas: np.ndarray, scheme: StrataScheme) -> np.ndarray:
    """The area at each cut: numpy's linear-interpolation quantile, so 0.5 is the median."""
    return np.quantile(np.asarray(areas, dtype=np.float64), scheme.cuts)


def stratum_of(areas: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Index of each area's stratum: the number of cuts strictly below it (an area equal to a cut goes lower)."""
    return np.searchsorted(np.asarray(cuts, dtype=np.float64), np.asarray(areas, dtype=np.float64), side="left")


@dataclass(frozen=True, eq=False)
class StrataRows:
    """Test rows of one probe as strata need them: labels, scores, the positives' areas, and each row's owner (a
    positive's own id; a negative's positive, or SHARED when every stratum uses it)."""

    labels: np.ndarray
    scores: np.ndarray
    areas: np.ndarray  # NaN for negatives
    owners: np.ndarray

    def __post_init__(self) -> None:
        n = self.labels.size
        if not (self.scores.size == self.areas.size == self.owners.size == n):
            raise StrataError(f"rows: {n} labels with {self.scores.size} scores, {self.areas.size} areas, owners")
        positives = self.labels == 1
        if np.isnan(self.areas[positives]).any() or (self.areas[positives] <= 0).any():
            raise StrataError("areas: every positive row needs a positive area")


def _stratum_masks(rows: StrataRows, scheme: StrataScheme) -> tuple[list[np.ndarray], np.ndarray]:
    positives = rows.labels == 1
    cuts = cut_values(rows.areas[positives], scheme)
    strata = np.full(rows.labels.size, -1)
    strata[positives] = stratum_of(rows.areas[positives], cuts)
    stratum_of_owner = {int(o): int(s) for o, s in zip(rows.owners[positives], strata[positives], strict=True)}
    negative = ~positives
    owned = np.asarray([stratum_of_owner.get(int(o), -1) for o in rows.owners[negative]], dtype=int)
    strata[negative] = owned
    shared = negative & (rows.owners == SHARED)
    masks = [(strata == k) | shared for k in range(scheme.count)]
    return masks, cuts


def scheme_strata(
    rows: StrataRows, scheme: StrataScheme, power: PowerSettings, n_boot: int, seed: int
) -> tuple[pd.DataFrame, dict[str, object]]:
    """One row per stratum (STRATUM_COLUMNS) and the scheme's gap row (GAP_COLUMNS)."""
    masks, cuts = _stratum_masks(rows, scheme)
    edges = [0.0, *cuts.tolist(), math.inf]
    stratum_rows, aucs, counts = [], [], []
    positives = rows.areas[rows.labels == 1]
    for k, (name, mask) in enumerate(zip(scheme.stratum_names(), masks, strict=True)):
        labels, scores = rows.labels[mask], rows.scores[mask]
        n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
        mine = positives[(positives > edges[k]) & (positives <= edges[k + 1])]
        value, low, high, mdd = math.nan, math.nan, math.nan, math.nan
        if n_pos and n_neg:
            interval = bootstrap_auc_ci(labels, scores, n_boot=n_boot, seed=seed)
            # scikit-learn's AUC, as the median strata of analysis.lesions use: the median scheme gives their bits
            value, low, high = float(roc_auc_score(labels, scores)), interval.low, interval.high
            mdd = detectable_vs_chance(n_pos, n_neg, power)
        aucs.append(value)
        counts.append((n_pos, n_neg))
        area_low = float(mine.min()) if mine.size else math.nan
        area_high = float(mine.max()) if mine.size else math.nan
        stratum_rows.append((scheme.name, name, area_low, area_high, n_pos, n_neg, value, low, high, mdd))
    gap = _gap_row(scheme, aucs, counts, float(roc_auc_score(rows.labels, rows.scores)), power)
    return pd.DataFrame(stratum_rows, columns=list(STRATUM_COLUMNS)), gap


def _gap_row(
    scheme: StrataScheme,
    aucs: Sequence[float],
    counts: Sequence[tuple[int, int]],
    overall: float,
    power: PowerSettings,
) -> dict[str, object]:
    smallest, largest = aucs[0], aucs[-1]
    row: dict[str, object] = {"scheme": scheme.name, "auc_smallest": smallest, "auc_largest": largest}
    if math.isnan(smallest) or math.isnan(largest):
        return {**row, "gap": math.nan, "detectable_gap": math.nan, "supported": False, "note": "a stratum is empty"}
    # The two AUCs are placed about the probe's overall AUC, kept off the ends where the variance vanishes.
    base = min(max(overall, 0.5), 0.99)
    detectable = detectable_gap(counts[0], counts[-1], base, power)
    gap = largest - smallest
    supported = bool(not math.isnan(detectable) and abs(gap) >= detectable)
    note = "" if not math.isnan(detectable) else "too few rows to detect any gap"
    return {**row, "gap": gap, "detectable_gap": detectable, "supported": supported, "note": note}


def stratum_auc_draws(rows: StrataRows, scheme: StrataScheme, n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap AUCs of each stratum (its rows resampled apart, stratified; stratum k with seed + k); NaN draws for
    a stratum without positives or negatives."""
    masks, _ = _stratum_masks(rows, scheme)
    draws = []
    for k, mask in enumerate(masks):
        labels, scores = rows.labels[mask], rows.scores[mask]
        if not labels.any() or labels.all():
            draws.append(np.full(n_boot, np.nan))
            continue
        draws.append(resampled_aucs(labels, scores, bootstrap_indices(labels, n_boot, seed + k)))
    return draws


def strata_tables(
    rows: StrataRows, schemes: Sequence[StrataScheme], power: PowerSettings, n_boot: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every scheme's strata and gaps for one probe's test rows."""
    parts = [scheme_strata(rows, scheme, power, n_boot, seed) for scheme in schemes]
    strata = pd.concat([p[0] for p in parts], ignore_index=True) if parts else pd.DataFrame(columns=STRATUM_COLUMNS)
    gaps = pd.DataFrame([p[1] for p in parts], columns=list(GAP_COLUMNS))
    return strata, gaps
