"""Edema: a diffuse bilateral rise of lung attenuation, strongest around the hila and in dependent, basal lung."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lesionsignal.demo.prepare import PreparedCt


@dataclass(frozen=True)
class Edema:
    """Diffuse bilateral rise of lung attenuation, strongest around the hila and in dependent, basal lung."""

    peak_hu: float = 300.0
    diffuse: float = 0.35  # fraction of the peak everywhere in the lungs
    sigma_mm: float = 70.0  # perihilar falloff
    basal: float = 0.3  # extra towards the lung bases
    dependent: float = 0.2  # extra towards the posterior slabs
    texture: float = 0.3  # patchiness (relative amplitude of low-frequency noise)
    texture_seed: int = 0


def edema_hu(prepared: PreparedCt, edema: Edema) -> np.ndarray:
    """HU added to lung voxels, [slab, z, x]: constant along y within a slab, so the edit stays exact per slab."""
    g = prepared.geometry
    nz, _, nx = g.shape
    dz, _, dx = g.spacing
    z = np.arange(nz, dtype=np.float32)[:, None] * dz
    x = np.arange(nx, dtype=np.float32)[None, :] * dx
    dist2 = np.min([(z - hz * dz) ** 2 + (x - hx * dx) ** 2 for hz, hx in g.hila], axis=0)
    perihilar = edema.diffuse + (1.0 - edema.diffuse) * np.exp(-dist2 / (2.0 * edema.sigma_mm**2))
    top, bottom = g.lung_rows
    basal = 1.0 + edema.basal * np.clip((z / dz - top) / max(1, bottom - top), 0.0, 1.0)
    rng = np.random.default_rng(edema.texture_seed)
    coarse = rng.standard_normal((10, 10)).astype(np.float32)
    patches = 1.0 + edema.texture * cv2.resize(coarse, (nx, nz), interpolation=cv2.INTER_CUBIC)
    depth = 1.0 + edema.dependent * (g.slab_depth / max(g.half_depth_mm, 1e-6))
    field = edema.peak_hu * perihilar * basal * np.clip(patches, 0.0, None)
    return (depth[:, None, None] * field[None]).astype(np.float32)
