"""The embedded demo cohort: PA films rendered from one real chest CT, with decided findings and boxed lesions.

A cohort is a list of synthetic subjects (each one patient id: its own anatomy, i.e. tissue scales, baseline
heart size and a smooth deformation) with ``images_per_subject`` films each (each film its own pose, exposure,
findings and lesions, like follow-up visits). Every random draw comes from ``numpy.random.default_rng`` seeded by
``(seed, stream, subject[, film])``, so a film depends only on the configuration and its own indices: the output
is byte-identical whatever the number of workers or the order in which films finish.

Findings are decided globally and made in the CT before projection (see :mod:`lesionsignal.drr`): cardiomegaly
is a resized heart, labelled by the resulting cardiothoracic ratio (CTR > ``ctr_threshold``); edema is a diffuse
bilateral rise of lung attenuation; Calcification, Nodule and Mass lesions replace lung parenchyma, with
ChestX-Det10-like size ordering, several per film or none.

Folder layout (read by :func:`lesionsignal.cohorts.read_demo`):
``images/{image_id}`` (the file name is the image id), ``labels.csv``, ``train.json`` / ``test.json`` in the
ChestX-Det10 format, and ``provenance.json``. The build is cached (a complete folder whose provenance digest
matches is returned untouched), resumable and repairable (each finished film leaves a record under ``.build/``, so
an interrupted build, or a finished one that lost a film, renders only what is missing; files are written to a
temporary name and renamed) and restarts from scratch when any parameter, the CT or a package version changes.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import multiprocessing
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import nibabel
import numpy as np
import scipy

from lesionsignal import drr
from lesionsignal.outputs import atomic_write_bytes, atomic_write_text
from lesionsignal.validate import FieldError

GENERATOR_VERSION = 1  # bump when the same configuration would render different films
LABEL_COLUMNS = ("image_id", "patient_id", "split", "view", "cardiomegaly", "edema", "lung_lesion", "ctr")
LUNG_LESION_KINDS = frozenset({drr.LesionKind.NODULE, drr.LesionKind.MASS})
_BUILD_DIR = ".build"
_STREAM_SPLIT, _STREAM_SUBJECT, _STREAM_FILM = 0, 1, 2


# ---------------------------------------------------------------- configuration


def _check_range(name: str, value: tuple[float, float], low: float = -math.inf, high: float = math.inf) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise FieldError(name, f"expected (min, max) with {low:g} <= min <= max <= {high:g}, got {value}")


@dataclass(frozen=True)
class LesionClass:
    """How often a lesion class appears, how many, and what it looks like."""

    probability: float  # chance that a film has at least one lesion of the class
    extra_mean: float  # mean of the Poisson number of further lesions on such a film
    max_count: int
    diameter_mm: tuple[float, float]  # drawn log-uniformly
    hu: tuple[float, float]
    edge_mm: float
    elongation: float  # axis ratios drawn in [1 - e, 1 + e]
    satellites: tuple[int, int]  # number of extra lobes (min, max)
    min_depth: float  # the centre lies at least this many radii inside the lung

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise FieldError("probability", f"must be in [0, 1], got {self.probability}")
        if self.extra_mean < 0 or self.max_count < 1:
            raise FieldError("extra_mean", "extra_mean must be >= 0 and max_count >= 1")
        _check_range("diameter_mm", self.diameter_mm, 0.5)
        _check_range("hu", self.hu, -1000.0, 3000.0)
        _check_range("satellites", self.satellites, 0)
        if self.edge_mm <= 0 or not 0 <= self.elongation < 1 or self.min_depth < 0:
            raise FieldError("edge_mm", "edge_mm must be > 0, elongation in [0, 1), min_depth >= 0")


# Sizes follow the radiological definitions (nodule < 30 mm <= mass) and keep ChestX-Det10's ordering of median
# box sizes, Calcification < Nodule < Mass; the frequencies are raised above ChestX-Det10's so that a 400-film
# demo has enough positives of each class in its test split.
CALCIFICATION = LesionClass(0.25, 0.7, 4, (5.0, 12.0), (400.0, 1000.0), 0.4, 0.1, (0, 0), 1.0)
NODULE = LesionClass(0.30, 1.0, 4, (8.0, 28.0), (0.0, 60.0), 1.0, 0.25, (0, 1), 0.8)
MASS = LesionClass(0.20, 0.15, 2, (32.0, 65.0), (10.0, 60.0), 1.5, 0.3, (1, 3), 0.5)


@dataclass(frozen=True)
class Variation:
    """Ranges (min, max) of the per-subject anatomy and the per-film pose, exposure and processing."""

    soft_scale: tuple[float, float] = (0.88, 1.15)
    lung_scale: tuple[float, float] = (0.85, 1.15)
    bone_scale: tuple[float, float] = (0.85, 1.15)
    heart_scale: tuple[float, float] = (0.75, 0.93)  # the source heart is borderline large (CTR 0.52)
    width_scale: tuple[float, float] = (0.93, 1.07)
    height_scale: tuple[float, float] = (0.92, 1.08)
    warp_mm: tuple[float, float] = (2.0, 8.0)
    depth_warp_mm: tuple[float, float] = (0.0, 4.0)
    rotation_deg: float = 3.0  # symmetric: uniform in [-x, x]
    axial_rotation_deg: float = 4.0
    tilt_deg: float = 5.0
    magnification: tuple[float, float] = (0.93, 1.05)
    shift: float = 0.03  # of the canvas, each direction
    attenuation: tuple[float, float] = (0.9, 1.1)
    bone_contrast: tuple[float, float] = (1.6, 2.4)  # 2.5 mm slices smear thin cortex; > 1 restores rib contrast
    photons: tuple[float, float] = (8.0e3, 4.0e4)  # log-uniform
    scatter: tuple[float, float] = (0.1, 0.35)
    heel: float = 0.1
    blur_px: tuple[float, float] = (0.6, 1.2)
    edge_gain: tuple[float, float] = (0.3, 0.9)
    edge_sigma_px: tuple[float, float] = (4.0, 10.0)
    compression: tuple[float, float] = (0.45, 0.75)
    window_low: tuple[float, float] = (0.2, 2.0)  # percentile
    window_high: tuple[float, float] = (99.0, 99.9)
    contrast: tuple[float, float] = (2.0, 3.2)
    midpoint: tuple[float, float] = (0.45, 0.55)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, tuple):
                _check_range(name, value)


@dataclass(frozen=True)
class DemoCohortConfig:
    """Everything the generator uses; hashable. ``workers`` changes speed only, never the output."""

    n_images: int = 400
    images_per_subject: int = 2
    test_fraction: float = 0.2
    seed: int = 42
    canvas: int = 1024
    p_cardiomegaly: float = 0.3
    cardiomegaly_scale: tuple[float, float] = (1.25, 1.5)  # on top of the subject's baseline heart
    ctr_threshold: float = 0.5
    p_edema: float = 0.3
    edema_hu: tuple[float, float] = (150.0, 350.0)  # peak rise of lung attenuation
    calcification: LesionClass = CALCIFICATION
    nodule: LesionClass = NODULE
    mass: LesionClass = MASS
    variation: Variation = field(default_factory=Variation)
    prep: drr.PrepParams = field(default_factory=drr.PrepParams)
    box_threshold: float = 0.15
    png_compression: int = 3
    workers: int = 2

    def __post_init__(self) -> None:
        if self.n_images < 1 or self.images_per_subject < 1:
            raise FieldError("n_images", "n_images and images_per_subject must be positive")
        if not 0.0 <= self.test_fraction < 1.0:
            raise FieldError("test_fraction", f"must be in [0, 1), got {self.test_fraction}")
        if self.canvas < 64:
            raise FieldError("canvas", f"must be at least 64, got {self.canvas}")
        for name in ("p_cardiomegaly", "p_edema"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FieldError(name, f"must be in [0, 1], got {getattr(self, name)}")
        _check_range("cardiomegaly_scale", self.cardiomegaly_scale, 1.0)
        _check_range("edema_hu", self.edema_hu, 0.0)
        if not 0.0 < self.box_threshold < 1.0:
            raise FieldError("box_threshold", f"must be in (0, 1), got {self.box_threshold}")
        if not 0 <= self.png_compression <= 9:
            raise FieldError("png_compression", f"must be in 0..9, got {self.png_compression}")
        if self.workers < 1:
            raise FieldError("workers", f"must be at least 1, got {self.workers}")

    def to_dict(self) -> dict:
        return asdict(self)

    def output_dict(self) -> dict:
        """The parameters that decide the output (all but ``workers``)."""
        out = self.to_dict()
        out.pop("workers")
        return out

    def digest(self) -> str:
        """Content hash of the output-deciding parameters (for folder names; the build also hashes the CT)."""
        blob = json.dumps(self.output_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def lesion_classes(self) -> tuple[tuple[drr.LesionKind, LesionClass], ...]:
        return (
            (drr.LesionKind.CALCIFICATION, self.calcification),
            (drr.LesionKind.NODULE, self.nodule),
            (drr.LesionKind.MASS, self.mass),
        )

    @property
    def n_subjects(self) -> int:
        return math.ceil(self.n_images / self.images_per_subject)


# ---------------------------------------------------------------- planning (pure: configuration -> film specs)


@dataclass(frozen=True)
class FilmPlan:
    image_id: str
    patient_id: str
    split: str
    spec: drr.FilmSpec


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


def sample_anatomy(config: DemoCohortConfig, subject: int) -> drr.Anatomy:
    rng = np.random.default_rng([config.seed, _STREAM_SUBJECT, subject])
    v = config.variation
    return drr.Anatomy(
        soft_scale=_uniform(rng, v.soft_scale),
        lung_scale=_uniform(rng, v.lung_scale),
        bone_scale=_uniform(rng, v.bone_scale),
        heart_scale=_uniform(rng, v.heart_scale),
        width_scale=_uniform(rng, v.width_scale),
        height_scale=_uniform(rng, v.height_scale),
        warp_mm=_uniform(rng, v.warp_mm),
        depth_warp_mm=_uniform(rng, v.depth_warp_mm),
        warp_seed=_seed(rng),
    )


def _sample_pose(rng: np.random.Generator, v: Variation) -> drr.Pose:
    return drr.Pose(
        rotation_deg=_symmetric(rng, v.rotation_deg),
        axial_rotation_deg=_symmetric(rng, v.axial_rotation_deg),
        tilt_deg=_symmetric(rng, v.tilt_deg),
        magnification=_uniform(rng, v.magnification),
        shift=(_symmetric(rng, v.shift), _symmetric(rng, v.shift)),
    )


def _sample_exposure(rng: np.random.Generator, v: Variation) -> drr.Exposure:
    return drr.Exposure(
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


def _lesion_shape(rng: np.random.Generator, cls: LesionClass, radius: float) -> tuple[drr.Blob, ...]:
    def axes(r: float) -> tuple[float, float, float]:
        return tuple(r * _uniform(rng, (1 - cls.elongation, 1 + cls.elongation)) for _ in range(3))

    angles = (_symmetric(rng, 180.0), _symmetric(rng, 90.0))
    blobs = [drr.Blob((0.0, 0.0, 0.0), axes(radius), *angles)]
    for _ in range(int(rng.integers(cls.satellites[0], cls.satellites[1] + 1))):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        offset = tuple(float(c) for c in direction * radius * _uniform(rng, (0.45, 0.75)))
        blobs.append(drr.Blob(offset, axes(radius * _uniform(rng, (0.35, 0.6))), *angles))
    return tuple(blobs)


def _free_site(
    rng: np.random.Generator,
    prepared: drr.PreparedCt,
    radius: float,
    min_depth_mm: float,
    heart_scale: float,
    taken: Sequence[drr.Lesion],
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
    raise drr.RenderError(f"no free lung site for a lesion of radius {radius:.1f} mm after 200 draws")


def _clear_of_heart(prepared: drr.PreparedCt, centre: tuple[float, float, float], radius: float, scale: float) -> bool:
    dx = prepared.geometry.spacing[2]
    for offset in (0.0, -0.7 * radius / dx, 0.7 * radius / dx):
        z, y, x = (round(centre[0]), round(centre[1]), round(centre[2] + offset))
        if not 0 <= x < prepared.geometry.shape[2]:
            continue
        block = (slice(z, z + 1), slice(y, y + 1), slice(x, x + 1))
        if scale == 1.0:
            inside = bool(prepared.flags[z, y, x] & drr.Flag.HEART)
        else:
            inside = bool(drr.scaled_heart(prepared, scale, block)[0, 0, 0] >= 0.5)
        if inside:
            return False
    return True


def _clear_of(
    taken: Sequence[drr.Lesion], centre: tuple[float, float, float], radius: float, spacing: tuple[float, ...]
) -> bool:
    for other in taken:
        gap = math.dist(
            [c * s for c, s in zip(centre, spacing, strict=True)],
            [c * s for c, s in zip(other.center, spacing, strict=True)],
        )
        if gap < radius + other.radius_mm + 2.0:
            return False
    return True


def _sample_lesions(
    rng: np.random.Generator, config: DemoCohortConfig, prepared: drr.PreparedCt, heart_scale: float
) -> tuple[drr.Lesion, ...]:
    lesions: list[drr.Lesion] = []
    for kind, cls in config.lesion_classes:
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
            lesions.append(drr.Lesion(kind, centre, blobs, _uniform(rng, cls.hu), cls.edge_mm))
    return tuple(lesions)


def sample_film(
    config: DemoCohortConfig, prepared: drr.PreparedCt, anatomy: drr.Anatomy, subject: int, film: int
) -> drr.FilmSpec:
    """One film of a subject: findings, lesions, pose and exposure from the film's own seed."""
    rng = np.random.default_rng([config.seed, _STREAM_FILM, subject, film])
    cardiomegaly = rng.random() < config.p_cardiomegaly
    heart_scale = _uniform(rng, config.cardiomegaly_scale) if cardiomegaly else 1.0
    edema = None
    if rng.random() < config.p_edema:
        edema = drr.Edema(peak_hu=_uniform(rng, config.edema_hu), texture_seed=_seed(rng))
    lesions = _sample_lesions(rng, config, prepared, anatomy.heart_scale * heart_scale)
    return drr.FilmSpec(
        anatomy=anatomy,
        pose=_sample_pose(rng, config.variation),
        exposure=_sample_exposure(rng, config.variation),
        heart_scale=heart_scale,
        edema=edema,
        lesions=lesions,
        canvas=config.canvas,
        box_threshold=config.box_threshold,
    )


