"""Regions and landmarks of the prepared CT that the edits and the renderer need.

Where a resized heart may grow, where lesions may sit, what surrounds the heart, the heart's signed distance per
slice, the anchor it is scaled about, the hila (centres of the edema), and the lungs' extent on the projection.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from lesionsignal.demo.ct import Structures
from lesionsignal.demo.masks import bbox, bbox_slices


def growth_region(
    hu: np.ndarray,
    labels: np.ndarray,
    lung: np.ndarray,
    bone: np.ndarray,
    s: Structures,
    spacing: tuple[float, float, float],
    radius_mm: float,
) -> np.ndarray:
    """Where a resized heart may grow: inside the thoracic cavity, lung or unlabelled / cardiac soft tissue.

    The cavity is lungs + mediastinal structures closed slice by slice; the closing runs on a 4x reduced slice
    because only its coarse outline matters and a 20 mm disk is slow at full resolution.
    """
    inside = (lung | np.isin(labels, s.cardiac + s.mediastinal)).astype(np.uint8)
    factor = 4
    rows, cols = inside.shape[1:]
    r = max(1, round(radius_mm / (spacing[1] * factor)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    pad = r + 1
    cavity = np.zeros_like(lung)
    for z in np.flatnonzero(lung.any(axis=(1, 2))):
        small = cv2.resize(inside[z] * 255, (cols // factor, rows // factor), interpolation=cv2.INTER_AREA) > 0
        padded = cv2.copyMakeBorder(small.astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        closed = ndi.binary_fill_holes(cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad])
        full = cv2.resize(closed.astype(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST) > 0
        cavity[z] = full | inside[z].astype(bool)
    soft_or_lung = lung | (((labels == 0) | np.isin(labels, s.cardiac)) & (hu < 150))
    return cavity & soft_or_lung & ~bone


def lesion_sites(lung: np.ndarray, spacing: tuple[float, float, float], stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Lung voxels (on an in-plane stride) with their distance to the lung border, deepest first."""
    zs, ys, xs = bbox_slices(lung)
    depth = ndi.distance_transform_edt(lung[zs, ys, xs], sampling=spacing).astype(np.float32)
    grid = np.zeros_like(depth, dtype=bool)
    grid[:, ::stride, ::stride] = True
    local = np.flatnonzero(grid & (depth > 0))
    lz, ly, lx = np.unravel_index(local, depth.shape)
    flat = np.ravel_multi_index((lz + zs.start, ly + ys.start, lx + xs.start), lung.shape)
    values = depth.ravel()[local]
    order = np.lexsort((flat, -values))  # deepest first; ties by index so the order is reproducible
    return flat[order].astype(np.int64), values[order]


def heart_surroundings(
    hu: np.ndarray, heart: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """For each voxel of the heart's box, the HU and lung flag of the nearest voxel outside the heart.

    A smaller heart leaves its outer shell to whatever borders it there (lung at the left border, fat and
    diaphragm below), which is what these give.
    """
    box = bbox(heart)
    pads = (2, 4, 4)
    lo = [max(0, box[2 * a] - pads[a]) for a in range(3)]
    hi = [min(heart.shape[a], box[2 * a + 1] + pads[a]) for a in range(3)]
    region = tuple(slice(lo[a], hi[a]) for a in range(3))
    _, nearest = ndi.distance_transform_edt(heart[region], sampling=spacing, return_indices=True)
    inner = tuple(slice(box[2 * a] - lo[a], box[2 * a + 1] - lo[a]) for a in range(3))
    idx = tuple(n[inner] for n in nearest)
    return np.ascontiguousarray(hu[region][idx]), np.ascontiguousarray(lung[region][idx])


_SDF_EMPTY_MM = 40.0  # signed distance given to slices without heart: interpolation towards it tapers the heart


def heart_signed_distance(heart: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Per-slice signed distance to the heart border (mm, negative inside) over the heart's box.

    Interpolating signed distances between slices (shape-based interpolation) moves an oblique border smoothly
    with z; interpolating the binary label would step it every 2.5 mm slice.
    """
    z0, z1, y0, y1, x0, x1 = bbox(heart)
    planes = [np.full((y1 - y0, x1 - x0), _SDF_EMPTY_MM, dtype=np.float32)]
    for z in range(z0, z1):
        plane = np.pad(heart[z, y0:y1, x0:x1], 1)
        if not plane.any():
            planes.append(planes[0].copy())
            continue
        outside = ndi.distance_transform_edt(~plane, sampling=spacing[1:])
        inside = ndi.distance_transform_edt(plane, sampling=spacing[1:])
        planes.append(np.minimum(outside - inside, _SDF_EMPTY_MM)[1:-1, 1:-1].astype(np.float32))
    planes.append(planes[0].copy())
    return np.stack(planes)


def heart_anchor(heart: np.ndarray) -> tuple[float, float, float]:
    """Fixed point of heart scaling: centroid in z and y, 30 % in from the right border in x.

    Cardiac enlargement on a PA film mostly moves the left border out (and the apex down and left); anchoring
    near the right border makes a scaled heart do that.
    """
    _, _, _, _, x0, x1 = bbox(heart)
    cz, cy, _cx = ndi.center_of_mass(heart)
    return (float(cz), float(cy), float(x0 + 0.3 * (x1 - x0)))


def hila(lung: np.ndarray, labels: np.ndarray, s: Structures) -> tuple[tuple[float, float], ...]:
    """(z, x) of each hilum on the projection: 45 % down the lung, a fifth of its width in from the medial edge."""
    out = []
    for ids, medial_is_max in ((s.lung_right, True), (s.lung_left, False)):
        side = np.isin(labels, ids).any(axis=1)  # [z, x]
        rows = np.flatnonzero(side.any(axis=1))
        z = int(rows[0] + 0.45 * (rows[-1] - rows[0]))
        cols = np.flatnonzero(side[z])
        width = cols[-1] - cols[0]
        x = cols[-1] - 0.2 * width if medial_is_max else cols[0] + 0.2 * width
        out.append((float(z), float(x)))
    return tuple(out)


def lung_rows(lung_any: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(lung_any.any(axis=(0, 2)))
    return int(rows[0]), int(rows[-1])


def thorax_center(lung_any: np.ndarray) -> tuple[float, float]:
    footprint = lung_any.any(axis=0)
    rows = np.flatnonzero(footprint.any(axis=1))
    cols = np.flatnonzero(footprint.any(axis=0))
    return (0.5 * (rows[0] + rows[-1]), 0.5 * (cols[0] + cols[-1]))
