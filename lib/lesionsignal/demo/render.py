"""One film from the prepared CT and a film specification: edits, projection, film, and the lesion boxes.

Lesion boxes are the bounding boxes of each lesion's own projected delta pushed through the SAME slab warps and
canvas map as the film, thresholded at a fraction of its peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from lesionsignal.core.box import Box
from lesionsignal.data.manifest import LesionBox
from lesionsignal.demo.anatomy import Anatomy
from lesionsignal.demo.edema import Edema, edema_hu
from lesionsignal.demo.edits import RenderError, SlabPatch
from lesionsignal.demo.film import REFERENCE_CANVAS, Exposure, film_from_line_integral
from lesionsignal.demo.heart import heart_patch
from lesionsignal.demo.lesions import Lesion, lesion_patch
from lesionsignal.demo.prepare import PreparedCt
from lesionsignal.demo.projection import Pose, canvas_affine, remap, slab_maps, warp_to_canvas
from lesionsignal.demo.slabs import Tissue


@dataclass(frozen=True)
class FilmSpec:
    """Everything that decides one film; render_film is a pure function of (prepared CT, spec)."""

    anatomy: Anatomy = field(default_factory=Anatomy)
    pose: Pose = field(default_factory=Pose)
    exposure: Exposure = field(default_factory=Exposure)
    heart_scale: float = 1.0  # cardiomegaly factor on top of the subject's baseline heart
    edema: Edema | None = None
    lesions: tuple[Lesion, ...] = ()
    canvas: int = REFERENCE_CANVAS
    box_threshold: float = 0.15  # a box covers the lesion's projected delta above this fraction of its peak


@dataclass(frozen=True)
class RenderedFilm:
    image: np.ndarray  # uint8 [canvas, canvas]
    boxes: tuple[LesionBox, ...]  # one per lesion, in spec order
    ctr: float  # cardiothoracic ratio on the projected heart and lung silhouettes
    heart_width_mm: float
    thorax_width_mm: float


def _extent(mask: np.ndarray) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if cols.size else 0


@dataclass(frozen=True)
class _EditedCt:
    slabs: np.ndarray  # [slab, z, x] line integrals with every edit
    heart_any: np.ndarray  # [slab, z, x] footprint of the (resized) heart
    lesions: tuple[SlabPatch, ...]  # each lesion's own delta, for its box


def _edit(prepared: PreparedCt, spec: FilmSpec) -> _EditedCt:
    """The subject's slab line integrals with the heart resized, lesions inserted and edema added."""
    scales = spec.anatomy.tissue_scales(spec.exposure.bone_contrast)
    slabs = sum(float(scales[c]) * prepared.slabs[:, c] for c in Tissue).astype(np.float32)
    lung_mm = np.array(prepared.lung_mm, dtype=np.float32)
    heart_any = np.array(prepared.heart_any)
    heart_scale = spec.anatomy.heart_scale * spec.heart_scale
    if heart_scale <= 0.0:
        raise RenderError(f"heart scale must be positive, got {heart_scale:g}")
    if heart_scale != 1.0:
        patch, crossed = heart_patch(prepared, heart_scale, scales)
        patch.add_into(slabs, patch.values)
        patch.add_into(lung_mm, -patch.lung_mm)
        ns, nz, nx = crossed.shape
        # The block holds every voxel of the old and new heart, so its footprint replaces the old one there.
        heart_any[patch.s0 : patch.s0 + ns, patch.z0 : patch.z0 + nz, patch.x0 : patch.x0 + nx] = crossed
    lesions = tuple(lesion_patch(prepared, lesion, heart_scale, scales) for lesion in spec.lesions)
    for patch in lesions:
        patch.add_into(slabs, patch.values)
        patch.add_into(lung_mm, -patch.lung_mm)
    if spec.edema is not None:
        # Edema fluid is soft tissue in the lung that is still lung after the heart and lesion edits.
        mu_per_hu = scales[Tissue.SOFT] * prepared.geometry.mu_water_per_mm / 1000.0
        slabs += mu_per_hu * edema_hu(prepared, spec.edema) * lung_mm
    return _EditedCt(slabs, heart_any, lesions)


def render_film(prepared: PreparedCt, spec: FilmSpec) -> RenderedFilm:
    """Render one film and its lesion boxes; a pure function of the prepared CT and the spec."""
    edited = _edit(prepared, spec)
    maps = slab_maps(prepared, spec.anatomy, spec.pose)
    # Where the deformation reaches past the CT's first or last slice, repeat that slice: the film then ends at
    # the straight collimation edge of the canvas map instead of a wavy CT border.
    frame = sum(remap(edited.slabs[s], maps[s], cv2.INTER_CUBIC, cv2.BORDER_REPLICATE) for s in range(len(maps)))
    heart_w = _extent(_union_frame(edited.heart_any, maps))
    thorax_w = _extent(_union_frame(prepared.lung_any, maps))
    if thorax_w == 0:
        raise RenderError("the lungs left the film frame: deformation or pose too large")
    affine = canvas_affine(prepared.frame_shape, spec.canvas, spec.pose)
    line_integral = warp_to_canvas(frame.astype(np.float32), affine, spec.canvas, cv2.INTER_LANCZOS4)
    field = warp_to_canvas(np.ones(prepared.frame_shape, np.float32), affine, spec.canvas, cv2.INTER_LINEAR) > 0.5
    image = film_from_line_integral(line_integral, spec.exposure, field)
    boxes = tuple(
        _lesion_box(prepared, patch, lesion, maps, affine, spec)
        for patch, lesion in zip(edited.lesions, spec.lesions, strict=True)
    )
    dx = prepared.geometry.spacing[2]
    return RenderedFilm(image, boxes, heart_w / thorax_w, heart_w * dx, thorax_w * dx)


def _union_frame(masks: np.ndarray, maps: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    out = np.zeros(maps[0][0].shape, dtype=bool)
    for s, m in enumerate(maps):
        if masks[s].any():
            out |= remap(masks[s].astype(np.float32), m, cv2.INTER_LINEAR) > 0.5
    return out


def _lesion_box(
    prepared: PreparedCt,
    patch: SlabPatch,
    lesion: Lesion,
    maps: list[tuple[np.ndarray, np.ndarray]],
    affine: np.ndarray,
    spec: FilmSpec,
) -> LesionBox:
    """Bounding box of the lesion's own projected delta, through the same slab warps and canvas map as the film."""
    nz, _, nx = prepared.geometry.shape
    frame = np.zeros(maps[0][0].shape, dtype=np.float32)
    ns, pz, px = patch.values.shape
    for k in range(ns):
        grid = np.zeros((nz, nx), dtype=np.float32)
        grid[patch.z0 : patch.z0 + pz, patch.x0 : patch.x0 + px] = np.abs(patch.values[k])
        frame += remap(grid, maps[patch.s0 + k], cv2.INTER_LINEAR)
    canvas = warp_to_canvas(frame, affine, spec.canvas, cv2.INTER_LINEAR)
    peak = float(canvas.max())
    if peak <= 0.0:
        raise RenderError(f"{lesion.kind.value} at voxel {lesion.center} is not on the film (outside lung or canvas)")
    ys, xs = np.nonzero(canvas > spec.box_threshold * peak)
    return LesionBox(lesion.kind.value, Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
