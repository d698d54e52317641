"""The k-nearest-neighbour probe: a non-linear read of a frozen vector (the CLS token), for whether a signal the
linear probe misses is there in the vector's neighbourhoods.

Features are standardised on the training rows; neighbours are the k training rows of highest cosine similarity; a
row's score is its neighbours' class-balanced vote (each positive neighbour counts 1 / n_pos, each negative
-1 / n_neg), so an unbalanced training set does not tilt it. k is chosen by the linear probe's grouped CV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionsignal.analysis.detection import PairedDesign
from lesionsignal.analysis.readouts import Readout, Scored, choose_by_cv
from lesionsignal.analysis.stats import as_binary_labels
from lesionsignal.core.validate import FieldError


@dataclass(frozen=True)
class KnnConfig:
    ks: tuple[int, ...] = (5, 15, 45)
    folds: int = 5
    seed: int = 42

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise FieldError("ks", f"need positive neighbour counts, got {list(self.ks)}")


def _unit_rows(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - mean) / scale
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norms > 0, norms, 1.0)


def knn_scores(x_train: np.ndarray, y_train: object, x_query: np.ndarray, k: int) -> np.ndarray:
    """The class-balanced vote of each query row's k most similar training rows (ties: lower row first)."""
    labels = as_binary_labels(y_train)
    train = np.asarray(x_train, dtype=np.float64)
    mean, scale = train.mean(axis=0), train.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    similarity = _unit_rows(np.asarray(x_query, np.float64), mean, scale) @ _unit_rows(train, mean, scale).T
    k = min(k, labels.size)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    vote = np.where(labels == 1, 1.0 / np.count_nonzero(labels == 1), -1.0 / np.count_nonzero(labels == 0))
    return vote[nearest].sum(axis=1)


def knn_probe(design: PairedDesign, config: KnnConfig) -> Scored:
    """k by grouped CV on the training rows; the test rows' neighbours are all training rows."""
    x, y = np.asarray(design.x_train, np.float64), as_binary_labels(design.y_train)

    def fit_score(train: np.ndarray, val: np.ndarray, k: object) -> np.ndarray:
        return knn_scores(x[train], y[train], x[val], int(k))  # type: ignore[call-overload]

    best = int(choose_by_cv(y, np.asarray(design.groups_train), config.ks, fit_score, config.folds, config.seed))  # type: ignore[call-overload]
    labels = as_binary_labels(design.y_test)
    return Scored(Readout.KNN, labels, knn_scores(x, y, design.x_test, best), f"k={best}", y.size)
