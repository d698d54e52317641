"""Drawing a condition into a canvas: kernels, masks, the families, and ``apply`` (placement + injection).

``apply`` returns a new canvas (the input is never modified) and the patch box.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from lesionsignal.core.box import Box
from lesionsignal.stimuli.convention import (
    SPEC,
    BumpCentre,
    CircleCentre,
    DiagonalCoin,
    PanelSwitches,
    PatchClip,
    TextureCast,
)
from lesionsignal.stimuli.panel import (
    GRAY_CLIP,
    GRAY_HALF_RANGE,
    Condition,
    Family,
    PanelError,
    Shape,
    get_condition,
)
from lesionsignal.stimuli.placement import place


@functools.lru_cache(maxsize=64)
def line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """L x L float64 kernel: ones at [round(c - t sin th), round(c + t cos th)], t in linspace(-c, c, L).

    c = (L - 1) / 2; rows grow downwards, so 90 deg is a vertical line and 0 deg a horizontal one. Rounding is
    numpy's (half to even, symmetric about c). Cells hit by more than one t count once; the kernel is then
    normalised to sum 1. Kept once per (length, angle), read-only: the panel asks for six kernels a million times.
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
    kernel /= kernel.sum()
    kernel.setflags(write=False)
    return kernel


def circle_mask(patch: int, radius: float, centre: CircleCentre = CircleCentre.BOX_CENTRE) -> np.ndarray:
    """Pixels whose centres lie within `radius` (inclusive) of the circle's centre.

    BOX_CENTRE: ((P - 1) / 2, (P - 1) / 2), the box's middle; PIXEL: the pixel (P // 2, P // 2), which for the
    panel's radii 1 and 2 is the footprint of a filled cv2.circle there (5 and 13 px).
    """
    middle = (patch - 1) / 2 if centre is CircleCentre.BOX_CENTRE else patch // 2
    offsets = np.arange(patch) - middle
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


def _geometric(
    canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator, switches: PanelSwitches
) -> np.ndarray:
    """Draw the pattern, then clip the whole P x P patch (not only the drawn pixels) to [20, 235].

    Draw order on the shared generator: the gray level (S: one per pixel, row-major), then for a diagonal the
    coin (ONE_IS_ANTI: 0 = main, 1 = anti; ONE_IS_MAIN: the reverse).
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
            mask = circle_mask(c.patch, c.radius, switches.circle)
        else:
            one = bool(rng.integers(0, 2))
            mask = diagonal_mask(c.patch, anti=one if switches.diagonal is DiagonalCoin.ONE_IS_ANTI else not one)
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


def _iso_blur(
    canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator, switches: PanelSwitches
) -> np.ndarray:
    return _filter_patch(canvas, box, context_radius(c), lambda crop: iso_blur_image(crop, c))


def _directional_blur(
    canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator, switches: PanelSwitches
) -> np.ndarray:
    return _filter_patch(canvas, box, context_radius(c), lambda crop: directional_blur_image(crop, c))


def to_uint8(values: np.ndarray, cast: TextureCast) -> np.ndarray:
    """Float gray levels to uint8: clipped to [0, 255], then rounded half to even or truncated."""
    clipped = np.clip(values, 0, 255)
    # Clipped first, so truncation towards zero is astype(uint8) without its wrap-round of negatives.
    return (np.rint(clipped) if cast is TextureCast.ROUND else np.trunc(clipped)).astype(np.uint8)


def _add_texture(canvas: np.ndarray, box: Box, texture: np.ndarray, amplitude: float, cast: TextureCast) -> np.ndarray:
    """Add texture x patch mean x amplitude in float64, clip to [0, 255], then round half to even or truncate."""
    out = canvas.copy()
    patch = canvas[box.slices()].astype(np.float64)
    out[box.slices()] = to_uint8(patch + texture * patch.mean() * amplitude, cast)
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


def ground_glass_bump(patch: int, sigma: float, centre: BumpCentre = BumpCentre.PIXEL_MEAN) -> np.ndarray:
    """exp(-r^2 / (2 sigma^2)), r measured from the patch centre: (P - 1) / 2 (PIXEL_MEAN) or P / 2 (HALF_SIDE)."""
    offsets = np.arange(patch) - ((patch - 1) / 2 if centre is BumpCentre.PIXEL_MEAN else patch / 2)
    r2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
    return np.exp(-r2 / (2 * sigma**2))


def _reticular(
    canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator, switches: PanelSwitches
) -> np.ndarray:
    assert c.period is not None and c.amplitude is not None
    return _add_texture(canvas, box, reticular_grid(c.patch, c.period), c.amplitude, switches.texture_cast)


def _ground_glass(
    canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator, switches: PanelSwitches
) -> np.ndarray:
    assert c.sigma is not None and c.amplitude is not None
    bump = ground_glass_bump(c.patch, c.sigma, switches.bump_centre)
    return _add_texture(canvas, box, bump, c.amplitude, switches.texture_cast)


# ---------------------------------------------------------------- families the paper did not test


def _quantum_noise(
    canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator, switches: PanelSwitches
) -> np.ndarray:
    """Poisson-Gaussian noise: each gray level v becomes g * Poisson(v / g) + N(0, read_noise^2), g = 255 / quanta.

    The gray level stands in for the detected signal, so brighter (denser) pixels get more absolute noise, as quanta
    do. Draw order on the shared generator: every pixel's Poisson count (row-major), then every pixel's Gaussian.
    """
    assert c.quanta is not None and c.read_noise is not None
    out = canvas.copy()
    gain = 255.0 / c.quanta
    patch = canvas[box.slices()].astype(np.float64)
    counts = rng.poisson(patch / gain)
    noisy = counts * gain + rng.normal(0.0, c.read_noise, size=patch.shape)
    out[box.slices()] = to_uint8(noisy, switches.texture_cast)
    return out


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """An 8-bit gray image encoded as baseline JPEG at ``quality`` by OpenCV's libjpeg, and decoded again."""
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise PanelError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)


