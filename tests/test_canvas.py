"""Canvas loading (protocol section 1): decode, gray, window, MONOCHROME1, symmetric pad, Lanczos-4, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from lesionsignal.core.canvas import (
    CanvasError,
    CanvasWarning,
    Photometric,
    SourceFormat,
    Window,
    load_canvas,
    pad_to_square,
    read_image,
    stretch_to_uint8,
    to_canvas,
)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_png(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    frames: int = 1,
    samples: int = 1,
    bits_stored: int = 16,
) -> Path:
    """A minimal valid CR DICOM (explicit VR little endian) holding ``pixels`` (uint16 or int16)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.999.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp16(rows: int = 40, cols: int = 60, low: int = 1000, high: int = 5000) -> np.ndarray:
    values = np.linspace(low, high, rows * cols).round().astype(np.uint16).reshape(rows, cols)
    values[0, 0], values[-1, -1] = low, high
    return values


def random8(rows: int = 40, cols: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(10, 201, (rows, cols), dtype=np.uint8)


def assert_names(err: pytest.ExceptionInfo[CanvasError], path: Path, *words: str) -> None:
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message.lower(), message


# ---- pure array functions


@pytest.mark.parametrize(
    ("shape", "top", "left"),
    [((4, 6), 1, 0), ((3, 6), 1, 0), ((6, 3), 0, 1), ((6, 4), 0, 1), ((5, 5), 0, 0), ((1, 4), 1, 0)],
)
def test_pad_to_square_is_symmetric_with_extra_pixel_bottom_right(shape, top, left):
    image = np.arange(1, shape[0] * shape[1] + 1, dtype=np.uint16).reshape(shape)
    out = pad_to_square(image)
    side = max(shape)
    assert out.shape == (side, side) and out.dtype == np.uint16
    np.testing.assert_array_equal(out[top : top + shape[0], left : left + shape[1]], image)
    assert np.count_nonzero(out) == image.size  # everything else is zero padding
    bottom = side - shape[0] - top
    right = side - shape[1] - left
    assert bottom - top in (0, 1) and right - left in (0, 1)


def test_stretch_maps_min_and_max_to_0_and_255_linearly():
    image = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CanvasWarning)  # only 4 levels: the narrow-range warning is expected
        out = stretch_to_uint8(image, None)
    np.testing.assert_array_equal(out, [[0, 64], [128, 255]])  # 63.75 -> 64, 127.5 -> 128
    assert out.dtype == np.uint8


def test_stretch_with_window_clips_outside_values():
    image = np.array([[-100.0, 0.0, 50.0, 100.0, 400.0]])
    np.testing.assert_array_equal(stretch_to_uint8(image, Window(0.0, 100.0)), [[0, 0, 128, 255, 255]])


def test_stretch_is_linear_not_equalised():
    # A skewed histogram: equalisation would spread the crowded low values, a linear map keeps their spacing.
    image = np.concatenate([np.arange(0, 100), np.full(900, 10_000)]).astype(np.uint16).reshape(10, 100)
    out = stretch_to_uint8(image, None).astype(int)
    expected = np.rint(image.astype(float) * 255 / 10_000)
    np.testing.assert_array_equal(out, expected)


def test_window_from_center_width_follows_dicom_linear():
    assert Window.from_center_width(2048, 4096) == Window(0.0, 4095.0)
    assert Window.from_center_width(40, 400, exact=True) == Window(-160.0, 240.0)
    with pytest.raises(ValueError, match="below high"):
        Window(5.0, 5.0)


def test_uint8_canvas_size_is_a_copy_noop():
    image = random8(1024, 1024)
    out = to_canvas(image)
    np.testing.assert_array_equal(out, image)
    assert out is not image and not np.shares_memory(out, image)


def test_uint8_is_not_restretched_but_padded():
    image = random8(40, 60)  # values 10..200: a stretch would move them to 0..255
    out = to_canvas(image, size=60)
    np.testing.assert_array_equal(out[10:50], image)
    assert not out[:10].any() and not out[50:].any()


