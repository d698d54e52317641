"""Nearest neighbours among embedding vectors by cosine similarity: the core of the same-subject retrieval checks
(during the demo encoder's training, and among the learning checks of a run)."""

from __future__ import annotations

import numpy as np


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    """(n, n) cosine similarities of the rows of (n, d) ``vectors``; the diagonal is -inf (a row is not its own
    neighbour)."""
    x = np.asarray(vectors, dtype=np.float64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity


def nearest_other(vectors: np.ndarray) -> np.ndarray:
    """For each row of (n, d) ``vectors``, the index of the most cosine-similar other row."""
    return cosine_similarity(vectors).argmax(axis=1)