def _jpeg(canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator, switches: PanelSwitches) -> np.ndarray:
    """The patch alone goes through JPEG, so its 8 x 8 blocks align with the box and nothing outside it changes."""
    assert c.quality is not None
    out = canvas.copy()
    out[box.slices()] = jpeg_round_trip(canvas[box.slices()], c.quality)
    return out


def streak_mask(patch: int, width: float, angle_deg: float, offset: float) -> np.ndarray:
    """Pixels whose centres lie less than width / 2 from a straight line across the patch.

    The line runs at ``angle_deg`` (0 = lateral, 90 = cranio-caudal; rows grow downwards) and passes ``offset`` px
    from the patch centre ((P-1)/2, (P-1)/2) along its normal, so it crosses the patch from edge to edge.
    """
    theta = math.radians(angle_deg)
    offsets = np.arange(patch) - (patch - 1) / 2
    distance = offsets[None, :] * -math.sin(theta) + offsets[:, None] * math.cos(theta) - offset
    return np.abs(distance) < width / 2


def _line_streak(
    canvas: np.ndarray, c: Condition, box: Box, rng: np.random.Generator, switches: PanelSwitches
) -> np.ndarray:
    """A radiopaque line (lead wire, tube) across the patch: + amplitude x patch mean on the line's pixels.

    Draw order on the shared generator: the angle (uniform in [0, 180) deg), then the offset from the centre
    (uniform in [-P/4, P/4] px), so the line always crosses the patch.
    """
    assert c.width is not None and c.amplitude is not None
    angle = float(rng.uniform(0.0, 180.0))
    offset = float(rng.uniform(-c.patch / 4, c.patch / 4))
    mask = streak_mask(c.patch, c.width, angle, offset)
    patch = canvas[box.slices()].astype(np.float64)
    out = canvas.copy()
    out[box.slices()] = to_uint8(patch + mask * patch.mean() * c.amplitude, switches.texture_cast)
    return out


