"""Any PNG / JPEG / DICOM chest film to the common 8-bit square canvas (protocol section 1).

Order: decode -> gray -> (DICOM) rescale -> window / stretch to 8 bits -> (MONOCHROME1) invert -> symmetric
zero pad to a square -> Lanczos-4 resize. Stretching is linear (VOI-LUT style), never equalised.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pydicom.errors

CANVAS_SIZE = 1024
_ARRAY = "<array>"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
_JPEG_SOS = b"\xff\xda"
_JPEG_EOI = b"\xff\xd9"
# Above this clipped fraction a window is more likely wrong than deliberate.
_MAX_CLIPPED_FRACTION = 0.5


class CanvasError(ValueError):
    """An image cannot become a canvas: the message names the file (or ``<array>``) and the reason."""

    def __init__(self, source: str | Path, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class CanvasWarning(UserWarning):
    """The image loads, but its intensities suggest a wrong window or a mislabelled bit depth."""


class SourceFormat(enum.Enum):
    PNG = "png"
    JPEG = "jpeg"
    DICOM = "dicom"


class Resample(enum.Enum):
    """Arithmetic of the Lanczos-4 resize to the canvas side."""

    FLOAT = "float"  # float32, then clip and round half to even: ringing cannot wrap round
    UINT8 = "uint8"  # OpenCV on the uint8 array (its saturating rounding): the authors' code


class Photometric(enum.Enum):
    """Photometric interpretation of the source; the pixels handed on are always single-channel gray."""

    MONOCHROME1 = "MONOCHROME1"  # high values are dark: inverted on loading
    MONOCHROME2 = "MONOCHROME2"
    RGB = "RGB"  # colour or gray-as-RGB source, converted to gray with OpenCV's BGR2GRAY weights


_EXTENSIONS = {
    ".png": SourceFormat.PNG,
    ".jpg": SourceFormat.JPEG,
    ".jpeg": SourceFormat.JPEG,
    ".dcm": SourceFormat.DICOM,
}


@dataclass(frozen=True)
class Window:
    """Linear intensity window: ``low`` maps to 0 and ``high`` to 255, values outside are clipped."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"Window: low ({self.low}) and high ({self.high}) must be finite")
        if self.low >= self.high:
            raise ValueError(f"Window: low ({self.low}) must be below high ({self.high})")

    @classmethod
    def from_center_width(cls, center: float, width: float, *, exact: bool = False) -> Window:
        """DICOM VOI window; ``exact`` is VOILUTFunction LINEAR_EXACT, otherwise the classic LINEAR form."""
        if exact:
            return cls(center - width / 2, center + width / 2)
        # DICOM PS3.3 C.11.2.1.2.1: the LINEAR ramp runs from c - 0.5 - (w - 1) / 2 to c - 0.5 + (w - 1) / 2.
        return cls(center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2)


@dataclass(frozen=True)
class ImageInfo:
    """What ``read_image`` learnt about a file besides its pixels."""

    path: Path
    source_format: SourceFormat
    bit_depth: int  # bits per stored sample: 8 / 16 for PNG and JPEG, BitsStored for DICOM
    photometric: Photometric
    shape: tuple[int, int]  # (rows, columns) of the gray pixels
    window: Window | None = None  # DICOM WindowCenter / WindowWidth, in rescaled units
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0


def pad_to_square(image: np.ndarray, *, source: str | Path = _ARRAY) -> np.ndarray:
    """Zero-pad a 2-D image symmetrically to a square; an odd extra pixel goes to the bottom / right."""
    _require_2d(image, source)
    rows, cols = image.shape
    side = max(rows, cols)
    top = (side - rows) // 2
    left = (side - cols) // 2
    out = np.zeros((side, side), dtype=image.dtype)
    out[top : top + rows, left : left + cols] = image
    return out


def stretch_to_uint8(image: np.ndarray, window: Window | None, *, source: str | Path = _ARRAY) -> np.ndarray:
    """Map ``window`` (default: the image's own min..max) linearly onto 0..255, clip and round to uint8."""
    _require_2d(image, source)
    values = _as_float64(image, source)
    if window is None:
        low, high = float(values.min()), float(values.max())
        if low == high:
            raise CanvasError(source, f"constant image (every pixel {low:g}): cannot stretch it without a window")
    else:
        low, high = window.low, window.high
        clipped = np.count_nonzero((values < low) | (values > high)) / values.size
        if clipped > _MAX_CLIPPED_FRACTION:
            warnings.warn(
                f"{source}: window {low:g}..{high:g} clips {clipped:.0%} of the pixels; "
                "it is probably the wrong window for this image",
                CanvasWarning,
                stacklevel=2,
            )
    _warn_if_narrow_16bit(image, source)
    # Multiply before dividing: exact for integer pixels, so a value half-way up the window is exactly x.5.
    scaled = (values - low) * 255.0 / (high - low)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def to_gray8(image: np.ndarray, window: Window | None = None, *, source: str | Path = _ARRAY) -> np.ndarray:
    """8-bit gray at native size: 8-bit sources pass through untouched, everything else is stretched."""
    _require_2d(image, source)
    if image.dtype == np.uint8 and window is None:
        return image.copy()
    return stretch_to_uint8(image, window, source=source)


