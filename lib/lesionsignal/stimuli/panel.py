"""The controlled-stimulus panel: 29 conditions, each one square patch of a family with its parameters.

Every condition is a frozen ``Condition``; where a patch goes is ``lesionsignal.stimuli.placement`` and how it is
drawn is ``lesionsignal.stimuli.inject``. Beside the paper's 29, three families the paper lists as untested
(quantum noise, JPEG compression, a line streak) have one condition each; a run adds them only when its parameters
switch their family on (``resolve_panel``), so the paper's panel stays the 29.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import pandas as pd

GRAY_HALF_RANGE = 20  # drawn gray level: patch mode +- this
GRAY_CLIP = (20, 235)  # drawn gray levels and the whole modified geometric patch stay inside this range
ISO_BLUR_KERNEL = 21
ISO_BLUR_SIGMA = 0.0  # passed to OpenCV as is: 0 selects its rule, 3.5 px for a 21 px kernel
RETICULAR_AMPLITUDE = 0.08
GROUND_GLASS_AMPLITUDE = 0.06
GROUND_GLASS_SIGMA = 12.0
# The families the paper did not test (docs/PROTOCOL.md section 2.5).
QUANTUM_NOISE_QUANTA = 2000  # detected quanta at gray level 255: a patch at gray 128 gets about 4 gray levels of sd
QUANTUM_NOISE_READ = 2.0  # electronic (Gaussian) noise sd in gray levels
JPEG_QUALITY = 90  # "high quality": what PACS exports and teaching files commonly use
STREAK_WIDTH = 2  # px: a thin lead wire or tube seen edge-on
STREAK_AMPLITUDE = 0.2  # added on the line as a fraction of the patch mean (radiopaque: brighter)


class PanelError(ValueError):
    """Bad input to the perturbation panel: unknown condition, wrong canvas, patch that cannot be placed."""


class Family(enum.Enum):
    GEOMETRIC = "geometric"
    ISO_BLUR = "iso_blur"
    DIRECTIONAL_BLUR = "directional_blur"
    RETICULAR = "reticular"
    GROUND_GLASS = "ground_glass"
    # Untested by the paper; in a run only when switched on (``panel.extra_families``).
    QUANTUM_NOISE = "quantum_noise"
    JPEG = "jpeg"
    LINE_STREAK = "line_streak"


UNTESTED_FAMILIES: tuple[Family, ...] = (Family.QUANTUM_NOISE, Family.JPEG, Family.LINE_STREAK)


class Shape(enum.Enum):
    """Drawn pattern of a geometric condition."""

    CIRCLE = "circle"  # one gray level on the pixels whose centres lie within `radius` of the box centre
    DIAGONAL = "diagonal"  # one gray level on the main or the anti-diagonal (coin)
    SQUARE = "square"  # every pixel of the box drawn independently


# The parameter fields each family must set; every other parameter field must stay None, so a condition
# cannot carry a value that no code reads.
_FAMILY_FIELDS: Mapping[Family, frozenset[str]] = types.MappingProxyType(
    {
        Family.GEOMETRIC: frozenset({"shape"}),
        Family.ISO_BLUR: frozenset({"kernel", "sigma"}),
        Family.DIRECTIONAL_BLUR: frozenset({"angle_deg", "length"}),
        Family.RETICULAR: frozenset({"period", "amplitude"}),
        Family.GROUND_GLASS: frozenset({"sigma", "amplitude"}),
        Family.QUANTUM_NOISE: frozenset({"quanta", "read_noise"}),
        Family.JPEG: frozenset({"quality"}),
        Family.LINE_STREAK: frozenset({"width", "amplitude"}),
    }
)
_OPTIONAL_FIELDS = frozenset({"radius"})  # geometric circles only


@dataclass(frozen=True)
class Condition:
    """One perturbation of the panel: a family, the patch side in pixels, and the family's parameters."""

    name: str
    family: Family
    patch: int
    shape: Shape | None = None
    radius: int | None = None  # circle radius in px
    kernel: int | None = None  # Gaussian kernel side in px (iso blur)
    sigma: float | None = None  # iso blur: OpenCV sigma (0 = its rule); ground glass: bump sigma in px
    angle_deg: float | None = None  # direction of the motion line; 90 = cranio-caudal, 0 = lateral
    length: int | None = None  # motion line length in px, odd
    period: int | None = None  # reticular grid period in px
    amplitude: float | None = None  # added contrast as a fraction of the patch mean
    quanta: int | None = None  # quantum noise: detected quanta at gray level 255
    read_noise: float | None = None  # quantum noise: Gaussian sd in gray levels
    quality: int | None = None  # JPEG quality, 1-100
    width: int | None = None  # line streak: thickness in px

    def __post_init__(self) -> None:
        if self.patch < 1:
            raise PanelError(f"condition {self.name!r}: patch must be >= 1 px, got {self.patch}")
        required = _FAMILY_FIELDS[self.family]
        allowed = required | (_OPTIONAL_FIELDS if self.family is Family.GEOMETRIC else frozenset())
        for name in _parameter_field_names():
            value = getattr(self, name)
            if name in required and value is None:
                raise PanelError(f"condition {self.name!r}: family {self.family.value} needs {name}")
            if name not in allowed and value is not None:
                raise PanelError(f"condition {self.name!r}: {name} does not apply to {self.family.value}")
        if self.shape is Shape.CIRCLE and self.radius is None:
            raise PanelError(f"condition {self.name!r}: a circle needs radius")
        if self.length is not None and (self.length < 1 or self.length % 2 == 0):
            raise PanelError(f"condition {self.name!r}: length must be odd and >= 1, got {self.length}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise PanelError(f"condition {self.name!r}: JPEG quality must be in 1-100, got {self.quality}")
        for name in ("quanta", "width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PanelError(f"condition {self.name!r}: {name} must be >= 1, got {value}")
        if self.read_noise is not None and self.read_noise < 0:
            raise PanelError(f"condition {self.name!r}: read_noise must be >= 0, got {self.read_noise}")

    def area_ratio(self, canvas_size: int = 1024) -> float:
        """Patch area over canvas area, as a fraction (not a percentage)."""
        if canvas_size < 1:
            raise PanelError(f"canvas_size must be >= 1, got {canvas_size}")
        return self.patch**2 / canvas_size**2

    def describe(self) -> str:
        """Short human text of the parameters, for tables and figure captions."""
        return _DESCRIBERS[self.family](self)


def _parameter_field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(Condition) if f.name not in {"name", "family", "patch"})


def opencv_gaussian_sigma(ksize: int) -> float:
    """The sigma OpenCV derives from a kernel side when asked for sigma 0."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def _describe_geometric(c: Condition) -> str:
    gray = f"gray = patch mode ± {GRAY_HALF_RANGE}, clipped to {GRAY_CLIP[0]}-{GRAY_CLIP[1]}"
    if c.shape is Shape.CIRCLE:
        return f"filled circle r={c.radius} px in a {c.patch} px box, {gray}"
    if c.shape is Shape.DIAGONAL:
        return f"1 px diagonal (main or anti, coin) across {c.patch} px, {gray}"
    return f"{c.patch} px square, each pixel drawn independently, {gray}"


def _describe_iso(c: Condition) -> str:
    assert c.kernel is not None and c.sigma is not None
    sigma = c.sigma if c.sigma > 0 else opencv_gaussian_sigma(c.kernel)
    return f"Gaussian blur {c.kernel}x{c.kernel}, sigma {sigma:g} px"


def _describe_directional(c: Condition) -> str:
    assert c.angle_deg is not None
    direction = {90.0: "cranio-caudal", 0.0: "lateral"}.get(c.angle_deg, f"{c.angle_deg:g} deg")
    return f"motion blur, line L={c.length} px, {direction}, border reflect"


def _describe_reticular(c: Condition) -> str:
    assert c.amplitude is not None
    return f"sine grid, period {c.period} px, amplitude {c.amplitude:.0%} of patch mean"


def _describe_ground_glass(c: Condition) -> str:
    assert c.amplitude is not None
    return f"Gaussian bump sigma {c.sigma:g} px, amplitude {c.amplitude:.0%} of patch mean"


def _describe_quantum_noise(c: Condition) -> str:
    return f"Poisson-Gaussian noise, {c.quanta} quanta at gray 255, read noise sd {c.read_noise:g} gray levels"


def _describe_jpeg(c: Condition) -> str:
    return f"JPEG round trip of the patch at quality {c.quality} (8 x 8 blocks aligned to the patch)"


def _describe_line_streak(c: Condition) -> str:
    assert c.amplitude is not None
    return f"straight line {c.width} px wide across the patch at a drawn angle, +{c.amplitude:.0%} of patch mean"


_DESCRIBERS = types.MappingProxyType(
    {
        Family.GEOMETRIC: _describe_geometric,
        Family.ISO_BLUR: _describe_iso,
        Family.DIRECTIONAL_BLUR: _describe_directional,
        Family.RETICULAR: _describe_reticular,
        Family.GROUND_GLASS: _describe_ground_glass,
        Family.QUANTUM_NOISE: _describe_quantum_noise,
        Family.JPEG: _describe_jpeg,
        Family.LINE_STREAK: _describe_line_streak,
    }
)


def _build_panel() -> tuple[Condition, ...]:
    geo = Family.GEOMETRIC
    conditions = [
        Condition("C1", geo, 4, shape=Shape.CIRCLE, radius=1),
        Condition("C2", geo, 8, shape=Shape.CIRCLE, radius=2),
        Condition("L4", geo, 4, shape=Shape.DIAGONAL),
        Condition("L8", geo, 8, shape=Shape.DIAGONAL),
        Condition("S4", geo, 4, shape=Shape.SQUARE),
        Condition("S8", geo, 8, shape=Shape.SQUARE),
    ]
    conditions += [
        Condition(f"iso_blur_{p}", Family.ISO_BLUR, p, kernel=ISO_BLUR_KERNEL, sigma=ISO_BLUR_SIGMA) for p in (4, 8)
    ]
    conditions += [
        Condition(f"dir_{direction}_L{length}_P{p}", Family.DIRECTIONAL_BLUR, p, angle_deg=angle, length=length)
        for direction, angle in (("cranio", 90.0), ("lateral", 0.0))
        for length in (11, 21, 31)
        for p in (16, 32, 64)
    ]
    conditions += [
        Condition("reticular_fine_32", Family.RETICULAR, 32, period=3, amplitude=RETICULAR_AMPLITUDE),
        Condition("reticular_coarse_64", Family.RETICULAR, 64, period=6, amplitude=RETICULAR_AMPLITUDE),
        Condition(
            "ground_glass_64",
            Family.GROUND_GLASS,
            64,
            sigma=GROUND_GLASS_SIGMA,
            amplitude=GROUND_GLASS_AMPLITUDE,
        ),
    ]
    return tuple(conditions)


def _build_untested() -> tuple[Condition, ...]:
    # P 64: a patch side the paper's panel already uses, so the clean units (pooled at every side) stay as they are.
    return (
        Condition(
            "quantum_noise_64", Family.QUANTUM_NOISE, 64, quanta=QUANTUM_NOISE_QUANTA, read_noise=QUANTUM_NOISE_READ
        ),
        Condition("jpeg_q90_64", Family.JPEG, 64, quality=JPEG_QUALITY),
        Condition("line_streak_64", Family.LINE_STREAK, 64, width=STREAK_WIDTH, amplitude=STREAK_AMPLITUDE),
    )


_PANEL: tuple[Condition, ...] = _build_panel()
_UNTESTED: tuple[Condition, ...] = _build_untested()
_BY_NAME: Mapping[str, Condition] = types.MappingProxyType({c.name: c for c in (*_PANEL, *_UNTESTED)})


def condition_names() -> tuple[str, ...]:
    """The paper's 29 names in canonical order: geometric, iso blur, directional, reticular, ground glass."""
    return tuple(c.name for c in _PANEL)


def untested_condition_names() -> tuple[str, ...]:
    """The conditions of the families the paper did not test, in ``UNTESTED_FAMILIES`` order."""
    return tuple(c.name for c in _UNTESTED)


def all_condition_names() -> tuple[str, ...]:
    """Every condition a run can name: the paper's 29, then the untested families'."""
    return (*condition_names(), *untested_condition_names())


def get_condition(name: str) -> Condition:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise PanelError(f"unknown condition {name!r}; known: {', '.join(all_condition_names())}") from None


def panel(names: Sequence[str] = ()) -> list[Condition]:
    """The named conditions in the order given; no names gives the whole panel in canonical order."""
    if isinstance(names, str):
        raise PanelError(f"panel() takes a sequence of names, got the string {names!r}")
    return [get_condition(n) for n in names] if names else list(_PANEL)


def resolve_panel(names: Sequence[str], extra_families: Sequence[Family]) -> list[Condition]:
    """A run's conditions: the named ones (none: the paper's 29), then every condition of each switched-on untested
    family not already named. Naming an untested family's condition without switching the family on is refused, so
    the parameters say in one place whether a run goes beyond the paper's panel."""
    extra = tuple(extra_families)
    wrong = [f.value for f in extra if f not in UNTESTED_FAMILIES]
    if wrong:
        allowed = ", ".join(f.value for f in UNTESTED_FAMILIES)
        raise PanelError(f"extra families {wrong} are part of the paper's panel already; switch on only: {allowed}")
    chosen = panel(names)
    for condition in chosen:
        if condition.family in UNTESTED_FAMILIES and condition.family not in extra:
            raise PanelError(
                f"condition {condition.name!r} belongs to the untested family {condition.family.value!r}: "
                "switch the family on (panel.extra_families) to use it"
            )
    named = {c.name for c in chosen}
    return chosen + [c for c in _UNTESTED if c.family in extra and c.name not in named]


def _two_significant(value: float) -> float:
    return float(f"{value:.2g}")


def conditions_table(conditions: Sequence[Condition], canvas_size: int = 1024) -> pd.DataFrame:
    """One row per condition; area ratio in percent, two significant figures as in the paper."""
    return pd.DataFrame(
        {
            "name": [c.name for c in conditions],
            "family": [c.family.value for c in conditions],
            "patch px": [c.patch for c in conditions],
            "area ratio (%)": [_two_significant(100 * c.area_ratio(canvas_size)) for c in conditions],
            "parameters": [c.describe() for c in conditions],
        }
    )