_INJECTORS = types.MappingProxyType(
    {
        Family.GEOMETRIC: _geometric,
        Family.ISO_BLUR: _iso_blur,
        Family.DIRECTIONAL_BLUR: _directional_blur,
        Family.RETICULAR: _reticular,
        Family.GROUND_GLASS: _ground_glass,
        Family.QUANTUM_NOISE: _quantum_noise,
        Family.JPEG: _jpeg,
        Family.LINE_STREAK: _line_streak,
    }
)


def inject_at(
    canvas: np.ndarray,
    condition: Condition,
    box: Box,
    rng: np.random.Generator,
    switches: PanelSwitches = SPEC,
) -> np.ndarray:
    """Apply a condition at a given box, skipping placement; `rng` feeds the condition's own draws."""
    if box.width != condition.patch or box.height != condition.patch:
        raise PanelError(f"condition {condition.name!r} needs a {condition.patch} px box, got {box.as_tuple()}")
    size_y, size_x = canvas.shape
    if box.x1 < 0 or box.y1 < 0 or box.x2 > size_x or box.y2 > size_y:
        raise PanelError(f"box {box.as_tuple()} lies outside the {size_y}x{size_x} canvas")
    out = _INJECTORS[condition.family](canvas, condition, box, rng, switches)
    if switches.clip is PatchClip.EVERY_FAMILY:
        view = out[box.slices()]
        np.clip(view, *GRAY_CLIP, out=view)
    return out


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


@dataclass(frozen=True, eq=False)
class PerturbedPatch:
    """What a condition changes: the box and its new pixels (every family writes inside its box only)."""

    patch: np.ndarray  # (box.height, box.width) uint8
    box: Box
    condition: str


def context_radius(condition: Condition) -> int:
    """How far outside its box a condition reads the canvas: a filter's half-width, else nothing."""
    if condition.family is Family.ISO_BLUR:
        assert condition.kernel is not None
        return condition.kernel // 2
    if condition.family is Family.DIRECTIONAL_BLUR:
        assert condition.length is not None
        return condition.length // 2
    return 0


def apply_patch(
    canvas: np.ndarray,
    condition: Condition | str,
    file_basename: str,
    *,
    margin: float = 0.15,
    base_seed: int = 42,
    switches: PanelSwitches = SPEC,
) -> PerturbedPatch:
    """The box ``apply`` would perturb and its new pixels, computed on the box and the context the condition reads
    around it, without copying the canvas (the extraction engine perturbs 30 conditions of every image)."""
    cond = condition if isinstance(condition, Condition) else get_condition(condition)
    check_canvas(canvas)
    try:
        box, rng = place(file_basename, cond.patch, canvas.shape[0], margin, base_seed, switches.placement)
    except PanelError as err:
        raise PanelError(f"canvas of shape {canvas.shape} dtype {canvas.dtype}: {err}") from None
    # The crop reaches the canvas edge wherever the context would pass it, so a filter's border rule sees what it
    # sees on the whole canvas.
    reach = context_radius(cond)
    y0, x0 = max(0, box.y1 - reach), max(0, box.x1 - reach)
    y1, x1 = min(canvas.shape[0], box.y2 + reach), min(canvas.shape[1], box.x2 + reach)
    local = Box(box.x1 - x0, box.y1 - y0, box.x2 - x0, box.y2 - y0)
    out = inject_at(np.ascontiguousarray(canvas[y0:y1, x0:x1]), cond, local, rng, switches)
    return PerturbedPatch(patch=out[local.slices()].copy(), box=box, condition=cond.name)


def apply(
    canvas: np.ndarray,
    condition: Condition | str,
    file_basename: str,
    *,
    margin: float = 0.15,
    base_seed: int = 42,
    switches: PanelSwitches = SPEC,
) -> Perturbed:
    """Perturb one canvas with one condition at the image's seeded location; the input stays unchanged.

    The generator that drew the location goes on to draw the condition's random values, so the whole result
    is a function of (canvas, condition, basename, margin, base_seed, switches).
    """
    changed = apply_patch(canvas, condition, file_basename, margin=margin, base_seed=base_seed, switches=switches)
    image = canvas.copy()
    image[changed.box.slices()] = changed.patch
    return Perturbed(image=image, box=changed.box, condition=changed.condition)