def to_canvas(
    image: np.ndarray,
    size: int = CANVAS_SIZE,
    window: Window | None = None,
    *,
    source: str | Path = _ARRAY,
    resample: Resample = Resample.FLOAT,
) -> np.ndarray:
    """Any 2-D gray image to a ``size`` x ``size`` uint8 canvas (stretch, pad, Lanczos-4 in ``resample``)."""
    if size < 1:
        raise CanvasError(source, f"canvas size must be positive, got {size}")
    square = pad_to_square(to_gray8(image, window, source=source), source=source)
    if square.shape[0] == size:
        return square
    if resample is Resample.UINT8:
        return cv2.resize(square, (size, size), interpolation=cv2.INTER_LANCZOS4)
    # Resize in float32 so Lanczos ringing can be clipped instead of wrapping round in uint8.
    resized = cv2.resize(square.astype(np.float32), (size, size), interpolation=cv2.INTER_LANCZOS4)
    return np.rint(np.clip(resized, 0.0, 255.0)).astype(np.uint8)


def load_canvas(
    path: str | Path, size: int = CANVAS_SIZE, window: Window | None = None, *, resample: Resample = Resample.FLOAT
) -> np.ndarray:
    """Read a PNG / JPEG / DICOM file and return its uint8 canvas; ``window`` overrides the DICOM window."""
    pixels, info = read_image(path)
    chosen = window if window is not None else info.window
    gray = to_gray8(pixels, chosen, source=info.path)
    if info.photometric is Photometric.MONOCHROME1:
        gray = 255 - gray
    return to_canvas(gray, size, source=info.path, resample=resample)


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Decode to 2-D gray pixels in native depth (DICOM rescale applied; no window, no inversion)."""
    path = Path(path)
    kind = _EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise CanvasError(path, f"unsupported extension {path.suffix!r} (expected {sorted(_EXTENSIONS)})")
    if not path.is_file():
        raise CanvasError(path, "file not found")
    if path.stat().st_size == 0:
        raise CanvasError(path, "file is empty (0 bytes)")
    if kind is SourceFormat.DICOM:
        return _read_dicom(path)
    return _read_raster(path, kind)


def _read_raster(path: Path, kind: SourceFormat) -> tuple[np.ndarray, ImageInfo]:
    data = np.fromfile(path, dtype=np.uint8)
    head = data[:8].tobytes()
    if kind is SourceFormat.PNG and not head.startswith(_PNG_SIGNATURE):
        raise CanvasError(path, "not a PNG file (PNG signature missing)")
    if kind is SourceFormat.JPEG:
        if not head.startswith(_JPEG_SOI):
            raise CanvasError(path, "not a JPEG file (start-of-image marker missing)")
        _check_jpeg_complete(data.tobytes(), path)
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise CanvasError(path, f"cannot decode {kind.value.upper()} data (truncated or corrupt file)")
    gray, photometric = _to_gray(decoded, path)
    info = ImageInfo(
        path=path,
        source_format=kind,
        bit_depth=gray.dtype.itemsize * 8,
        photometric=photometric,
        shape=(gray.shape[0], gray.shape[1]),
    )
    return gray, info


def _check_jpeg_complete(data: bytes, path: Path) -> None:
    # Some libjpeg builds return a grey-filled image for a cut file; the end-of-image marker after the last
    # start-of-scan is proof the entropy-coded data is all there (0xFF is byte-stuffed inside it).
    last_scan = data.rfind(_JPEG_SOS)
    if last_scan < 0 or data.find(_JPEG_EOI, last_scan) < 0:
        raise CanvasError(path, "JPEG data is truncated (no end-of-image marker after the last scan)")


def _to_gray(decoded: np.ndarray, path: Path) -> tuple[np.ndarray, Photometric]:
    if decoded.ndim == 2:
        return decoded, Photometric.MONOCHROME2
    channels = decoded.shape[2] if decoded.ndim == 3 else 0
    if channels == 3:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2GRAY), Photometric.RGB
    if channels == 4:
        alpha = decoded[:, :, 3]
        if np.any(alpha != np.iinfo(decoded.dtype).max):
            raise CanvasError(path, "image has transparent pixels (alpha channel): not a plain gray film")
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2GRAY), Photometric.RGB
    raise CanvasError(path, f"not a 2-D gray image after conversion (decoded shape {decoded.shape})")


def _read_dicom(path: Path) -> tuple[np.ndarray, ImageInfo]:
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError) as err:
        raise CanvasError(path, f"not a readable DICOM file ({err})") from err
    if "PixelData" not in ds:
        raise CanvasError(path, "DICOM file has no PixelData (truncated, or not an image)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise CanvasError(path, f"multi-frame DICOM ({frames} frames); one film per file is expected")
    photometric_name = str(ds.get("PhotometricInterpretation", ""))
    if photometric_name not in (Photometric.MONOCHROME1.value, Photometric.MONOCHROME2.value):
        raise CanvasError(path, f"unsupported DICOM PhotometricInterpretation {photometric_name!r}")
    _check_dicom_pixel_length(ds, path)
    try:
        raw = ds.pixel_array
    except (ValueError, AttributeError, RuntimeError, NotImplementedError) as err:
        raise CanvasError(path, f"cannot decode DICOM pixel data ({err})") from err
    if raw.ndim != 2:
        raise CanvasError(path, f"DICOM pixel data is not 2-D (shape {raw.shape})")
    slope = _dicom_number(ds, "RescaleSlope", 1.0, path)
    intercept = _dicom_number(ds, "RescaleIntercept", 0.0, path)
    if slope == 0.0:
        raise CanvasError(path, "RescaleSlope is 0: every pixel would be the same")
    # Identity rescale keeps the native integer type, so 8-bit DICOMs stay un-stretched like 8-bit PNGs.
    pixels = raw if (slope, intercept) == (1.0, 0.0) else raw.astype(np.float64) * slope + intercept
    info = ImageInfo(
        path=path,
        source_format=SourceFormat.DICOM,
        bit_depth=int(ds.get("BitsStored", raw.dtype.itemsize * 8)),
        photometric=Photometric(photometric_name),
        shape=(raw.shape[0], raw.shape[1]),
        window=_dicom_window(ds, path),
        rescale_slope=slope,
        rescale_intercept=intercept,
    )
    return pixels, info


def _check_dicom_pixel_length(ds: pydicom.Dataset, path: Path) -> None:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_transfer_syntax:
        raise CanvasError(path, f"DICOM file meta has no usable TransferSyntaxUID ({syntax})")
    if syntax.is_compressed:
        return  # encapsulated frames: the decoder reports damage itself
    sizes = [int(ds.get(key) or 0) for key in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated")]
    if 0 in sizes:
        raise CanvasError(path, "DICOM Rows, Columns, SamplesPerPixel, BitsAllocated must be present and > 0")
    rows, columns, samples, bits = sizes
    expected = math.ceil(rows * columns * samples * bits / 8)
    actual = len(ds.PixelData)
    if actual < expected:
        raise CanvasError(path, f"DICOM pixel data is truncated ({actual} of {expected} bytes)")


def _dicom_window(ds: pydicom.Dataset, path: Path) -> Window | None:
    # Several windows are alternatives in DICOM; the first is the default presentation.
    center = _dicom_number(ds, "WindowCenter", math.nan, path)
    width = _dicom_number(ds, "WindowWidth", math.nan, path)
    if math.isnan(center) or math.isnan(width):
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT"):
        warnings.warn(
            f"{path}: VOILUTFunction {function} is not linear, so its window is ignored (pass a window)",
            CanvasWarning,
            stacklevel=4,
        )
        return None
    if width < 1:
        raise CanvasError(path, f"DICOM WindowWidth {width:g} is below 1")
    try:
        return Window.from_center_width(center, width, exact=function == "LINEAR_EXACT")
    except ValueError as err:
        raise CanvasError(path, f"unusable DICOM window: {err}") from err


def _first(value: object) -> float:
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _dicom_number(ds: pydicom.Dataset, keyword: str, default: float, path: Path) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return _first(value)
    except (TypeError, ValueError) as err:
        raise CanvasError(path, f"DICOM {keyword} {value!r} is not a number") from err


def _require_2d(image: np.ndarray, source: str | Path) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        shape = getattr(image, "shape", type(image).__name__)
        raise CanvasError(source, f"expected a 2-D gray image, got shape {shape}")
    if image.size == 0:
        raise CanvasError(source, "image has no pixels")


def _as_float64(image: np.ndarray, source: str | Path) -> np.ndarray:
    if image.dtype == np.bool_ or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise CanvasError(source, f"unsupported pixel type {image.dtype}")
    values = image.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise CanvasError(source, "image contains NaN or infinite pixels")
    return values


def _warn_if_narrow_16bit(image: np.ndarray, source: str | Path) -> None:
    if not (np.issubdtype(image.dtype, np.integer) and image.dtype.itemsize == 2):
        return
    levels = int(image.max()) - int(image.min()) + 1
    if levels < 256:
        warnings.warn(
            f"{source}: 16-bit image spans only {levels} levels (< 8 bits of its range); it may be "
            "8-bit data in a 16-bit container, or need another window",
            CanvasWarning,
            stacklevel=3,
        )
