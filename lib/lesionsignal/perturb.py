"""The controlled-stimulus perturbation panel (SPEC section 2): 29 conditions, one square patch each.

Every condition is a frozen `Condition`; `apply` places its patch on an 8-bit square canvas and returns a new
canvas (the input is never modified). Placement and every random draw of a condition come from ONE generator
seeded by the image's file basename, so for one image and one patch side every condition lands at the same
place, and the clean twin's location is known without running anything.
"""

from __future__ import annotations

import enum
import hashlib
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import cv2
import numpy as np
import pandas as pd

GRAY_HALF_RANGE = 20  # drawn gray level: patch mode +- this
GRAY_CLIP = (20, 235)  # drawn gray levels and the whole modified geometric patch stay inside this range
ISO_BLUR_KERNEL = 21
ISO_BLUR_SIGMA = 0.0  # passed to OpenCV as is: 0 selects its rule, 3.5 px for a 21 px kernel
RETICULAR_AMPLITUDE = 0.08
GROUND_GLASS_AMPLITUDE = 0.06
GROUND_GLASS_SIGMA = 12.0


class PanelError(ValueError):
    """Bad input to the perturbation panel: unknown condition, wrong canvas, patch that cannot be placed."""


class Family(enum.Enum):
    GEOMETRIC = "geometric"
    ISO_BLUR = "iso_blur"
    DIRECTIONAL_BLUR = "directional_blur"
    RETICULAR = "reticular"
    GROUND_GLASS = "ground_glass"


class Shape(enum.Enum):
    """Drawn pattern of a geometric condition."""

    CIRCLE = "circle"  # one gray level on the pixels whose centres lie within `radius` of the box centre
    DIAGONAL = "diagonal"  # one gray level on the main or the anti-diagonal (coin)
    SQUARE = "square"  # every pixel of the box drawn independently


@dataclass(frozen=True)
class Box:
    """Integer pixel corners, half-open: x1 <= x < x2, y1 <= y < y2."""

    x1: int
    y1: int
    x2: int
    y2: int

    def __post_init__(self) -> None:
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise PanelError(f"empty box {self.as_tuple()}: need x1 < x2 and y1 < y2")

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x1, self.y1, self.x2, self.y2)

    def slices(self) -> tuple[slice, slice]:
        """Index of the box in a `[y, x]` array."""
        return slice(self.y1, self.y2), slice(self.x1, self.x2)


