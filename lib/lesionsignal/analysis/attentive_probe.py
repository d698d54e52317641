"""The attentive probe: one learned query attends over the frozen patch tokens, and a linear read of the
attention-weighted token decides (learned aggregation without an ROI).

score(image) = beta . sum_i a_i z_i + b,  a = softmax(z q / sqrt(D)),  z the standardised tokens.
With q = 0 the weights are uniform and the probe is the linear probe of the patch mean, which is where fitting
starts; a query that finds the tokens carrying the signal undoes the mean pool's dilution. The penalty
(weight_decay / 2)(|q|^2 + |beta|^2) is chosen from a grid by the grouped CV of the linear probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lesionsignal.analysis.detection import PairedDesign
from lesionsignal.analysis.readouts import Readout, Scored, choose_by_cv
from lesionsignal.analysis.stats import as_binary_labels
from lesionsignal.analysis.tokens import TokenScale, balanced_weights, fit_lbfgs, logistic_loss
from lesionsignal.core.validate import FieldError


@dataclass(frozen=True)
class AttentiveConfig:
    weight_decays: tuple[float, ...] = (1e-3, 1e-1)
    steps: int = 50  # L-BFGS iterations per fit
    folds: int = 5
    seed: int = 42

    def __post_init__(self) -> None:
        if not self.weight_decays or any(not w > 0 for w in self.weight_decays):
            raise FieldError("weight_decays", f"need positive values, got {list(self.weight_decays)}")
        if self.steps < 1:
            raise FieldError("steps", f"must be at least 1, got {self.steps}")


@dataclass(frozen=True, eq=False)
class AttentiveModel:
    scale: TokenScale
    query: np.ndarray  # (D,)
    coef: np.ndarray  # (D,)
    intercept: float

    def attention(self, tokens: np.ndarray) -> np.ndarray:
        """(n, N) weights of each token."""
        z = self.scale.apply(tokens)
        return _weights(z, torch.from_numpy(self.query)).numpy()

    def decision_function(self, tokens: np.ndarray) -> np.ndarray:
        z = self.scale.apply(tokens)
        pooled = torch.einsum("nt,ntd->nd", _weights(z, torch.from_numpy(self.query)), z)
        return (pooled @ torch.from_numpy(self.coef) + self.intercept).double().numpy()


def _weights(z: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    return torch.softmax(z @ query / z.shape[-1] ** 0.5, dim=1)


def fit_attentive(tokens: np.ndarray, y: object, weight_decay: float, steps: int = 50) -> AttentiveModel:
    """Fit on training rows: tokens (n, g, g, D) or (n, N, D), labels 0 / 1."""
    labels = as_binary_labels(y)
    scale = TokenScale.fit(tokens)
    z = scale.apply(tokens)
    target = torch.from_numpy(labels.astype(np.float32))
    weights = balanced_weights(labels)
    width = z.shape[-1]
    query = torch.zeros(width, requires_grad=True)
    coef = torch.zeros(width, requires_grad=True)
    intercept = torch.zeros(1, requires_grad=True)

    def loss() -> torch.Tensor:
        pooled = torch.einsum("nt,ntd->nd", _weights(z, query), z)
        penalty = 0.5 * weight_decay * (query.square().sum() + coef.square().sum())
        return logistic_loss(pooled @ coef + intercept, target, weights) + penalty

    fit_lbfgs([query, coef, intercept], loss, steps)
    return AttentiveModel(scale, query.detach().numpy().copy(), coef.detach().numpy().copy(), float(intercept.item()))


def attentive_probe(design: PairedDesign, config: AttentiveConfig) -> Scored:
    """Weight decay by grouped CV on the training rows, refit on all of them, scored once on the test rows."""
    x, y = design.x_train, as_binary_labels(design.y_train)

    def fit_score(train: np.ndarray, val: np.ndarray, decay: object) -> np.ndarray:
        return fit_attentive(x[train], y[train], float(decay), config.steps).decision_function(x[val])

    decays: Sequence[float] = config.weight_decays
    best = float(choose_by_cv(y, np.asarray(design.groups_train), decays, fit_score, config.folds, config.seed))
    model = fit_attentive(x, y, best, config.steps)
    labels = as_binary_labels(design.y_test)
    return Scored(Readout.ATTENTIVE, labels, model.decision_function(design.x_test), f"decay={best:g}", y.size)