def plan_cohort(config: DemoCohortConfig, prepared: drr.PreparedCt) -> list[FilmPlan]:
    """Every film of the cohort, in image-id order."""
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
                    spec=sample_film(config, prepared, anatomy, subject, film),
                )
            )
    return plans


# ---------------------------------------------------------------- rendering one film to disk


@dataclass(frozen=True)
class FilmRecord:
    """What a finished film contributes to labels.csv and the box JSON."""

    image_id: str
    patient_id: str
    split: str
    cardiomegaly: int
    edema: int
    lung_lesion: int
    ctr: float
    syms: tuple[str, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    sha256: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: Path) -> FilmRecord:
        try:
            data = json.loads(text)
            data["syms"] = tuple(data["syms"])
            data["boxes"] = tuple(tuple(b) for b in data["boxes"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{source}: unreadable film record ({err})") from None


@dataclass(frozen=True)
class _Job:
    plan: FilmPlan
    prepared_dir: Path
    root: Path
    ctr_threshold: float
    png_compression: int


@functools.lru_cache(maxsize=1)
def _prepared(folder: Path) -> drr.PreparedCt:
    """Per-process cache of the memory-mapped prepared CT (loading it for every film would dominate)."""
    return drr.load_prepared(folder)


def encode_png(image: np.ndarray, compression: int) -> bytes:
    ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return data.tobytes()


def _render_job(job: _Job) -> FilmRecord:
    """Render, write the PNG, then the record: a record on disk means its PNG is complete."""
    plan = job.plan
    film = drr.render_film(_prepared(job.prepared_dir), plan.spec)
    png = encode_png(film.image, job.png_compression)
    atomic_write_bytes(job.root / "images" / plan.image_id, png)
    kinds = [b.label for b in film.boxes]
    record = FilmRecord(
        image_id=plan.image_id,
        patient_id=plan.patient_id,
        split=plan.split,
        cardiomegaly=int(film.ctr > job.ctr_threshold),
        edema=int(plan.spec.edema is not None),
        lung_lesion=int(any(drr.LesionKind(k) in LUNG_LESION_KINDS for k in kinds)),
        ctr=round(film.ctr, 4),
        syms=tuple(kinds),
        boxes=tuple((b.x1, b.y1, b.x2, b.y2) for b in film.boxes),
        sha256=hashlib.sha256(png).hexdigest(),
    )
    atomic_write_text(_record_path(job.root, plan.image_id), record.to_json())
    return record


def _init_worker() -> None:
    # Each worker owns one core: OpenCV's own thread pool would only oversubscribe it. (Results do not depend on
    # it: OpenCV splits images by rows.)
    cv2.setNumThreads(1)


def _record_path(root: Path, name: str) -> Path:
    return root / _BUILD_DIR / "records" / f"{name}.json"


# ---------------------------------------------------------------- the build


@dataclass(frozen=True)
class DemoCohort:
    root: Path
    labels: Path
    train_json: Path
    test_json: Path
    provenance: Path
    n_images: int
    rendered: int  # films rendered by this call (0: the cached cohort was reused)
    complete: bool
    seconds: float


def package_versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "nibabel": nibabel.__version__,
        "scipy": scipy.__version__,
    }


def cohort_digest(config: DemoCohortConfig, checksums: dict[str, str]) -> str:
    payload = {
        "config": config.output_dict(),
        "ct": checksums,
        "packages": package_versions(),
        "generator": GENERATOR_VERSION,
        "prep": drr.PREP_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _as_source(ct: object) -> drr.CtSource:
    """A CtSource from a CtSource, any object with volume / mask / structures paths, or a 3-sequence of paths."""
    if isinstance(ct, drr.CtSource):
        return ct
    if all(hasattr(ct, name) for name in ("volume", "mask", "structures")):
        return drr.CtSource(Path(ct.volume), Path(ct.mask), Path(ct.structures))
    paths = [Path(p) for p in ct] if isinstance(ct, Sequence) and not isinstance(ct, str) else []
    if len(paths) != 3:
        raise ValueError(f"ct must be (volume, mask, structures) paths, got {ct!r}")
    return drr.CtSource(*paths)


def _outputs(root: Path) -> dict[str, Path]:
    return {
        "labels": root / "labels.csv",
        "train_json": root / "train.json",
        "test_json": root / "test.json",
        "provenance": root / "provenance.json",
    }


def _result(root: Path, n: int, rendered: int, complete: bool, start: float) -> DemoCohort:
    return DemoCohort(
        root=root,
        n_images=n,
        rendered=rendered,
        complete=complete,
        seconds=time.perf_counter() - start,
        **_outputs(root),
    )


def _is_complete(root: Path, digest: str) -> int | None:
    """The number of images of a finished build with this digest, or None."""
    out = _outputs(root)
    if not all(p.is_file() for p in out.values()):
        return None
    try:
        provenance = json.loads(out["provenance"].read_text())
    except ValueError:
        return None
    if provenance.get("digest") != digest:
        return None
    names = provenance.get("images", [])
    if not names or not all((root / "images" / n).is_file() for n in names):
        return None
    return len(names)


_GENERATOR = "lesionsignal.demo_cohort"
_IMAGE_GLOBS = ("demo_s*_f*.png", ".demo_s*_f*.png.*.tmp")


def _check_owned(root: Path) -> None:
    """Refuse to clear a folder this generator did not write (for example a real ChestX-Det10 folder)."""
    if not root.exists() or not any(root.iterdir()):
        return
    if (root / _BUILD_DIR / "state.json").is_file():
        return
    provenance = root / "provenance.json"
    try:
        if json.loads(provenance.read_text()).get("generator") == _GENERATOR:
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise FileExistsError(f"{root}: exists, is not empty and is not a demo cohort folder; refusing to overwrite it")


def _start(root: Path, digest: str) -> None:
    """Resume a build of the same digest; otherwise clear what this generator wrote and start afresh."""
    _check_owned(root)
    state = root / _BUILD_DIR / "state.json"
    images = root / "images"
    if state.is_file() and json.loads(state.read_text()).get("digest") == digest:
        for stray in images.glob(_IMAGE_GLOBS[1]):  # a rename that never happened
            stray.unlink()
        return
    for path in _outputs(root).values():
        path.unlink(missing_ok=True)
    shutil.rmtree(root / _BUILD_DIR, ignore_errors=True)
    for pattern in _IMAGE_GLOBS:
        for path in images.glob(pattern):
            path.unlink()
    images.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state, json.dumps({"digest": digest}))


def _finished(root: Path, plans: Sequence[FilmPlan]) -> dict[str, FilmRecord]:
    done = {}
    for plan in plans:
        path = _record_path(root, plan.image_id)
        if path.is_file() and (root / "images" / plan.image_id).is_file():
            done[plan.image_id] = FilmRecord.from_json(path.read_text(), path)
    return done


def _run(jobs: Sequence[_Job], workers: int) -> Iterator[FilmRecord]:
    if workers == 1 or len(jobs) <= 1:
        yield from (_render_job(job) for job in jobs)
        return
    context = multiprocessing.get_context("spawn")  # fork after OpenCV has started threads can deadlock
    with context.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_render_job, jobs, chunksize=1)


