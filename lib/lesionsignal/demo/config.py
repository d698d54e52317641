"""The demo cohort's configuration: what the generator is asked to render, as one tree of frozen dataclasses.

A parameter file's ``demo_cohort:`` section IS a :class:`DemoCohortConfig`, built by
:func:`lesionsignal.core.validate.build`: every field has a default and a type the validator knows, nested sections
override only the keys they name, and every check names its field.

Findings are decided globally and made in the CT before projection: cardiomegaly is a resized heart, labelled by the
resulting cardiothoracic ratio (CTR > ``ctr_threshold``); edema is a diffuse bilateral rise of lung attenuation;
Calcification, Nodule and Mass lesions replace lung parenchyma, with ChestX-Det10-like size ordering, several per
film or none.

The canvas side is not a field: it is the study's canvas, handed to the build, and hashed with the configuration
(:func:`output_parameters`) into the cohort's digest and folder name.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

from lesionsignal.core.validate import FieldError
from lesionsignal.demo.prep_params import PrepParams

MIN_CANVAS = 64  # the smallest canvas side a build accepts


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
        if self.extra_mean < 0:
            raise FieldError("extra_mean", f"must be >= 0, got {self.extra_mean}")
        if self.max_count < 1:
            raise FieldError("max_count", f"must be at least 1, got {self.max_count}")
        _check_range("diameter_mm", self.diameter_mm, 0.5)
        _check_range("hu", self.hu, -1000.0, 3000.0)
        _check_range("satellites", self.satellites, 0)
        if self.edge_mm <= 0:
            raise FieldError("edge_mm", f"must be positive, got {self.edge_mm}")
        if not 0 <= self.elongation < 1:
            raise FieldError("elongation", f"must be in [0, 1), got {self.elongation}")
        if self.min_depth < 0:
            raise FieldError("min_depth", f"must be >= 0, got {self.min_depth}")


# Each class's defaults are a subclass, so that a parameter file overriding one key of ``nodule`` keeps the nodule's
# other values. Sizes follow the radiological definitions (nodule < 30 mm <= mass) and keep ChestX-Det10's ordering of
# median box sizes, Calcification < Nodule < Mass; the frequencies are raised above ChestX-Det10's so that a 400-film
# demo has enough positives of each class in its test split.
@dataclass(frozen=True)
class CalcificationClass(LesionClass):
    probability: float = 0.25
    extra_mean: float = 0.7
    max_count: int = 4
    diameter_mm: tuple[float, float] = (5.0, 12.0)
    hu: tuple[float, float] = (400.0, 1000.0)
    edge_mm: float = 0.4
    elongation: float = 0.1
    satellites: tuple[int, int] = (0, 0)
    min_depth: float = 1.0


@dataclass(frozen=True)
class NoduleClass(LesionClass):
    probability: float = 0.30
    extra_mean: float = 1.0
    max_count: int = 4
    diameter_mm: tuple[float, float] = (8.0, 28.0)
    hu: tuple[float, float] = (0.0, 60.0)
    edge_mm: float = 1.0
    elongation: float = 0.25
    satellites: tuple[int, int] = (0, 1)
    min_depth: float = 0.8


@dataclass(frozen=True)
class MassClass(LesionClass):
    probability: float = 0.20
    extra_mean: float = 0.15
    max_count: int = 2
    diameter_mm: tuple[float, float] = (32.0, 65.0)
    hu: tuple[float, float] = (10.0, 60.0)
    edge_mm: float = 1.5
    elongation: float = 0.3
    satellites: tuple[int, int] = (1, 3)
    min_depth: float = 0.5


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
    """Everything the generator uses but the canvas; hashable. ``workers`` changes speed only, never the output."""

    n_images: int = 400
    images_per_subject: int = 2
    test_fraction: float = 0.2
    seed: int = 42
    p_cardiomegaly: float = 0.3
    cardiomegaly_scale: tuple[float, float] = (1.25, 1.5)  # on top of the subject's baseline heart
    ctr_threshold: float = 0.5
    p_edema: float = 0.3
    edema_hu: tuple[float, float] = (150.0, 350.0)  # peak rise of lung attenuation
    calcification: CalcificationClass = CalcificationClass()
    nodule: NoduleClass = NoduleClass()
    mass: MassClass = MassClass()
    variation: Variation = field(default_factory=Variation)
    prep: PrepParams = field(default_factory=PrepParams)
    box_threshold: float = 0.15
    png_compression: int = 3
    workers: int = 2

    def __post_init__(self) -> None:
        for name in ("n_images", "images_per_subject", "workers"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise FieldError("test_fraction", f"must be in [0, 1), got {self.test_fraction}")
        for name in ("p_cardiomegaly", "p_edema"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FieldError(name, f"must be in [0, 1], got {getattr(self, name)}")
        _check_range("cardiomegaly_scale", self.cardiomegaly_scale, 1.0)
        _check_range("edema_hu", self.edema_hu, 0.0)
        if not 0.0 < self.box_threshold < 1.0:
            raise FieldError("box_threshold", f"must be in (0, 1), got {self.box_threshold}")
        if not 0 <= self.png_compression <= 9:
            raise FieldError("png_compression", f"must be in 0..9, got {self.png_compression}")

    @property
    def n_subjects(self) -> int:
        return math.ceil(self.n_images / self.images_per_subject)


def output_parameters(config: DemoCohortConfig, canvas: int) -> dict:
    """The parameters that decide the output: the configuration but ``workers``, and the canvas side."""
    if canvas < MIN_CANVAS:
        raise ValueError(f"canvas must be at least {MIN_CANVAS}, got {canvas}")
    out = asdict(config)
    out.pop("workers")
    out["canvas"] = canvas  # where the configuration's own field used to be: the same digest, the same folder name
    return out


def output_digest(config: DemoCohortConfig, canvas: int) -> str:
    """Content hash of the output-deciding parameters (the build adds the CT, the packages and the code)."""
    blob = json.dumps(output_parameters(config, canvas), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def cohort_folder_name(config: DemoCohortConfig, canvas: int) -> str:
    """``demo-`` and 12 hex digits of the output digest: one folder per configuration and canvas."""
    return f"demo-{output_digest(config, canvas)[:12]}"
