"""From slab line integrals to the canvas: the subject's deformation per slab, and the pose and canvas map.

Anatomical deformation is a smooth random 3-D displacement field with no AP component that is piecewise constant
in depth over the slabs (a common field plus a depth-proportional one, a global thorax width/height scale, and the
shear that a small rotation about the vertical axis or a lordotic tilt produces). For such a field the projection
of the deformed volume is exactly the sum of the slab projections, each warped in 2-D, so the deformation costs one
``cv2.remap`` per slab instead of a 3-D resampling. The in-plane resolution stays native (0.7 mm); the CT's 2.5 mm
slice spacing is what limits vertical sharpness.

Pose in the detector plane (rotation, magnification, shift) is one affine map composed with the canvas rule of
:mod:`lesionsignal.core.canvas` (symmetric zero pad to a square, resize to the canvas), applied once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from lesionsignal.demo.anatomy import Anatomy
from lesionsignal.demo.prepare import PreparedCt


@dataclass(frozen=True)
class Pose:
    """Where the patient stands for one film: in-plane rotation, magnification and shift, and the axial rotation
    and tilt that shift each depth slab differently (parallax)."""

    rotation_deg: float = 0.0  # in the detector plane
    axial_rotation_deg: float = 0.0  # about the patient's vertical axis (projects as depth-dependent shift)
    tilt_deg: float = 0.0  # lordotic / kyphotic tilt (depth-dependent vertical shift)
    magnification: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # (x, y) as fractions of the canvas


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 4) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def slab_maps(prepared: PreparedCt, anatomy: Anatomy, pose: Pose) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per slab, the cv2.remap maps from the isotropic film frame to the projection grid [z, x].

    The displacement of slab s is u_common + (depth_s / half_depth) * u_depth plus the parallax shear of the axial
    rotation and tilt, after a width / height scale about the thorax centre. All fields are backward (defined on
    the output frame), which is what remap needs; they are smooth at the scale of the lungs.
    """
    g = prepared.geometry
    rows, cols = prepared.frame_shape
    dz, _, dx = g.spacing
    rng = np.random.default_rng(anatomy.warp_seed)
    common = [_smooth_field(rng, (rows, cols)) * anatomy.warp_mm for _ in range(2)]
    depth = [_smooth_field(rng, (rows, cols)) * anatomy.depth_warp_mm for _ in range(2)]
    r = np.arange(rows, dtype=np.float32)[:, None] * dx  # frame pixels are dx mm square
    c = np.arange(cols, dtype=np.float32)[None, :] * dx
    cz, cx = g.thorax_center[0] * dz, g.thorax_center[1] * dx
    base_z = cz + (r - cz) / anatomy.height_scale
    base_x = cx + (c - cx) / anatomy.width_scale
    shear_x = math.tan(math.radians(pose.axial_rotation_deg))
    shear_z = math.tan(math.radians(pose.tilt_deg))
    maps = []
    for d_mm in g.slab_depth:
        w = d_mm / max(g.half_depth_mm, 1e-6)
        src_x = base_x + common[0] + w * depth[0] + d_mm * shear_x
        src_z = base_z + common[1] + w * depth[1] + d_mm * shear_z
        maps.append(((src_x / dx).astype(np.float32), (src_z / dz).astype(np.float32)))
    return maps


def canvas_affine(frame_shape: tuple[int, int], canvas: int, pose: Pose) -> np.ndarray:
    """2x3 map from film-frame pixels to canvas pixels: symmetric zero pad to a square, resize, then pose.

    The pad and resize follow lesionsignal.core.canvas.to_canvas (top/left pad = floor of half the difference, pixel
    centres aligned as cv2.resize aligns them); the pose rotates and scales about the canvas centre and shifts.
    """
    rows, cols = frame_shape
    side = max(rows, cols)
    k = canvas / side
    top, left = (side - rows) // 2, (side - cols) // 2
    resize = np.array([[k, 0.0, (left + 0.5) * k - 0.5], [0.0, k, (top + 0.5) * k - 0.5], [0, 0, 1]])
    centre = (canvas - 1) / 2.0
    a = math.radians(pose.rotation_deg)
    m = pose.magnification
    rot = np.array([[m * math.cos(a), -m * math.sin(a), 0.0], [m * math.sin(a), m * math.cos(a), 0.0], [0, 0, 1]])
    to_centre = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1.0]])
    back = np.array([[1, 0, centre + pose.shift[0] * canvas], [0, 1, centre + pose.shift[1] * canvas], [0, 0, 1.0]])
    return (back @ rot @ to_centre @ resize)[:2]


def remap(
    image: np.ndarray, maps: tuple[np.ndarray, np.ndarray], interpolation: int, border: int = cv2.BORDER_CONSTANT
) -> np.ndarray:
    return cv2.remap(image, maps[0], maps[1], interpolation, borderMode=border, borderValue=0)


def warp_to_canvas(frame: np.ndarray, affine: np.ndarray, canvas: int, interpolation: int) -> np.ndarray:
    return cv2.warpAffine(
        frame, affine, (canvas, canvas), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
