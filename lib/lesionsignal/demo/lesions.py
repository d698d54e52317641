"""Lesions: soft-edged ellipsoids (a main blob and satellite lobes) that REPLACE lung parenchyma.

Partial volume along z comes from sub-slice sampling, so a lesion smaller than the 2.5 mm slice spacing still
projects with the right strength.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from lesionsignal.demo.edits import RenderError, SlabPatch, project_block, tissue_delta
from lesionsignal.demo.heart import scaled_heart
from lesionsignal.demo.prepare import Flag, PreparedCt


class LesionKind(enum.Enum):
    """The lesion classes, valued by their ChestX-Det10 label."""

    CALCIFICATION = "Calcification"
    NODULE = "Nodule"
    MASS = "Mass"


@dataclass(frozen=True)
class Blob:
    """One soft-edged ellipsoid of a lesion, offset from the lesion centre; radii along its own axes (z, y, x)."""

    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radii_mm: tuple[float, float, float] = (5.0, 5.0, 5.0)
    yaw_deg: float = 0.0  # rotation in the axial plane
    pitch_deg: float = 0.0  # rotation in the sagittal plane


@dataclass(frozen=True)
class Lesion:
    """One lesion of a film: its class, where it sits, its shape and its attenuation."""

    kind: LesionKind
    center: tuple[float, float, float]  # voxel (z, y, x) of the prepared CT, inside lung
    blobs: tuple[Blob, ...]
    hu: float
    edge_mm: float = 1.0  # width of the soft edge

    @property
    def radius_mm(self) -> float:
        """Radius of a sphere around the centre that holds every blob."""
        return max(math.dist((0, 0, 0), b.offset_mm) + max(b.radii_mm) for b in self.blobs)


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Rotation of (z, y, x) vectors: yaw in the axial (y, x) plane, then pitch in the sagittal (z, y) plane."""
    a, b = math.radians(yaw_deg), math.radians(pitch_deg)
    yaw = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    pitch = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    return pitch @ yaw


_Z_SUBSAMPLES = 5  # sub-slice samples per 2.5 mm slice: partial volume of small lesions along z


def lesion_fraction(prepared: PreparedCt, lesion: Lesion, block: tuple[slice, slice, slice]) -> np.ndarray:
    """Fraction of each voxel of ``block`` inside the lesion (soft edge, partial volume along z)."""
    dz, dy, dx = prepared.geometry.spacing
    cz, cy, cx = lesion.center
    sub = (np.arange(_Z_SUBSAMPLES) + 0.5) / _Z_SUBSAMPLES - 0.5
    z = ((np.arange(block[0].start, block[0].stop)[:, None] + sub[None, :]) - cz) * dz  # [nz, nsub]
    y = (np.arange(block[1].start, block[1].stop) - cy) * dy
    x = (np.arange(block[2].start, block[2].stop) - cx) * dx
    zz = z.reshape(-1)[:, None, None].astype(np.float32)
    yy = y[None, :, None].astype(np.float32)
    xx = x[None, None, :].astype(np.float32)
    inside = np.zeros((zz.shape[0], yy.shape[1], xx.shape[2]), dtype=np.float32)
    for blob in lesion.blobs:
        rot = _rotation(blob.yaw_deg, blob.pitch_deg).T.astype(np.float32)  # world -> blob axes
        pz, py, px = zz - blob.offset_mm[0], yy - blob.offset_mm[1], xx - blob.offset_mm[2]
        rho2 = np.zeros_like(inside)
        for axis in range(3):
            q = rot[axis, 0] * pz + rot[axis, 1] * py + rot[axis, 2] * px
            rho2 += (q / blob.radii_mm[axis]) ** 2
        # Signed distance to the surface, approximately, scaled by the mean radius: a ramp of width edge_mm.
        mean_r = float(np.mean(blob.radii_mm))
        ramp = np.clip(0.5 + (1.0 - np.sqrt(rho2)) * mean_r / lesion.edge_mm, 0.0, 1.0)
        np.maximum(inside, ramp, out=inside)
    return inside.reshape(z.shape[0], _Z_SUBSAMPLES, *inside.shape[1:]).mean(axis=1)


def lesion_block(prepared: PreparedCt, lesion: Lesion) -> tuple[slice, slice, slice]:
    reach = lesion.radius_mm + lesion.edge_mm
    out = []
    for axis in range(3):
        half = math.ceil(reach / prepared.geometry.spacing[axis]) + 1
        c = round(lesion.center[axis])
        out.append(slice(max(0, c - half), min(prepared.geometry.shape[axis], c + half + 1)))
    return out[0], out[1], out[2]


def lesion_patch(prepared: PreparedCt, lesion: Lesion, heart_scale: float, scales: np.ndarray) -> SlabPatch:
    """The lesion replaces lung parenchyma (never bone, mediastinum or a resized heart) inside its block."""
    block = lesion_block(prepared, lesion)
    fraction = lesion_fraction(prepared, lesion, block)
    lung = (np.asarray(prepared.flags[block]) & Flag.LUNG) > 0
    if heart_scale != 1.0:
        lung &= scaled_heart(prepared, heart_scale, block) < 0.5
    where = lung & (fraction > 0)
    if not where.any():
        raise RenderError(f"{lesion.kind.value} at voxel {lesion.center} has no lung voxel to replace")
    delta, lung_removed = tissue_delta(prepared, block, where, lesion.hu, False, fraction[where], scales)
    return project_block(prepared, block, delta, lung_removed)
