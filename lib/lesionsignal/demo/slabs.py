"""Tissue classes and AP depth slabs: the line integrals a film is summed from.

A parallel-beam PA projection is a sum of attenuation along the antero-posterior (AP) axis, so it is LINEAR in the
attenuation volume. The AP axis is cut into depth slabs, and for every slab the line integrals of three tissue
classes are kept apart, so that a subject can rescale each class and deform each slab without a 3-D pass.
"""

from __future__ import annotations

import enum

import numpy as np


class Tissue(enum.IntEnum):
    """Tissue classes whose line integrals are kept apart, so a subject can rescale each one."""

    SOFT = 0
    LUNG = 1
    BONE = 2  # attenuation above the bone split (the soft part of a bone voxel stays in SOFT)


def tissue_mu(hu: np.ndarray, lung: np.ndarray, mu_water: float, bone_split: float) -> np.ndarray:
    """Attenuation per mm by tissue class, [Tissue, ...]: mu = mu_water (1 + HU/1000), air clipped to zero."""
    hu = hu.astype(np.float32)
    soft_hu = np.minimum(hu, bone_split)
    total_soft = mu_water * np.maximum(0.0, 1.0 + soft_hu / 1000.0)
    bone = mu_water * np.maximum(0.0, hu - bone_split) / 1000.0
    return np.stack([np.where(lung, 0.0, total_soft), np.where(lung, total_soft, 0.0), bone]).astype(np.float32)


def slab_edges(body: np.ndarray, n_slabs: int) -> np.ndarray:
    """y indices cutting the body's AP extent into ``n_slabs`` slabs of (nearly) equal depth."""
    rows = np.flatnonzero(body.any(axis=(0, 2)))
    return np.rint(np.linspace(rows[0], rows[-1] + 1, n_slabs + 1)).astype(np.int64)


def slab_sums(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Sum a [z, y, x] array over y within each slab: [slab, z, x]."""
    inner = values[:, edges[0] : edges[-1], :]
    sums = np.add.reduceat(inner, edges[:-1] - edges[0], axis=1)
    return np.ascontiguousarray(np.moveaxis(sums, 1, 0))


def slab_integrals(
    hu: np.ndarray,
    lung: np.ndarray,
    edges: np.ndarray,
    spacing: tuple[float, float, float],
    mu_water: float,
    bone_split: float,
) -> np.ndarray:
    """Line integrals (dimensionless) per slab and tissue class, [slab, Tissue, z, x]."""
    out = []
    for z in range(hu.shape[0]):  # slice by slice keeps the float copy of the volume small
        mu = tissue_mu(hu[z : z + 1], lung[z : z + 1], mu_water, bone_split)
        out.append(np.stack([slab_sums(mu[c], edges)[:, 0] for c in Tissue]) * spacing[1])
    return np.ascontiguousarray(np.stack(out, axis=2).transpose(1, 0, 2, 3)).astype(np.float32)
