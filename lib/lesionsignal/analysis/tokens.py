"""Frozen token grids as the input of a trained readout: standardisation fitted on the training tokens, the
class-balanced logistic loss the linear probe uses, and a deterministic full-batch optimiser.

The readouts that look at tokens (the attentive probe, the multiple-instance scorer) are small models of a few
hundred to a few thousand weights over a fixed grid, so they are fitted full-batch with L-BFGS from a fixed start:
no minibatch order, no random initialisation, the same numbers on every run of the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lesionsignal.analysis.stats import as_binary_labels


class TokenInputError(ValueError):
    """Token grids a readout cannot use; the message names the argument and the shape."""


@dataclass(frozen=True, eq=False)
class TokenScale:
    """Per-feature mean and scale of the training tokens (an exactly constant feature gets scale 1)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, tokens: np.ndarray) -> TokenScale:
        flat = as_token_rows(tokens, "tokens").reshape(-1, tokens.shape[-1]).astype(np.float64)
        mean = flat.mean(axis=0)
        scale = flat.std(axis=0)
        return cls(mean, np.where(scale > 0, scale, 1.0))

    def apply(self, tokens: np.ndarray) -> torch.Tensor:
        """(n, N, D) float32 standardised tokens."""
        rows = as_token_rows(tokens, "tokens")
        out = (rows.reshape(rows.shape[0], -1, rows.shape[-1]).astype(np.float32) - self.mean) / self.scale
        return torch.from_numpy(out.astype(np.float32))


def as_token_rows(tokens: object, name: str) -> np.ndarray:
    """(n, g, g, D) or (n, N, D) token grids, finite."""
    arr = np.asarray(tokens)
    if arr.ndim not in (3, 4) or arr.shape[0] == 0:
        raise TokenInputError(f"{name}: expected (rows, grid, grid, width) or (rows, tokens, width), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise TokenInputError(f"{name}: non-finite values")
    return arr


def balanced_weights(y: np.ndarray) -> torch.Tensor:
    """n / (2 n_c) per row, as the linear probe weighs its classes."""
    labels = as_binary_labels(y)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return torch.from_numpy((labels.size / (2.0 * counts))[labels]).float()


def fit_lbfgs(params: Sequence[torch.Tensor], loss_fn: Callable[[], torch.Tensor], steps: int) -> None:
    """Minimise ``loss_fn`` over ``params`` in place: full-batch L-BFGS with a strong-Wolfe line search."""
    optimiser = torch.optim.LBFGS(list(params), max_iter=steps, line_search_fn="strong_wolfe", history_size=20)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)


def logistic_loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=weights)