def build_demo_cohort(
    config: DemoCohortConfig,
    ct: drr.CtSource | Sequence[Path | str] | object,
    out_dir: Path,
    progress: bool = True,
    *,
    cache_dir: Path | None = None,
    limit: int | None = None,
) -> DemoCohort:
    """Build (or reuse, or resume) the demo cohort in ``out_dir``.

    ``ct``: a CtSource, (volume, mask, structures) paths, or an object with those three attributes (for example
    ``registry_data.ct_paths(cache)``).

    ``cache_dir`` holds the prepared CT (default: ``out_dir.parent / "drr_prepared"``); ``limit`` renders at most
    that many missing films and returns an incomplete cohort (a later call resumes).
    """
    start = time.perf_counter()
    root = Path(out_dir)
    source = _as_source(ct)
    checksums = source.checksums()
    digest = cohort_digest(config, checksums)
    cached = _is_complete(root, digest)
    if cached is not None:
        return _result(root, cached, 0, True, start)
    _start(root, digest)
    prepared = drr.prepare_ct(source, config.prep, cache_dir or root.parent / "drr_prepared", checksums)
    prepared_dir = Path(cache_dir or root.parent / "drr_prepared") / prepared.key
    plans = plan_cohort(config, prepared)
    records = _finished(root, plans)
    todo = [p for p in plans if p.image_id not in records]
    if limit is not None:
        todo = todo[: max(0, limit)]
    jobs = [_Job(p, prepared_dir, root, config.ctr_threshold, config.png_compression) for p in todo]
    step = max(1, len(jobs) // 20)
    for count, record in enumerate(_run(jobs, config.workers), start=1):
        records[record.image_id] = record
        if progress and (count % step == 0 or count == len(jobs)):
            rate = count / max(time.perf_counter() - start, 1e-9)
            print(f"demo cohort: {count}/{len(jobs)} films rendered ({rate:.2f}/s)", file=sys.stderr, flush=True)
    if len(records) < len(plans):
        return _result(root, len(records), len(jobs), False, start)
    ordered = [records[p.image_id] for p in plans]
    # The records stay: a later call with a film deleted re-renders that film only.
    _write_outputs(root, ordered, config, source, checksums, prepared, digest)
    return _result(root, len(ordered), len(jobs), True, start)


# ---------------------------------------------------------------- outputs


def labels_csv(records: Sequence[FilmRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    for r in records:
        writer.writerow(
            [r.image_id, r.patient_id, r.split, "PA", r.cardiomegaly, r.edema, r.lung_lesion, f"{r.ctr:.4f}"]
        )
    return buffer.getvalue()


def box_json(records: Sequence[FilmRecord], split: str) -> str:
    """ChestX-Det10 records for every film of ``split``; lesion-free films have empty lists."""
    items = [
        {"file_name": r.image_id, "syms": list(r.syms), "boxes": [list(b) for b in r.boxes]}
        for r in records
        if r.split == split
    ]
    return json.dumps(items)


def _summary(records: Sequence[FilmRecord]) -> dict:
    out: dict = {"images": len(records), "subjects": len({r.patient_id for r in records})}
    for split in ("train", "test"):
        rows = [r for r in records if r.split == split]
        out[split] = {
            "images": len(rows),
            "subjects": len({r.patient_id for r in rows}),
            "cardiomegaly": sum(r.cardiomegaly for r in rows),
            "edema": sum(r.edema for r in rows),
            "lung_lesion": sum(r.lung_lesion for r in rows),
            "lesion_free": sum(not r.syms for r in rows),
            "boxes": {k.value: sum(s == k.value for r in rows for s in r.syms) for k in drr.LesionKind},
        }
    return out


def _write_outputs(
    root: Path,
    records: Sequence[FilmRecord],
    config: DemoCohortConfig,
    source: drr.CtSource,
    checksums: dict[str, str],
    prepared: drr.PreparedCt,
    digest: str,
) -> None:
    out = _outputs(root)
    atomic_write_text(out["labels"], labels_csv(records))
    atomic_write_text(out["train_json"], box_json(records, "train"))
    atomic_write_text(out["test_json"], box_json(records, "test"))
    images = hashlib.sha256("".join(f"{r.image_id}:{r.sha256}\n" for r in records).encode()).hexdigest()
    provenance = {
        "generator": _GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "digest": digest,
        "ct_source": {
            role: {"file": path.name, "sha256": checksums[role], "bytes": path.stat().st_size}
            for role, path in source.files().items()
        },
        "prepared_ct": {
            "key": prepared.key,
            "shape": prepared.geometry.shape,
            "spacing_mm": prepared.geometry.spacing,
            "erased_source_nodules": prepared.geometry.erased,
        },
        "packages": package_versions(),
        "parameters": config.output_dict(),
        "summary": _summary(records),
        "images_sha256": images,
        "images": [r.image_id for r in records],
    }
    # Written last: its presence with a matching digest is what marks the build complete.
    atomic_write_text(out["provenance"], json.dumps(provenance, indent=1, sort_keys=True, default=str))
