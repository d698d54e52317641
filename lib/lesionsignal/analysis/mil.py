"""The weakly supervised token scorer (multiple-instance learning): a linear score per token, trained from
image-level labels only, whose image score is the max or the mean of the top k token scores.

No box is ever shown to it: the tokens it scores highest on an image are the model-chosen region of that image
(``analysis.rois``). It starts from the direction that separates the classes' mean tokens, so the first top-k
selection already leans towards the signal, and is fitted full-batch (``analysis.tokens``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch

from lesionsignal.analysis.stats import as_binary_labels
from lesionsignal.analysis.tokens import TokenScale, balanced_weights, fit_lbfgs, logistic_loss
from lesionsignal.core.validate import FieldError

_START_NORM = 0.1  # length of the starting direction: small, so the first scores do not saturate the loss


class MilPool(enum.StrEnum):
    MAX = "max"
    TOP_K = "top_k"


@dataclass(frozen=True)
class MilConfig:
    pool: MilPool = MilPool.TOP_K
    top_k: int = 4
    l2: float = 1e-2
    steps: int = 50

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise FieldError("top_k", f"must be at least 1, got {self.top_k}")
        if not self.l2 >= 0:
            raise FieldError("l2", f"must be non-negative, got {self.l2}")
        if self.steps < 1:
            raise FieldError("steps", f"must be at least 1, got {self.steps}")

    @property
    def k(self) -> int:
        return 1 if self.pool is MilPool.MAX else self.top_k


def _image_scores(token_scores: torch.Tensor, k: int) -> torch.Tensor:
    return token_scores.topk(min(k, token_scores.shape[1]), dim=1).values.mean(dim=1)


@dataclass(frozen=True, eq=False)
class MilModel:
    scale: TokenScale
    coef: np.ndarray
    intercept: float
    k: int

    def token_scores(self, tokens: np.ndarray) -> np.ndarray:
        """(n, N) score of every token (row-major over the grid)."""
        z = self.scale.apply(tokens)
        return (z @ torch.from_numpy(self.coef) + self.intercept).double().numpy()

    def image_scores(self, tokens: np.ndarray) -> np.ndarray:
        return _image_scores(torch.from_numpy(self.token_scores(tokens)), self.k).numpy()


def fit_mil(tokens: np.ndarray, y: object, config: MilConfig) -> MilModel:
    """Fit on training rows: tokens (n, g, g, D) or (n, N, D), image labels 0 / 1."""
    labels = as_binary_labels(y)
    scale = TokenScale.fit(tokens)
    z = scale.apply(tokens)
    target = torch.from_numpy(labels.astype(np.float32))
    weights = balanced_weights(labels)
    means = z.mean(dim=1)
    start = means[target == 1].mean(dim=0) - means[target == 0].mean(dim=0)
    start = start / start.norm().clamp_min(1e-12) * _START_NORM
    coef = start.clone().requires_grad_(True)
    intercept = torch.zeros(1, requires_grad=True)

    def loss() -> torch.Tensor:
        scores = _image_scores(z @ coef + intercept, config.k)
        return logistic_loss(scores, target, weights) + 0.5 * config.l2 * coef.square().sum()

    fit_lbfgs([coef, intercept], loss, config.steps)
    return MilModel(scale, coef.detach().numpy().copy(), float(intercept.item()), config.k)