def test_resize_is_lanczos4_with_symmetric_zero_border():
    image = np.full((40, 60), 200, dtype=np.uint8)
    out = to_canvas(image, size=128)
    assert out.shape == (128, 128) and out.dtype == np.uint8
    # Source rows 0..9 and 50..59 are padding; output rows 0..10 only see padding through the 4-tap kernel.
    assert not out[:11].any() and not out[-11:].any()
    assert np.abs(out.astype(int) - np.flipud(out).astype(int)).max() <= 1
    reference = cv2.resize(pad_to_square(image).astype(np.float32), (128, 128), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(out, np.rint(np.clip(reference, 0, 255)).astype(np.uint8))


def test_lanczos_overshoot_is_clipped_not_wrapped():
    image = np.full((16, 16), 255, dtype=np.uint8)
    image[6:10, 6:10] = 0
    raw = cv2.resize(image.astype(np.float32), (64, 64), interpolation=cv2.INTER_LANCZOS4)
    overshoot = raw > 255.5
    assert overshoot.any()  # the ringing this test is about really happens
    out = to_canvas(image, size=64)
    assert (out[overshoot] == 255).all()
    assert (out[raw < -0.5] == 0).all()


def test_to_canvas_stretches_16bit_and_float():
    ramp = ramp16(64, 64)
    out16 = to_canvas(ramp, size=64)
    assert out16.min() == 0 and out16.max() == 255
    out_float = to_canvas(ramp.astype(np.float32) / 7.0, size=64)
    assert np.abs(out_float.astype(int) - out16.astype(int)).max() <= 1


def test_array_errors():
    with pytest.raises(CanvasError, match="2-D"):
        to_canvas(np.zeros((8, 8, 3), dtype=np.uint8), size=8)
    with pytest.raises(CanvasError, match="constant image"):
        to_canvas(np.full((8, 8), 7, dtype=np.uint16), size=8)
    with pytest.raises(CanvasError, match="NaN"):
        to_canvas(np.array([[0.0, np.nan], [1.0, 2.0]]), size=2)
    with pytest.raises(CanvasError, match="pixel type"):
        to_canvas(np.zeros((4, 4), dtype=bool), size=4)


def test_constant_image_with_window_is_fine():
    out = to_canvas(np.full((8, 8), 50.0, dtype=np.float32), size=8, window=Window(0, 100))
    assert (out == 128).all()


def test_warns_on_narrow_16bit_range():
    image = (np.arange(64, dtype=np.uint16).reshape(8, 8) + 300).astype(np.uint16)
    with pytest.warns(CanvasWarning, match="8 bits"):
        to_canvas(image, size=8)


def test_warns_when_window_clips_most_pixels():
    image = ramp16(32, 32, 0, 4000)
    with pytest.warns(CanvasWarning, match="clips"):
        to_canvas(image, size=32, window=Window(0, 1000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_canvas(image, size=32, window=Window(0, 3000))  # 25 % clipped: no warning


# ---- files


def test_png_8bit(tmp_path):
    image = random8(40, 60)
    path = write_png(tmp_path / "a.png", image)
    pixels, info = read_image(path)
    np.testing.assert_array_equal(pixels, image)
    assert info.source_format is SourceFormat.PNG and info.bit_depth == 8 and info.shape == (40, 60)
    assert info.photometric is Photometric.MONOCHROME2 and info.window is None
    np.testing.assert_array_equal(load_canvas(path, size=60)[10:50], image)


def test_png_16bit_is_stretched(tmp_path):
    image = ramp16(40, 60, 1000, 5000)
    image[5, 5] = 2000
    path = write_png(tmp_path / "a.png", image)
    pixels, info = read_image(path)
    assert pixels.dtype == np.uint16 and info.bit_depth == 16
    canvas = load_canvas(path, size=60)
    assert canvas[10, 0] == 0 and canvas[49, 59] == 255
    assert canvas[10 + 5, 5] == 64  # (2000 - 1000) / 4000 * 255 = 63.75


def test_png_at_full_canvas_size(tmp_path):
    image = random8(1024, 1024, seed=3)
    np.testing.assert_array_equal(load_canvas(write_png(tmp_path / "full.png", image)), image)


def test_png_16bit_non_square_to_1024(tmp_path):
    path = write_png(tmp_path / "wide.png", np.tile(np.linspace(0, 60_000, 500), (300, 1)).astype(np.uint16))
    canvas = load_canvas(path)
    assert canvas.shape == (1024, 1024) and canvas.dtype == np.uint8
    assert not canvas[:150].any() and not canvas[-150:].any()  # 100 px padding rows ~ 205 canvas rows
    assert canvas[512, 0] <= 2 and canvas[512, -1] >= 253 and 120 <= canvas[512, 512] <= 136


def test_jpeg(tmp_path):
    image = np.tile(np.linspace(60, 160, 60), (40, 1)).astype(np.uint8)
    path = tmp_path / "film.jpeg"
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    pixels, info = read_image(path)
    assert info.source_format is SourceFormat.JPEG and pixels.shape == (40, 60)
    canvas = load_canvas(path, size=60)
    inner = canvas[10:50].astype(int)
    assert np.abs(inner - image).max() <= 3  # lossy, but not stretched to 0..255
    assert inner.min() >= 50 and inner.max() <= 170


def test_rgb_png_is_converted_to_gray(tmp_path):
    gray = random8(40, 60)
    path = write_png(tmp_path / "rgb.png", np.dstack([gray, gray, gray]))
    pixels, info = read_image(path)
    assert info.photometric is Photometric.RGB and pixels.ndim == 2
    np.testing.assert_array_equal(pixels, gray)
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[:, :, 2] = 255  # OpenCV stores BGR: channel 2 is red
    pixels, _ = read_image(write_png(tmp_path / "red.png", red))
    assert (pixels == 76).all()  # 0.299 * 255: red, not blue (29), so the channel order is right


def test_rgba_png_opaque_ok_transparent_rejected(tmp_path):
    gray = random8(8, 8)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    pixels, _ = read_image(write_png(tmp_path / "opaque.png", rgba))
    np.testing.assert_array_equal(pixels, gray)
    rgba[0, 0, 3] = 0
    path = write_png(tmp_path / "clear.png", rgba)
    with pytest.raises(CanvasError) as err:
        read_image(path)
    assert_names(err, path, "transparent")


def test_dicom_monochrome2_uses_its_window(tmp_path):
    pixels = ramp16(64, 64, 0, 4095)
    path = write_dicom(tmp_path / "m2.dcm", pixels, window=(512, 1024), bits_stored=12)
    raw, info = read_image(path)
    np.testing.assert_array_equal(raw, pixels)
    assert info.source_format is SourceFormat.DICOM and info.bit_depth == 12
    assert info.photometric is Photometric.MONOCHROME2
    assert info.window == Window(0.0, 1023.0)
    with pytest.warns(CanvasWarning, match="clips"):
        canvas = load_canvas(path, size=64)
        expected = stretch_to_uint8(pixels, Window(0.0, 1023.0))
    np.testing.assert_array_equal(canvas, expected)
    explicit = load_canvas(path, size=64, window=Window(0, 4095))  # an explicit window wins
    np.testing.assert_array_equal(explicit, stretch_to_uint8(pixels, Window(0, 4095)))


def test_dicom_monochrome1_is_inverted(tmp_path):
    pixels = ramp16(64, 64, 100, 3000)
    normal = load_canvas(write_dicom(tmp_path / "m2.dcm", pixels), size=64)
    inverted = load_canvas(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"), size=64)
    np.testing.assert_array_equal(inverted, 255 - normal)
    assert normal[0, 0] == 0 and inverted[0, 0] == 255


def test_dicom_monochrome1_padding_stays_black(tmp_path):
    pixels = ramp16(40, 60, 100, 3000)
    canvas = load_canvas(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"), size=60)
    assert not canvas[:10].any() and not canvas[50:].any()
    assert canvas[10, 0] == 255


def test_dicom_rescale_is_applied_before_the_window(tmp_path):
    raw = np.array([[0, 512], [768, 1024]], dtype=np.int16)
    path = write_dicom(tmp_path / "ct.dcm", raw, rescale=(1, -1024))
    pixels, info = read_image(path)
    np.testing.assert_array_equal(pixels, [[-1024, -512], [-256, 0]])
    assert info.rescale_intercept == -1024.0
    canvas = load_canvas(path, size=2, window=Window(-1024, 0))
    np.testing.assert_array_equal(canvas, [[0, 128], [191, 255]])  # 127.5 -> 128, 191.25 -> 191


# ---- file errors


def test_missing_file(tmp_path):
    path = tmp_path / "absent.png"
    with pytest.raises(CanvasError) as err:
        load_canvas(path)
    assert_names(err, path, "not found")


@pytest.mark.parametrize("name", ["empty.png", "empty.jpg", "empty.dcm"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(CanvasError) as err:
        load_canvas(path)
    assert_names(err, path, "empty")


def test_png_cut_in_half(tmp_path):
    whole = write_png(tmp_path / "whole.png", random8(40, 60))
    path = tmp_path / "half.png"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CanvasError) as err:
        load_canvas(path, size=64)
    assert_names(err, path, "truncated")


def test_jpeg_cut_in_half(tmp_path):
    whole = tmp_path / "whole.jpg"
    cv2.imwrite(str(whole), random8(40, 60))
    path = tmp_path / "half.jpg"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CanvasError) as err:
        load_canvas(path, size=64)
    assert_names(err, path, "truncated")


def test_dicom_cut_in_half(tmp_path):
    whole = write_dicom(tmp_path / "whole.dcm", ramp16(64, 64))
    path = tmp_path / "half.dcm"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CanvasError) as err:
        load_canvas(path, size=64)
    assert_names(err, path, "truncated")


def test_not_a_dicom(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"hello, not a DICOM file" * 10)
    with pytest.raises(CanvasError) as err:
        load_canvas(path)
    assert_names(err, path, "dicom")


def test_jpeg_bytes_named_png(tmp_path):
    source = tmp_path / "x.jpg"
    cv2.imwrite(str(source), random8(8, 8))
    path = tmp_path / "x.png"
    path.write_bytes(source.read_bytes())
    with pytest.raises(CanvasError) as err:
        read_image(path)
    assert_names(err, path, "not a png")


@pytest.mark.parametrize("name", ["film.bmp", "film.tif", "film"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(CanvasError) as err:
        load_canvas(path)
    assert_names(err, path, "unsupported extension")


def test_multiframe_dicom(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", np.stack([ramp16(8, 8), ramp16(8, 8)]), frames=2)
    with pytest.raises(CanvasError) as err:
        load_canvas(path, size=8)
    assert_names(err, path, "multi-frame")


def test_colour_dicom_is_rejected(tmp_path):
    path = write_dicom(tmp_path / "rgb.dcm", np.zeros((8, 8, 3), np.uint16), photometric="RGB", samples=3)
    with pytest.raises(CanvasError) as err:
        load_canvas(path, size=8)
    assert_names(err, path, "photometric")


def test_constant_file_without_window(tmp_path):
    path = write_png(tmp_path / "flat.png", np.full((8, 8), 900, dtype=np.uint16))
    with pytest.raises(CanvasError) as err:
        load_canvas(path, size=8)
    assert_names(err, path, "constant", "window")


def test_warning_names_the_file(tmp_path):
    path = write_png(tmp_path / "narrow.png", (np.arange(64).reshape(8, 8) + 10).astype(np.uint16))
    with pytest.warns(CanvasWarning, match="narrow.png"):
        load_canvas(path, size=8)


def test_loading_is_deterministic(tmp_path):
    path = write_dicom(tmp_path / "m1.dcm", ramp16(40, 60), photometric="MONOCHROME1")
    assert load_canvas(path, size=100).tobytes() == load_canvas(path, size=100).tobytes()
