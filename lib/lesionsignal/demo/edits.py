"""Edits made in the CT, at native resolution, returned as deltas of the slab line integrals.

An edit (a resized heart, a lesion) changes the tissue of some voxels inside one block of the CT. By linearity of
the projection, the film of the edited CT is the film of the prepared slabs plus the edit's block summed over y
within each slab: only the block is evaluated, never the whole volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionsignal.demo.prepare import Flag, PreparedCt
from lesionsignal.demo.slabs import Tissue, tissue_mu


class RenderError(RuntimeError):
    """A film specification cannot be rendered as asked (for example a lesion that ends up outside the lung)."""


@dataclass(frozen=True)
class SlabPatch:
    """A delta of the per-slab line integrals over a rectangle: values [slab s0.., z z0.., x x0..]."""

    s0: int
    z0: int
    x0: int
    values: np.ndarray  # float32 [n_slab, n_z, n_x]
    lung_mm: np.ndarray  # float32, same shape: lung path replaced by the edit (edema must skip it)

    def add_into(self, target: np.ndarray, values: np.ndarray) -> None:
        ns, nz, nx = values.shape
        target[self.s0 : self.s0 + ns, self.z0 : self.z0 + nz, self.x0 : self.x0 + nx] += values


def project_block(
    prepared: PreparedCt, block: tuple[slice, slice, slice], delta: np.ndarray, lung_removed: np.ndarray
) -> SlabPatch:
    """Sum block deltas ([z, y, x], already per-mm attenuation) over y within each slab."""
    edges = np.asarray(prepared.geometry.slab_edges)
    ys = block[1]
    lo, hi = max(ys.start, int(edges[0])), min(ys.stop, int(edges[-1]))
    if lo >= hi:
        raise RenderError(f"edit block y {ys.start}..{ys.stop} lies outside the body's slabs")
    s0 = int(np.searchsorted(edges, lo, side="right") - 1)
    s1 = int(np.searchsorted(edges, hi - 1, side="right") - 1)
    cuts = [lo, *[int(e) for e in edges[s0 + 1 : s1 + 1]]]
    starts = np.asarray(cuts) - ys.start
    dy = prepared.geometry.spacing[1]
    part = slice(lo - ys.start, hi - ys.start)
    values = np.add.reduceat(delta[:, part, :], starts - (lo - ys.start), axis=1) * dy
    lung = np.add.reduceat(lung_removed[:, part, :], starts - (lo - ys.start), axis=1) * dy
    return SlabPatch(
        s0,
        block[0].start,
        block[2].start,
        np.ascontiguousarray(values.transpose(1, 0, 2), dtype=np.float32),
        np.ascontiguousarray(lung.transpose(1, 0, 2), dtype=np.float32),
    )


def tissue_delta(
    prepared: PreparedCt,
    block: tuple[slice, slice, slice],
    where: np.ndarray,
    new_hu: np.ndarray | float,
    new_lung: np.ndarray | bool,
    weight: np.ndarray | float,
    scales: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation change (per mm, [z, y, x] of the block) when ``weight`` of each voxel in ``where`` becomes
    tissue of ``new_hu`` (lung or not), and the change of lung path length (positive: lung removed).

    Only the changed voxels are evaluated; ``new_hu``, ``new_lung`` and ``weight`` are scalars or arrays given
    at those voxels.
    """
    g = prepared.geometry
    idx = np.nonzero(where)
    hu = np.asarray(prepared.hu[block])[idx]
    lung = (np.asarray(prepared.flags[block])[idx] & Flag.LUNG) > 0
    target_hu = np.broadcast_to(np.asarray(new_hu, dtype=np.float32), hu.shape)
    target_lung = np.broadcast_to(np.asarray(new_lung, dtype=bool), hu.shape)
    old = tissue_mu(hu, lung, g.mu_water_per_mm, g.bone_split_hu)
    new = tissue_mu(target_hu, target_lung, g.mu_water_per_mm, g.bone_split_hu)
    # An explicit sum over the three classes (not a BLAS dot) keeps the bytes independent of thread counts.
    change = sum(float(scales[c]) * (new[c] - old[c]) for c in Tissue) * weight
    shape = where.shape
    delta = np.zeros(shape, dtype=np.float32)
    delta[idx] = change
    lung_removed = np.zeros(shape, dtype=np.float32)
    lung_removed[idx] = (lung.astype(np.float32) - target_lung.astype(np.float32)) * weight
    return delta, lung_removed
