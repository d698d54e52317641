"""Geometry of binary masks on the CT's anisotropic grid: bounding boxes, and dilation by a radius in mm."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from lesionsignal.demo.ct import CtError


def bbox_slices(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest block holding every voxel of ``mask``, as slices along z, y, x."""
    if not mask.any():
        raise CtError("mask", "a required structure is empty")
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return out[0], out[1], out[2]


def bbox(mask: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """The same block as ``(z0, z1, y0, y1, x0, x1)``, end exclusive."""
    zs, ys, xs = bbox_slices(mask)
    return (zs.start, zs.stop, ys.start, ys.stop, xs.start, xs.stop)


def dilate_mm(mask: np.ndarray, spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Binary dilation by an ellipsoid-ish neighbourhood: a disk in-plane, then a box along z."""
    ry = max(1, round(radius_mm / spacing[1]))
    rz = max(0, round(radius_mm / spacing[0]))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ry + 1, 2 * ry + 1))
    planar = np.stack([cv2.dilate(sl, kernel) for sl in mask.astype(np.uint8)])
    return ndi.maximum_filter1d(planar, size=2 * rz + 1, axis=0).astype(bool)