# The parameter fields each family must set; every other parameter field must stay None, so a condition
# cannot carry a value that no code reads.
_FAMILY_FIELDS: Mapping[Family, frozenset[str]] = types.MappingProxyType(
    {
        Family.GEOMETRIC: frozenset({"shape"}),
        Family.ISO_BLUR: frozenset({"kernel", "sigma"}),
        Family.DIRECTIONAL_BLUR: frozenset({"angle_deg", "length"}),
        Family.RETICULAR: frozenset({"period", "amplitude"}),
        Family.GROUND_GLASS: frozenset({"sigma", "amplitude"}),
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


_DESCRIBERS = types.MappingProxyType(
    {
        Family.GEOMETRIC: _describe_geometric,
        Family.ISO_BLUR: _describe_iso,
        Family.DIRECTIONAL_BLUR: _describe_directional,
        Family.RETICULAR: _describe_reticular,
        Family.GROUND_GLASS: _describe_ground_glass,
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


_PANEL: tuple[Condition, ...] = _build_panel()
_BY_NAME: Mapping[str, Condition] = types.MappingProxyType({c.name: c for c in _PANEL})


def condition_names() -> tuple[str, ...]:
    """The 29 names in canonical order: geometric, iso blur, directional, reticular, ground glass."""
    return tuple(c.name for c in _PANEL)


def get_condition(name: str) -> Condition:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise PanelError(f"unknown condition {name!r}; known: {', '.join(condition_names())}") from None


def panel(names: Sequence[str] = ()) -> list[Condition]:
    """The named conditions in the order given; no names gives the whole panel in canonical order."""
    if isinstance(names, str):
        raise PanelError(f"panel() takes a sequence of names, got the string {names!r}")
    return [get_condition(n) for n in names] if names else list(_PANEL)


# ---------------------------------------------------------------- placement


def placement_seed(file_basename: str, base_seed: int = 42) -> int:
    """int(sha256(f"{base_seed}_{file_basename}").hexdigest()[:8], 16): the seed of one image's generator."""
    _check_basename(file_basename)
    digest = hashlib.sha256(f"{base_seed}_{file_basename}".encode()).hexdigest()
    return int(digest[:8], 16)


def _check_basename(file_basename: str) -> None:
    # A path instead of a basename would silently move every patch, since the seed hashes the string.
    if not file_basename or "/" in file_basename or "\\" in file_basename:
        raise PanelError(f"file_basename must be a non-empty base name without folders, got {file_basename!r}")


def central_region(canvas_size: int, margin: float) -> tuple[int, int]:
    """Half-open [lo, hi) of the central region on each axis: lo = int(margin * S), hi = S - lo."""
    if not 0.0 <= margin < 0.5:
        raise PanelError(f"margin must be in [0, 0.5), got {margin}")
    lo = int(margin * canvas_size)
    return lo, canvas_size - lo


def _placement(
    file_basename: str, patch: int, canvas_size: int, margin: float, base_seed: int
) -> tuple[Box, np.random.Generator]:
    """The patch box and the generator, left positioned for the condition's own draws."""
    if patch < 1:
        raise PanelError(f"patch side must be >= 1 px, got {patch}")
    lo, hi = central_region(canvas_size, margin)
    if hi - lo < patch:
        raise PanelError(
            f"a {patch} px patch does not fit the central region [{lo}, {hi}) of a {canvas_size} px canvas "
            f"(margin {margin})"
        )
    rng = np.random.default_rng(placement_seed(file_basename, base_seed))
    # y first, then x (SPEC); the upper bound keeps the whole patch inside [lo, hi).
    y = int(rng.integers(lo, hi - patch + 1))
    x = int(rng.integers(lo, hi - patch + 1))
    return Box(x, y, x + patch, y + patch), rng


def patch_box(
    file_basename: str, patch: int, canvas_size: int = 1024, margin: float = 0.15, base_seed: int = 42
) -> Box:
    """Where a P x P patch of this image goes: the same box for every condition with that P.

    rng = default_rng(placement_seed(...)); y = rng.integers(lo, hi - P + 1), then x likewise, with [lo, hi)
    the central region, so the whole patch lies inside it.
    """
    return _placement(file_basename, patch, canvas_size, margin, base_seed)[0]


# ---------------------------------------------------------------- kernels and masks


def line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """L x L float64 kernel: ones at [round(c - t sin th), round(c + t cos th)], t in linspace(-c, c, L).

    c = (L - 1) / 2; rows grow downwards, so 90 deg is a vertical line and 0 deg a horizontal one. Rounding is
    numpy's (half to even, symmetric about c). Cells hit by more than one t count once; the kernel is then
    normalised to sum 1.
    """
    if length < 1 or length % 2 == 0:
        raise PanelError(f"line kernel length must be odd and >= 1, got {length}")
    if not math.isfinite(angle_deg):
        raise PanelError(f"line kernel angle must be finite, got {angle_deg}")
    c = (length - 1) / 2
    t = np.linspace(-c, c, length)
    theta = math.radians(angle_deg)
    rows = np.round(c - t * math.sin(theta)).astype(np.intp)
    cols = np.round(c + t * math.cos(theta)).astype(np.intp)
    kernel = np.zeros((length, length), dtype=np.float64)
    kernel[rows, cols] = 1.0
    return kernel / kernel.sum()


def circle_mask(patch: int, radius: float) -> np.ndarray:
    """Pixels whose centres lie within `radius` (inclusive) of the box centre ((P - 1) / 2, (P - 1) / 2)."""
    offsets = np.arange(patch) - (patch - 1) / 2
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def diagonal_mask(patch: int, anti: bool) -> np.ndarray:
    """One pixel per row and column: the main diagonal, or the anti-diagonal when `anti`."""
    mask = np.eye(patch, dtype=bool)
    return mask[:, ::-1] if anti else mask


def gray_range(mode: int) -> tuple[int, int]:
    """Inclusive gray range [mode - 20, mode + 20] clipped to [20, 235] (never empty for a uint8 mode)."""
    lo, hi = GRAY_CLIP
    return int(np.clip(mode - GRAY_HALF_RANGE, lo, hi)), int(np.clip(mode + GRAY_HALF_RANGE, lo, hi))


def patch_mode(patch: np.ndarray) -> int:
    """Most frequent uint8 value; ties go to the smallest value (argmax returns the first maximum)."""
    return int(np.bincount(patch.ravel(), minlength=256).argmax())


# ---------------------------------------------------------------- families


def _geometric(canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator) -> np.ndarray:
    """Draw the pattern, then clip the whole P x P patch (not only the drawn pixels) to [20, 235].

    Draw order on the shared generator: the gray level (S: one per pixel, row-major), then for a diagonal the
    coin (0 = main, 1 = anti).
    """
    out = canvas.copy()
    view = out[box.slices()]
    lo, hi = gray_range(patch_mode(view))
    if c.shape is Shape.SQUARE:
        view[...] = rng.integers(lo, hi + 1, size=view.shape)
    else:
        gray = int(rng.integers(lo, hi + 1))
        if c.shape is Shape.CIRCLE:
            assert c.radius is not None
            mask = circle_mask(c.patch, c.radius)
        else:
            mask = diagonal_mask(c.patch, anti=bool(rng.integers(0, 2)))
        view[mask] = gray
    np.clip(view, *GRAY_CLIP, out=view)
    return out


def _filter_patch(
    canvas: np.ndarray, box: Box, radius: int, filter_fn: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Filter only the box plus `radius` px around it (crop clipped to the image) and paste the box back.

    Inside the crop every box pixel's neighbourhood is real image; where the crop meets the image edge the
    filter's border rule sees the same pixels as on the whole image, so the box equals whole-image filtering.
    """
    size_y, size_x = canvas.shape
    y0, x0 = max(0, box.y1 - radius), max(0, box.x1 - radius)
    y1, x1 = min(size_y, box.y2 + radius), min(size_x, box.x2 + radius)
    # A contiguous copy: OpenCV must not treat the crop as a view into a larger image.
    crop = np.ascontiguousarray(canvas[y0:y1, x0:x1])
    filtered = filter_fn(crop)
    out = canvas.copy()
    out[box.slices()] = filtered[box.y1 - y0 : box.y2 - y0, box.x1 - x0 : box.x2 - x0]
    return out


def iso_blur_image(image: np.ndarray, c: Condition) -> np.ndarray:
    """Whole-array Gaussian blur of the condition (OpenCV default border, reflect-101)."""
    assert c.kernel is not None and c.sigma is not None
    return cv2.GaussianBlur(image, (c.kernel, c.kernel), c.sigma)


def directional_blur_image(image: np.ndarray, c: Condition) -> np.ndarray:
    """Whole-array motion blur of the condition (cv2.filter2D, BORDER_REFLECT, same depth)."""
    assert c.length is not None and c.angle_deg is not None
    # OpenCV filters large kernels through a DFT whose float error depends on the array size; for the panel's
    # straight lines the exact result k / L (L odd) is never x.5, so the rounded uint8 result does not depend
    # on whether the whole image or a crop is filtered (tests/test_perturb.py checks this pixel for pixel).
    return cv2.filter2D(image, -1, line_kernel(c.length, c.angle_deg), borderType=cv2.BORDER_REFLECT)


def _iso_blur(canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator) -> np.ndarray:
    assert c.kernel is not None
    return _filter_patch(canvas, box, c.kernel // 2, lambda crop: iso_blur_image(crop, c))


def _directional_blur(canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator) -> np.ndarray:
    assert c.length is not None
    return _filter_patch(canvas, box, c.length // 2, lambda crop: directional_blur_image(crop, c))


def _add_texture(canvas: np.ndarray, box: Box, texture: np.ndarray, amplitude: float) -> np.ndarray:
    """Add texture x patch mean x amplitude in float64, round half to even, clip to [0, 255]."""
    out = canvas.copy()
    patch = canvas[box.slices()].astype(np.float64)
    added = patch + texture * patch.mean() * amplitude
    out[box.slices()] = np.clip(np.rint(added), 0, 255).astype(np.uint8)
    return out


def reticular_grid(patch: int, period: int) -> np.ndarray:
    """sin(2 pi x / T) + sin(2 pi y / T) over offsets 0..P-1, divided by its maximum absolute value."""
    wave = np.sin(2 * np.pi * np.arange(patch) / period)
    grid = wave[:, None] + wave[None, :]
    peak = np.abs(grid).max()
    # A period of 1 or 2 samples sin only at its zeros: there is no grid to scale.
    if peak == 0:
        raise PanelError(f"reticular period {period} px gives an all-zero grid on a {patch} px patch")
    return grid / peak


def ground_glass_bump(patch: int, sigma: float) -> np.ndarray:
    """exp(-r^2 / (2 sigma^2)), r measured from the patch centre ((P - 1) / 2, (P - 1) / 2)."""
    offsets = np.arange(patch) - (patch - 1) / 2
    r2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
    return np.exp(-r2 / (2 * sigma**2))


def _reticular(canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator) -> np.ndarray:
    assert c.period is not None and c.amplitude is not None
    return _add_texture(canvas, box, reticular_grid(c.patch, c.period), c.amplitude)


def _ground_glass(canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator) -> np.ndarray:
    assert c.sigma is not None and c.amplitude is not None
    return _add_texture(canvas, box, ground_glass_bump(c.patch, c.sigma), c.amplitude)


_INJECTORS = types.MappingProxyType(
    {
        Family.GEOMETRIC: _geometric,
        Family.ISO_BLUR: _iso_blur,
        Family.DIRECTIONAL_BLUR: _directional_blur,
        Family.RETICULAR: _reticular,
        Family.GROUND_GLASS: _ground_glass,
    }
)


def inject_at(canvas: np.ndarray, condition: Condition, box: Box, rng: np.random.Generator) -> np.ndarray:
    """Apply a condition at a given box, skipping placement; `rng` feeds the condition's own draws."""
    if box.width != condition.patch or box.height != condition.patch:
        raise PanelError(f"condition {condition.name!r} needs a {condition.patch} px box, got {box.as_tuple()}")
    size_y, size_x = canvas.shape
    if box.x1 < 0 or box.y1 < 0 or box.x2 > size_x or box.y2 > size_y:
        raise PanelError(f"box {box.as_tuple()} lies outside the {size_y}x{size_x} canvas")
    return _INJECTORS[condition.family](canvas, condition, box, rng)


# ---------------------------------------------------------------- public entry point


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays with == has no single truth value
class Perturbed:
    image: np.ndarray
    box: Box
    condition: str


def check_canvas(canvas: np.ndarray) -> None:
    """A canvas is a 2-D, square, uint8 array."""
    if not isinstance(canvas, np.ndarray):
        raise PanelError(f"canvas must be a numpy array, got {type(canvas).__name__}")
    if canvas.ndim != 2 or canvas.shape[0] != canvas.shape[1] or canvas.dtype != np.uint8:
        raise PanelError(f"canvas must be a 2-D square uint8 array, got shape {canvas.shape} dtype {canvas.dtype}")


def apply(
    canvas: np.ndarray,
    condition: Condition | str,
    file_basename: str,
    *,
    margin: float = 0.15,
    base_seed: int = 42,
) -> Perturbed:
    """Perturb one canvas with one condition at the image's seeded location; the input stays unchanged.

    The generator that drew the location goes on to draw the condition's random values, so the whole result
    is a function of (canvas, condition, basename, margin, base_seed).
    """
    cond = condition if isinstance(condition, Condition) else get_condition(condition)
    check_canvas(canvas)
    try:
        box, rng = _placement(file_basename, cond.patch, canvas.shape[0], margin, base_seed)
    except PanelError as err:
        raise PanelError(f"canvas of shape {canvas.shape} dtype {canvas.dtype}: {err}") from None
    return Perturbed(image=inject_at(canvas, cond, box, rng), box=box, condition=cond.name)


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
