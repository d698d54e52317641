"""Box-to-token geometry: where a canvas box lands in an encoder's input and which token cells it touches.

The mapping follows the image processor exactly: the square canvas is resized to ``resize`` pixels a side (so a
canvas coordinate u becomes u * resize / canvas, pixel edges mapping linearly), then centre-cropped to ``crop``
with the top-left offset ``(resize - crop) // 2``. That floor is what Hugging Face's processors do (both the
torchvision backend, ``int((h - c) / 2.0)``, and the PIL backend, ``(h - c) // 2``); torchvision's own
``CenterCrop`` rounds half to even instead, which differs for some odd differences (35 -> 18, not 17). No
study encoder has an odd difference, but the rule is pinned so that one added later cannot drift.

Intersections are decided in exact integer arithmetic (coordinates scaled by the canvas size), so a box edge that
lands exactly on a cell border never flips with floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from lesionsignal.core.box import Box

Interpolation = Literal["bicubic", "bilinear"]

# PIL resampling codes as written in Hugging Face preprocessor_config.json files.
_RESAMPLE = {2: "bilinear", 3: "bicubic"}
# Processors that rescale to [0, 1] before resizing (so the resize is never rounded to 8 bits).
_FLOAT_RESIZE_PROCESSORS = frozenset({"DINOv3ViTImageProcessor", "DINOv3ViTImageProcessorFast"})


class BoxOutsideCrop(ValueError):
    """A box with no area left inside the model input after the processor's resize and crop."""

    def __init__(self, box: Box, geometry: Geometry, canvas: int) -> None:
        self.box = box.as_tuple()
        lo, hi = geometry.kept_canvas_range(canvas)
        super().__init__(
            f"box {self.box} on the {canvas} px canvas lies wholly outside the model input: resize {geometry.resize}, "
            f"centre crop {geometry.crop} (offset {geometry.crop_offset} px) keeps canvas pixels [{lo:g}, {hi:g}) "
            "on each axis"
        )


class GeometryMismatch(ValueError):
    """A processor configuration that does not give the pixels a registry geometry promises."""


