"""The resized heart: the heart label scaled about an anchor on its right border, as a slab-integral delta.

Cardiac enlargement on a PA film mostly moves the left border out (and the apex down and left). The heart grows
into lung and mediastinal soft tissue only, never into bone or abdominal organs; a smaller heart hands its vacated
shell to the tissue that borders it there.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from lesionsignal.demo.edits import SlabPatch, project_block, tissue_delta
from lesionsignal.demo.prepare import Flag, PreparedCt


def _axis_scales(scale: float) -> tuple[float, float, float]:
    """(z, y, x) factors of a heart scaled by ``scale``: widest transversely, as cardiomegaly looks on a PA film."""
    return (scale**0.5, scale**0.7, scale)


_HEART_SUBSLICES = 3  # sub-slice samples averaged into each slice: partial volume of the resized heart


def scaled_heart(prepared: PreparedCt, scale: float, block: tuple[slice, slice, slice]) -> np.ndarray:
    """Fraction of each voxel of ``block`` inside the heart scaled about its anchor, float32 [z, y, x].

    Signed distances are interpolated linearly between slices and turned into a one-voxel soft edge, averaged
    over sub-slices (partial volume), then scaled in-plane with one warpAffine per slice, so the projected border
    of a resized heart stays smooth.
    """
    g = prepared.geometry
    shape = tuple(sl.stop - sl.start for sl in block)
    out = np.zeros(shape, dtype=np.float32)
    reach = _heart_block(prepared, scale)
    if any(b.stop <= r.start or r.stop <= b.start for b, r in zip(block, reach, strict=True)):
        return out
    z0, _, y0, _, x0, _ = g.heart_box
    sdf = prepared.heart_sdf  # slice 0 and the last are the empty padding slices
    edge = g.spacing[2]
    fz, fy, fx = _axis_scales(scale)
    az, ay, ax = g.heart_anchor
    inverse = np.array(
        [
            [1 / fx, 0.0, ax - ax / fx + block[2].start / fx - x0],
            [0.0, 1 / fy, ay - ay / fy + block[1].start / fy - y0],
        ]
    )
    offsets = (np.arange(_HEART_SUBSLICES) + 0.5) / _HEART_SUBSLICES - 0.5
    for k, z in enumerate(range(block[0].start, block[0].stop)):
        plane = np.zeros(sdf.shape[1:], dtype=np.float32)
        for offset in offsets:
            t = az + (z + offset - az) / fz - (z0 - 1)
            i = math.floor(t)
            if 0 <= i < sdf.shape[0] - 1:
                w = t - i
                dist = (1.0 - w) * sdf[i] + w * sdf[i + 1]
                plane += np.clip(0.5 - dist / edge, 0.0, 1.0)
        if plane.any():
            out[k] = cv2.warpAffine(
                plane / _HEART_SUBSLICES,
                inverse,
                (shape[2], shape[1]),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderValue=0,
            )
    return out


def _heart_block(prepared: PreparedCt, scale: float) -> tuple[slice, slice, slice]:
    """The union of the heart's box and its scaled box: every voxel a scaled heart adds or vacates."""
    g = prepared.geometry
    out = []
    for axis, factor in enumerate(_axis_scales(scale)):
        lo, hi, anchor = g.heart_box[2 * axis], g.heart_box[2 * axis + 1], g.heart_anchor[axis]
        new_lo = min(lo, math.floor(anchor + (lo - anchor) * factor) - 1)
        new_hi = max(hi, math.ceil(anchor + (hi - anchor) * factor) + 1)
        out.append(slice(max(0, new_lo), min(g.shape[axis], new_hi)))
    return out[0], out[1], out[2]


def heart_patch(prepared: PreparedCt, scale: float, scales: np.ndarray) -> tuple[SlabPatch, np.ndarray]:
    """Resize the heart by ``scale``: the delta, and the resized heart's footprint per slab [slab, z, x].

    Growth fills only the GROW region (lung and mediastinal soft tissue) with blood-pool HU; shrinkage hands the
    vacated shell to the tissue that borders the heart there (see lesionsignal.demo.landmarks.heart_surroundings).
    """
    block = _heart_block(prepared, scale)
    new = scaled_heart(prepared, scale, block)
    flags = np.asarray(prepared.flags[block])
    old = ((flags & Flag.HEART) > 0).astype(np.float32)
    grow = (flags & Flag.GROW) > 0
    added = np.where(grow, np.clip(new - old, 0.0, 1.0), 0.0)
    vacated = np.clip(old - new, 0.0, 1.0)
    box = prepared.geometry.heart_box
    in_box = tuple(slice(box[2 * a] - block[a].start, box[2 * a + 1] - block[a].start) for a in range(3))
    fill_hu = np.full(new.shape, prepared.geometry.heart_hu, dtype=np.float32)
    fill_lung = np.zeros(new.shape, dtype=bool)
    shrinking = vacated[in_box] > 0
    fill_hu[in_box] = np.where(shrinking, prepared.heart_fill_hu, fill_hu[in_box])
    fill_lung[in_box] = shrinking & prepared.heart_fill_lung
    weight = added + vacated  # a voxel is either old heart (may be vacated) or not (may be added)
    changed = weight > 0
    delta, lung_removed = tissue_delta(
        prepared, block, changed, fill_hu[changed], fill_lung[changed], weight[changed], scales
    )
    patch = project_block(prepared, block, delta, lung_removed)
    crossed = project_block(prepared, block, (new >= 0.5).astype(np.float32), np.zeros_like(lung_removed))
    return patch, crossed.values > 0
