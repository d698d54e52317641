"""Readouts beside the linear probe: what each one scored on the test rows, hyperparameters chosen by grouped CV, and
the row a results table gets (AUC, its bootstrap CI, and the paired difference from a reference on the same rows).

Every readout here is trained on the training rows only and chooses its hyperparameter the way the linear probe
chooses C (protocol section 4): mean validation AUC over the same grouped, stratified folds, the first best value
in the order given winning a tie.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lesionsignal.analysis.detection import PairedDesign
from lesionsignal.analysis.probe import ProbeConfig, fit_probe, grouped_stratified_folds
from lesionsignal.analysis.stats import auc, bootstrap_auc_ci, paired_bootstrap_delta

READOUT_COLUMNS = ("readout", "auc", "ci_low", "ci_high", "delta_vs_cls", "p_vs_cls", "choice", "n_train", "n_test")


class Readout(enum.StrEnum):
    CLS = "cls"
    PATCH_MEAN = "patch_mean"
    PATCH_LOCAL = "patch_local"  # the oracle box
    ATTENTIVE = "attentive"  # one learned query attending over the frozen patch tokens
    KNN = "knn"  # k nearest training rows of the CLS vector


@dataclass(frozen=True, eq=False)
class Scored:
    """One readout's scores on the test rows, and what it chose."""

    name: str
    test_labels: np.ndarray
    test_scores: np.ndarray
    choice: str  # the hyperparameter picked by CV, as text
    n_train: int

    @property
    def auc(self) -> float:
        return auc(self.test_labels, self.test_scores)


FitScore = Callable[[np.ndarray, np.ndarray, object], np.ndarray]


def choose_by_cv(
    y: np.ndarray, groups: np.ndarray, candidates: Sequence[object], fit_score: FitScore, folds: int, seed: int
) -> object:
    """The candidate with the best mean validation AUC; ``fit_score(train_rows, val_rows, candidate)`` returns the
    validation rows' scores. One candidate needs no folds."""
    if len(candidates) == 1:
        return candidates[0]
    splits = grouped_stratified_folds(y, groups, folds, seed)
    means = [float(np.mean([auc(y[val], fit_score(train, val, c)) for train, val in splits])) for c in candidates]
    return candidates[int(np.argmax(means))]


def linear_readout(name: str, design: PairedDesign, config: ProbeConfig) -> Scored:
    """The linear probe of protocol section 4 as a readout."""
    result = fit_probe(design.x_train, design.y_train, design.groups_train, design.x_test, design.y_test, config)
    return Scored(name, result.test_labels, result.test_scores, f"C={result.best_c:g}", result.n_train)


def readout_row(scored: Scored, reference: Scored | None, n_boot: int, paired_n_boot: int, seed: int) -> dict:
    """AUC with its stratified bootstrap CI, and AUC minus the reference's on the same test rows (paired bootstrap)."""
    interval = bootstrap_auc_ci(scored.test_labels, scored.test_scores, n_boot=n_boot, seed=seed)
    row = {
        "readout": scored.name,
        "auc": interval.estimate,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "delta_vs_cls": np.nan,
        "p_vs_cls": np.nan,
        "choice": scored.choice,
        "n_train": scored.n_train,
        "n_test": int(scored.test_labels.size),
    }
    if reference is not None and reference is not scored:
        if not np.array_equal(reference.test_labels, scored.test_labels):
            raise ValueError(f"{scored.name} and {reference.name} were scored on different test rows")
        delta = paired_bootstrap_delta(
            scored.test_labels, scored.test_scores, reference.test_scores, n_boot=paired_n_boot, seed=seed
        )
        row["delta_vs_cls"], row["p_vs_cls"] = delta.estimate, delta.p
    return row