@dataclass(frozen=True)
class Geometry:
    """One encoder's preprocessing geometry, on a square canvas.

    resize: side after the resize step (shortest edge; the canvas is square). crop: centre-crop side, None for no
    crop. patch: token cell side in model-input pixels (the stride of the token grid). resize_in_uint8: whether the
    processor resizes the 8-bit image (rounding the result to integers) or a float image already scaled to [0, 1].
    """

    resize: int
    crop: int | None
    patch: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation
    resize_in_uint8: bool = True

    def __post_init__(self) -> None:
        if self.resize < 1:
            raise ValueError(f"Geometry.resize must be positive, got {self.resize}")
        if self.crop is not None and not 1 <= self.crop <= self.resize:
            raise ValueError(f"Geometry.crop must be in [1, resize={self.resize}], got {self.crop}")
        if self.patch < 1 or self.input_size % self.patch:
            raise ValueError(
                f"Geometry.patch {self.patch} must divide the input size {self.input_size} (a partial last cell "
                "would make the token grid ambiguous)"
            )
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"Geometry.interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"Geometry.{name} needs 3 channel values, got {value!r}")
        if min(self.std) <= 0:
            raise ValueError(f"Geometry.std must be positive, got {self.std}")

    @property
    def input_size(self) -> int:
        return self.resize if self.crop is None else self.crop

    @property
    def grid(self) -> int:
        return self.input_size // self.patch

    @property
    def crop_offset(self) -> int:
        return 0 if self.crop is None else (self.resize - self.crop) // 2

    def kept_canvas_range(self, canvas: int = 1024) -> tuple[float, float]:
        """The canvas interval [lo, hi) (same on both axes) that survives the crop."""
        lo = self.crop_offset * canvas / self.resize
        return lo, lo + self.input_size * canvas / self.resize

    def map_box(self, box: Box | Sequence[int], canvas: int = 1024) -> tuple[float, float, float, float]:
        """The box in model-input pixels (x1, y1, x2, y2), clipped to the input; BoxOutsideCrop if nothing is left."""
        return tuple(v / canvas for v in self._scaled_box(box, canvas))  # type: ignore[return-value]

    def token_mask(self, box: Box | Sequence[int], canvas: int = 1024) -> np.ndarray:
        """(grid, grid) bool, [row, col]: cells whose pixel square meets the mapped box with positive area."""
        x1, y1, x2, y2 = self._scaled_box(box, canvas)
        lo = np.arange(self.grid, dtype=np.int64) * self.patch * canvas
        hi = lo + self.patch * canvas
        rows = (lo < y2) & (hi > y1)  # strict: a cell that only touches the box edge does not count
        cols = (lo < x2) & (hi > x1)
        return rows[:, None] & cols[None, :]

    def token_indices(self, box: Box | Sequence[int], canvas: int = 1024) -> np.ndarray:
        """Row-major flat indices (int64) of the cells in token_mask, in increasing order."""
        return np.flatnonzero(self.token_mask(box, canvas)).astype(np.int64)

    def _scaled_box(self, box: Box | Sequence[int], canvas: int) -> tuple[int, int, int, int]:
        """The clipped box in model-input pixels multiplied by ``canvas`` (exact integers)."""
        checked = Box.of(box).checked(canvas)
        x1, y1, x2, y2 = checked.as_tuple()
        shift = self.crop_offset * canvas
        limit = self.input_size * canvas
        sx1, sy1, sx2, sy2 = (min(max(v * self.resize - shift, 0), limit) for v in (x1, y1, x2, y2))
        if sx2 <= sx1 or sy2 <= sy1:
            raise BoxOutsideCrop(checked, self, canvas)
        return sx1, sy1, sx2, sy2

    def differences(self, other: Geometry) -> list[str]:
        """Fields in which two geometries give different model inputs, as "field: self vs other"."""
        return [f"{name}: {mine!r} vs {theirs!r}" for name, mine, theirs in self.field_differences(other)]

    def field_differences(self, other: Geometry) -> list[tuple[str, Any, Any]]:
        """(field, this value, other value) for each field that changes the model input (a crop equal to the resize
        is no crop; mean and std compare to float precision)."""
        out = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "crop":
                a, b = self.input_size, other.input_size
            if f.name in ("mean", "std"):
                same = all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b, strict=True))
            else:
                same = a == b
            if not same:
                out.append((f.name, getattr(self, f.name), getattr(other, f.name)))
        return out

    @classmethod
    def from_processor_config(cls, config: Mapping[str, Any], patch: int, source: str = "") -> Geometry:
        """Read a Hugging Face preprocessor_config.json (as a dict); ``source`` names it in errors."""
        where = f"{source or 'preprocessor config'}"
        if not config.get("do_resize", True):
            raise GeometryMismatch(f"{where}: do_resize is false; the canvas must be resized to the model input")
        resize = _square_side(config.get("size"), f"{where}: size")
        crop = None
        if config.get("do_center_crop", False):
            crop = _square_side(config.get("crop_size"), f"{where}: crop_size")
        resample = config.get("resample", 2)
        if resample not in _RESAMPLE:
            raise GeometryMismatch(f"{where}: resample {resample!r} is not bilinear (2) or bicubic (3)")
        if not (config.get("do_rescale", True) and config.get("do_normalize", True)):
            raise GeometryMismatch(f"{where}: expected do_rescale and do_normalize to be true")
        if not math.isclose(config.get("rescale_factor", 1 / 255), 1 / 255, rel_tol=1e-6):
            raise GeometryMismatch(f"{where}: rescale_factor {config['rescale_factor']} is not 1/255")
        return cls(
            resize=resize,
            crop=crop,
            patch=patch,
            mean=_triple(config.get("image_mean"), f"{where}: image_mean"),
            std=_triple(config.get("image_std"), f"{where}: image_std"),
            interpolation=_RESAMPLE[resample],  # type: ignore[arg-type]
            resize_in_uint8=config.get("image_processor_type") not in _FLOAT_RESIZE_PROCESSORS,
        )


def _square_side(size: Any, where: str) -> int:
    if isinstance(size, Mapping):
        if "shortest_edge" in size and "longest_edge" not in size:
            return int(size["shortest_edge"])
        if "height" in size and "width" in size and size["height"] == size["width"]:
            return int(size["height"])
    raise GeometryMismatch(f"{where} {size!r} is not a square size or a shortest edge")


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        return (float(value),) * 3  # type: ignore[return-value]
    if isinstance(value, Sequence) and len(value) == 3:
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    raise GeometryMismatch(f"{where} {value!r} is not one or three numbers")
