"""What an encoder's patch tokens look like: the first principal components of the token grid as colours.

The PCA is fitted jointly over every token of every film given, so colours compare across those films (the usual
DINO visualisation). A trained encoder's components follow anatomy (lung fields, mediastinum, ribs, borders); a
random-init encoder's follow little but the pixel intensity its patch embedding projects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionsignal.features.encoder import Encoder

COMPONENTS = 3
_CLIP_PERCENTILES = (1.0, 99.0)  # a few extreme tokens would otherwise wash every other token to mid-gray


@dataclass(frozen=True)
class TokenPca:
    """(films, grid, grid, 3) components scaled to [0, 1], and the variance fraction each component explains."""

    maps: np.ndarray
    explained: np.ndarray


def token_pca(tokens: np.ndarray) -> TokenPca:
    """PCA of (films, grid, grid, width) tokens, fitted over all of them together; signs fixed so that each
    component's largest loading is positive (an SVD's sign is arbitrary)."""
    if tokens.ndim != 4:
        raise ValueError(f"tokens must be (films, grid, grid, width), got shape {tokens.shape}")
    films, rows, cols, width = tokens.shape
    x = tokens.reshape(-1, width).astype(np.float64)
    x = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x, full_matrices=False)
    k = min(COMPONENTS, vt.shape[0])
    basis = vt[:k]
    signs = np.sign(basis[np.arange(k), np.abs(basis).argmax(axis=1)])
    projected = x @ (basis * signs[:, None]).T
    lo, hi = np.percentile(projected, _CLIP_PERCENTILES, axis=0)
    scaled = np.clip((projected - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
    if k < COMPONENTS:
        scaled = np.pad(scaled, ((0, 0), (0, COMPONENTS - k)))
    variance = singular**2
    explained = variance[:k] / max(variance.sum(), 1e-300)
    return TokenPca(scaled.reshape(films, rows, cols, COMPONENTS).astype(np.float32), explained)


def encoder_token_pca(encoder: Encoder, canvases: np.ndarray) -> TokenPca:
    """The token PCA of ``encoder`` on (films, S, S) uint8 canvases."""
    return token_pca(encoder.encode(canvases).patch_tokens.numpy())
