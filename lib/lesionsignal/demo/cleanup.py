"""Make the source CT a plain film's patient: no contrast, no table or blankets, no source nodule.

The source CT is contrast-enhanced, lies on a table under blankets and has one solid nodule; a PA film of a
lesion-free subject has none of these.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from lesionsignal.demo.ct import CtError, CtVolume, Structures
from lesionsignal.demo.masks import bbox_slices, dilate_mm
from lesionsignal.demo.prep_params import PrepParams


def downsample(ct: CtVolume, step: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """HU, labels and spacing with ``step`` x ``step`` in-plane blocks merged into one voxel."""
    if step == 1:
        return ct.hu, ct.labels, ct.spacing
    z, y, x = ct.hu.shape
    y2, x2 = y // step * step, x // step * step
    blocks = ct.hu[:, :y2, :x2].astype(np.float32).reshape(z, y2 // step, step, x2 // step, step)
    hu = np.rint(blocks.mean(axis=(2, 4))).astype(np.int16)
    # Labels are categorical: take the block's centre voxel rather than an average.
    labels = ct.labels[:, step // 2 : y2 : step, step // 2 : x2 : step]
    dz, dy, dx = ct.spacing
    return hu, np.ascontiguousarray(labels), (dz, dy * step, dx * step)


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient: the largest solid 3-D component after a small opening, filled slice by slice.

    The opening detaches the table, its pad and blanket folds, which touch the skin only along thin lines.
    """
    solid = (hu > -500).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    opened = np.stack([cv2.morphologyEx(sl, cv2.MORPH_OPEN, kernel) for sl in solid]).astype(bool)
    components, count = ndi.label(opened)
    if count == 0:
        raise CtError("volume", "no body found (no voxel above -500 HU)")
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    return np.stack([ndi.binary_fill_holes(sl) for sl in body])


def remove_contrast(
    hu: np.ndarray,
    labels: np.ndarray,
    s: Structures,
    bone: np.ndarray,
    spacing: tuple[float, float, float],
    params: PrepParams,
) -> np.ndarray:
    """Cap contrast-enhanced blood and organs at soft-tissue HU; a PA film is taken without contrast.

    Capped: every labelled non-bone voxel (organs, vessels, lung vessels), and unlabelled voxels near the heart and
    great vessels (the pulmonary trunk is not labelled). Unlabelled voxels elsewhere keep their HU: most of them are
    bone that the mask does not name (arm bones, costal calcifications).
    """
    near_blood = dilate_mm(np.isin(labels, s.cardiac), spacing, params.enhanced_margin_mm)
    cap = ((labels > 0) & ~bone) | ((labels == 0) & near_blood)
    capped = np.minimum(hu, np.int16(params.contrast_cap_hu))
    return np.where(cap, capped, hu).astype(np.int16)


def erase_lung_nodules(
    hu: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float], radius_mm: float
) -> tuple[np.ndarray, tuple[tuple[int, float], ...]]:
    """Replace solid lung blobs (they survive an opening that removes vessels) by surrounding lung HU.

    The source CT has one solid nodule in the left lower lobe; left in place it would sit, unlabelled, in every
    "lesion-free" film.
    """
    zs, ys, xs = bbox_slices(lung)
    sub_hu, sub_lung = hu[zs, ys, xs], lung[zs, ys, xs]
    dense = (sub_lung & (sub_hu > -400)).astype(np.uint8)
    r = max(1, round(radius_mm / spacing[1]))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)).astype(bool)
    rz = max(1, round(radius_mm / spacing[0]))
    ball = np.stack([disk] * (2 * rz - 1 if rz > 1 else 3))
    blobs, count = ndi.label(ndi.binary_opening(dense, structure=ball))
    if count == 0:
        return hu, ()
    out = hu.copy()
    sub_out = out[zs, ys, xs]
    erased = []
    voxel_mm3 = spacing[0] * spacing[1] * spacing[2]
    for index in range(1, count + 1):
        blob = blobs == index
        region = dilate_mm(blob, spacing, 2 * spacing[1]) & sub_lung & (sub_hu > -750)
        shell = dilate_mm(region, spacing, 6.0) & sub_lung & ~region
        fill = np.int16(np.median(sub_hu[shell])) if shell.any() else np.int16(-850)
        sub_out[region] = fill
        erased.append((int(region.sum()), round(float(region.sum() * voxel_mm3), 1)))
    out[zs, ys, xs] = sub_out
    return out, tuple(erased)
