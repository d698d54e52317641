"""Planning a cohort: the seeded draw of every subject and film, from the configuration to film specifications.

A cohort is a list of synthetic subjects (each one patient id: its own anatomy, i.e. tissue scales, baseline heart
size and a smooth deformation) with ``images_per_subject`` films each (each film its own pose, exposure, findings
and lesions, like follow-up visits). Every random draw comes from ``numpy.random.default_rng`` seeded by
``(seed, stream, subject[, film])``, so a film depends only on the configuration and its own indices: the output is
byte-identical whatever the number of workers or the order in which films finish.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lesionsignal.demo.anatomy import Anatomy
from lesionsignal.demo.config import DemoCohortConfig, LesionClass, Variation
from lesionsignal.demo.edema import Edema
from lesionsignal.demo.edits import RenderError
from lesionsignal.demo.film import Exposure
from lesionsignal.demo.heart import scaled_heart
from lesionsignal.demo.lesions import Blob, Lesion, LesionKind
from lesionsignal.demo.prepare import Flag, PreparedCt
from lesionsignal.demo.projection import Pose
from lesionsignal.demo.render import FilmSpec

# One seed stream per purpose, so that one kind of draw never shifts another (a film's lesions never change its
# subject's anatomy, and the split does not depend on either).
_STREAM_SPLIT, _STREAM_SUBJECT, _STREAM_FILM = 0, 1, 2


@dataclass(frozen=True)
class FilmPlan:
    """One film of the cohort: its names, its split and everything that decides its pixels."""

    image_id: str
    patient_id: str
    split: str
    spec: FilmSpec


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _symmetric(rng: np.random.Generator, half: float) -> float:
    return float(rng.uniform(-half, half))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**32))


def image_id(subject: int, film: int, n_subjects: int) -> str:
    """``demo_s0001_f02.png``: 1-based subject and film numbers."""
    width = max(4, len(str(n_subjects)))
    return f"demo_s{subject + 1:0{width}d}_f{film + 1:02d}.png"


def test_subjects(config: DemoCohortConfig) -> frozenset[int]:
    """Subjects of the test split: a seeded permutation, so the split is patient-disjoint by construction."""
    n = config.n_subjects
    n_test = round(config.test_fraction * n)
    if config.test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    order = np.random.default_rng([config.seed, _STREAM_SPLIT]).permutation(n)
    return frozenset(int(i) for i in order[:n_test])


# Every anatomy field but the seed is drawn uniformly from the Variation range of the same name, in this order.
_ANATOMY_RANGES = (
    "soft_scale",
    "lung_scale",
    "bone_scale",
    "heart_scale",
    "width_scale",
    "height_scale",
    "warp_mm",
    "depth_warp_mm",
)


def sample_anatomy(config: DemoCohortConfig, subject: int) -> Anatomy:
    rng = np.random.default_rng([config.seed, _STREAM_SUBJECT, subject])
    drawn = {name: _uniform(rng, getattr(config.variation, name)) for name in _ANATOMY_RANGES}
    return Anatomy(**drawn, warp_seed=_seed(rng))


def _sample_pose(rng: np.random.Generator, v: Variation) -> Pose:
    return Pose(
        rotation_deg=_symmetric(rng, v.rotation_deg),
        axial_rotation_deg=_symmetric(rng, v.axial_rotation_deg),
        tilt_deg=_symmetric(rng, v.tilt_deg),
        magnification=_uniform(rng, v.magnification),
        shift=(_symmetric(rng, v.shift), _symmetric(rng, v.shift)),
    )


def _sample_exposure(rng: np.random.Generator, v: Variation) -> Exposure:
    return Exposure(
        attenuation=_uniform(rng, v.attenuation),
        bone_contrast=_uniform(rng, v.bone_contrast),
        photons=_log_uniform(rng, v.photons),
        scatter=_uniform(rng, v.scatter),
        heel=_symmetric(rng, v.heel),
        blur_px=_uniform(rng, v.blur_px),
        edge_gain=_uniform(rng, v.edge_gain),
        edge_sigma_px=_uniform(rng, v.edge_sigma_px),
        compression=_uniform(rng, v.compression),
        window=(_uniform(rng, v.window_low), _uniform(rng, v.window_high)),
        contrast=_uniform(rng, v.contrast),
        midpoint=_uniform(rng, v.midpoint),
        noise_seed=_seed(rng),
    )


def _lesion_shape(rng: np.random.Generator, cls: LesionClass, radius: float) -> tuple[Blob, ...]:
    def axes(r: float) -> tuple[float, float, float]:
        return tuple(r * _uniform(rng, (1 - cls.elongation, 1 + cls.elongation)) for _ in range(3))

    angles = (_symmetric(rng, 180.0), _symmetric(rng, 90.0))
    blobs = [Blob((0.0, 0.0, 0.0), axes(radius), *angles)]
    for _ in range(int(rng.integers(cls.satellites[0], cls.satellites[1] + 1))):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        offset = tuple(float(c) for c in direction * radius * _uniform(rng, (0.45, 0.75)))
        blobs.append(Blob(offset, axes(radius * _uniform(rng, (0.35, 0.6))), *angles))
    return tuple(blobs)


def _free_site(
    rng: np.random.Generator,
    prepared: PreparedCt,
    radius: float,
    min_depth_mm: float,
    heart_scale: float,
    taken: Sequence[Lesion],
    stride: int,
) -> tuple[float, float, float]:
    """A lung voxel deep enough, clear of the resized heart and of the lesions already placed.

    Sites sit on an in-plane grid of ``stride`` voxels; a jitter within the grid cell makes centres continuous.
    """
    g = prepared.geometry
    depth_needed = min(min_depth_mm, 0.8 * float(prepared.site_depth_mm[0]))
    n_deep = int(np.searchsorted(-prepared.site_depth_mm, -depth_needed, side="right"))
    half = stride / 2.0
    for _ in range(200):
        z, y, x = np.unravel_index(int(prepared.sites[int(rng.integers(0, n_deep))]), g.shape)
        centre = (float(z) + _symmetric(rng, 0.5), float(y) + _symmetric(rng, half), float(x) + _symmetric(rng, half))
        if _clear_of_heart(prepared, centre, radius, heart_scale) and _clear_of(taken, centre, radius, g.spacing):
            return centre
    raise RenderError(f"no free lung site for a lesion of radius {radius:.1f} mm after 200 draws")


def _clear_of_heart(prepared: PreparedCt, centre: tuple[float, float, float], radius: float, scale: float) -> bool:
    dx = prepared.geometry.spacing[2]
    for offset in (0.0, -0.7 * radius / dx, 0.7 * radius / dx):
        z, y, x = (round(centre[0]), round(centre[1]), round(centre[2] + offset))
        if not 0 <= x < prepared.geometry.shape[2]:
            continue
        block = (slice(z, z + 1), slice(y, y + 1), slice(x, x + 1))
        if scale == 1.0:
            inside = bool(prepared.flags[z, y, x] & Flag.HEART)
        else:
            inside = bool(scaled_heart(prepared, scale, block)[0, 0, 0] >= 0.5)
        if inside:
            return False
    return True


def _clear_of(
    taken: Sequence[Lesion], centre: tuple[float, float, float], radius: float, spacing: tuple[float, ...]
) -> bool:
    for other in taken:
        gap = math.dist(
            [c * s for c, s in zip(centre, spacing, strict=True)],
            [c * s for c, s in zip(other.center, spacing, strict=True)],
        )
        if gap < radius + other.radius_mm + 2.0:
            return False
    return True


def _lesion_classes(config: DemoCohortConfig) -> tuple[tuple[LesionKind, LesionClass], ...]:
    return (
        (LesionKind.CALCIFICATION, config.calcification),
        (LesionKind.NODULE, config.nodule),
        (LesionKind.MASS, config.mass),
    )


def _sample_lesions(
    rng: np.random.Generator, config: DemoCohortConfig, prepared: PreparedCt, heart_scale: float
) -> tuple[Lesion, ...]:
    lesions: list[Lesion] = []
    for kind, cls in _lesion_classes(config):
        if rng.random() >= cls.probability:
            continue
        count = min(cls.max_count, 1 + int(rng.poisson(cls.extra_mean)))
        for _ in range(count):
            radius = _log_uniform(rng, cls.diameter_mm) / 2.0
            blobs = _lesion_shape(rng, cls, radius)
            outer = max(math.dist((0, 0, 0), b.offset_mm) + max(b.radii_mm) for b in blobs)
            centre = _free_site(
                rng, prepared, outer, cls.min_depth * radius, heart_scale, lesions, config.prep.site_stride
            )
            lesions.append(Lesion(kind, centre, blobs, _uniform(rng, cls.hu), cls.edge_mm))
    return tuple(lesions)


def sample_film(
    config: DemoCohortConfig, prepared: PreparedCt, anatomy: Anatomy, subject: int, film: int, canvas: int
) -> FilmSpec:
    """One film of a subject: findings, lesions, pose and exposure from the film's own seed."""
    rng = np.random.default_rng([config.seed, _STREAM_FILM, subject, film])
    cardiomegaly = rng.random() < config.p_cardiomegaly
    heart_scale = _uniform(rng, config.cardiomegaly_scale) if cardiomegaly else 1.0
    edema = None
    if rng.random() < config.p_edema:
        edema = Edema(peak_hu=_uniform(rng, config.edema_hu), texture_seed=_seed(rng))
    lesions = _sample_lesions(rng, config, prepared, anatomy.heart_scale * heart_scale)
    return FilmSpec(
        anatomy=anatomy,
        pose=_sample_pose(rng, config.variation),
        exposure=_sample_exposure(rng, config.variation),
        heart_scale=heart_scale,
        edema=edema,
        lesions=lesions,
        canvas=canvas,
        box_threshold=config.box_threshold,
    )


def plan_cohort(config: DemoCohortConfig, prepared: PreparedCt, canvas: int) -> list[FilmPlan]:
    """Every film of the cohort, on a ``canvas``-pixel square, in image-id order."""
    test = test_subjects(config)
    plans = []
    for subject in range(config.n_subjects):
        anatomy = sample_anatomy(config, subject)
        n_films = min(config.images_per_subject, config.n_images - subject * config.images_per_subject)
        for film in range(n_films):
            name = image_id(subject, film, config.n_subjects)
            plans.append(
                FilmPlan(
                    image_id=name,
                    patient_id=name.split("_f")[0],
                    split="test" if subject in test else "train",
                    spec=sample_film(config, prepared, anatomy, subject, film, canvas),
                )
            )
    return plans
