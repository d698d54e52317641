"""Masked-image modelling (MAE, He et al. 2022) on a transformers Dinov2Model, written small.

The Dinov2Model's own embeddings (patch projection, CLS token, position embeddings) and blocks run on the CLS token
and a random quarter of the patches; a small decoder puts learned mask tokens back in the other places and predicts
every patch's pixels; the loss is the mean squared error on the masked patches, each target patch normalised by
its own mean and variance (MAE's normalised-pixel target). Only the encoder is kept.

Optionally (``Masking.global_weight``) a linear head also reconstructs a small standardised thumbnail of the whole
view from the CLS token alone, so that the global token has to carry the film's layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lesionsignal.training.recipe import Masking


class MaeDecoder(nn.Module):
    """Encoder width -> decoder width, mask tokens, learned position embeddings, a few pre-norm blocks, pixels."""

    def __init__(self, encoder_dim: int, n_patches: int, patch_pixels: int, masking: Masking) -> None:
        super().__init__()
        dim = masking.decoder_dim
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.zeros(1, 1 + n_patches, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, masking.decoder_heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(masking.decoder_depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, patch_pixels)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor, n_patches: int) -> torch.Tensor:
        """hidden: (B, 1 + k, D) encoder output (CLS first); keep: (B, k) kept patch indices -> (B, N, pixels)."""
        x = self.embed(hidden)
        batch, _, dim = x.shape
        full = self.mask_token.expand(batch, n_patches, dim).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dim), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))[:, 1:]


def random_keep(batch: int, n_patches: int, mask_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(B, k) indices of the patches each image keeps, k = round(N (1 - ratio)), sorted; seeded by ``generator``."""
    keep = max(1, round(n_patches * (1 - mask_ratio)))
    noise = torch.rand(batch, n_patches, generator=generator)
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values


def encode_visible(encoder: nn.Module, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The Dinov2Model on the CLS token and the kept patches only: (B, 1 + k, D), after its final LayerNorm."""
    embedded = encoder.embeddings(pixels)  # (B, 1 + N, D): CLS, then patches, position embeddings added
    dim = embedded.shape[-1]
    visible = embedded[:, 1:].gather(1, keep.unsqueeze(-1).expand(-1, -1, dim))
    hidden = encoder.encoder(torch.cat([embedded[:, :1], visible], dim=1)).last_hidden_state
    return encoder.layernorm(hidden)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, S, S) gray images -> (B, N, patch * patch), patches in the row-major order of the token grid."""
    batch, side, _ = images.shape
    grid = side // patch
    x = images.reshape(batch, grid, patch, grid, patch).permute(0, 1, 3, 2, 4)
    return x.reshape(batch, grid * grid, patch * patch)


def mae_loss(prediction: torch.Tensor, images: torch.Tensor, keep: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean squared error on the masked patches against per-patch normalised pixels."""
    target = patchify(images, patch)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / torch.sqrt(var + 1e-6)
    masked = torch.ones(target.shape[:2], dtype=torch.bool)
    masked.scatter_(1, keep, False)
    per_patch = F.mse_loss(prediction, target, reduction="none").mean(dim=-1)
    return per_patch[masked].mean()


def thumbnails(images: torch.Tensor, side: int) -> torch.Tensor:
    """(B, S, S) views -> (B, side * side) area-averaged thumbnails, each standardised to mean 0 and variance 1."""
    small = F.adaptive_avg_pool2d(images.unsqueeze(1), side).flatten(1)
    mean = small.mean(dim=-1, keepdim=True)
    std = small.std(dim=-1, keepdim=True)
    return (small - mean) / (std + 1e-6)


def global_loss(head: nn.Module, cls: torch.Tensor, images: torch.Tensor, side: int) -> torch.Tensor:
    """Mean squared error of the thumbnail predicted from the CLS token alone."""
    return F.mse_loss(head(cls), thumbnails(images, side))
