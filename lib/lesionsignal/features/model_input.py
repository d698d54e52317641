"""Canvases to model input, split so that each step runs once: resize, then normalise, with perturbed views
re-resized only where they differ from their clean view.

The processor's resize (antialiased bilinear or bicubic, separable) computes every output pixel from a window of
input pixels whose position depends only on the output index and the scale. When the scale is the ratio p / q in
lowest terms, output pixels q * k map to input pixels p * k exactly, so resizing an aligned block of the canvas
gives bit for bit the output pixels of the whole-canvas resize away from the block's edges. A panel condition
changes a patch of at most 64 canvas pixels; its perturbed view is the clean view's resize with the block around
the changed pixels resized again: a tenth of the time for the demo encoder's geometry, and the same bytes
(``tests/test_model_input.py`` checks this against the whole-canvas resize for every geometry of the registry).
That holds for 8-bit resizes only: torch's float resize sums in an order that depends on the image width, so the
block's pixels differ from the whole canvas's in the last bits, and a float-resize geometry (DINOv3's) is resized
whole.

Normalisation runs on one gray channel when the three channel means and scales agree, and hands the model a
three-channel view of it (no copy): the model sees the same numbers as from three normalised copies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lesionsignal.core.torch_compat import ensure_torchvision
from lesionsignal.features.geometry import Geometry

# How far the antialiased kernel reaches either side (interp_size / 2), in output pixels; a re-resized block keeps
# one output pixel more than that between its edges and the pixels copied out of it, for rounding.
_HALF_WIDTH = {"bilinear": 1, "bicubic": 2}

Bounds = tuple[int, int, int, int]  # x1, y1, x2, y2 of changed canvas pixels, half-open


def _resize_fn(geometry: Geometry) -> tuple[object, object]:
    ensure_torchvision()
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    mode = InterpolationMode.BICUBIC if geometry.interpolation == "bicubic" else InterpolationMode.BILINEAR
    return tvf.resize, mode


def resize(images: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """(B, H, W) uint8 canvases -> (B, S, S) resized to ``geometry.resize``: uint8 where the processor rounds to 8
    bits, else float32 in [0, 1]."""
    fn, mode = _resize_fn(geometry)
    x = images.unsqueeze(1)
    if not geometry.resize_in_uint8:
        x = x.float() / 255
    with torch.inference_mode():
        out = fn(x, [geometry.resize, geometry.resize], interpolation=mode, antialias=True)
    return out.squeeze(1)


def normalise(resized: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """(B, S, S) resized images -> (B, 3, C, C) model input: centre crop, scale to [0, 1], the processor's mean and
    std. A gray image with one mean and std for all channels is normalised once and viewed as three channels."""
    top = geometry.crop_offset
    size = geometry.input_size
    cropped = resized[:, top : top + size, top : top + size].unsqueeze(1)
    same = len(set(geometry.mean)) == 1 and len(set(geometry.std)) == 1
    channels = 1 if same else 3
    if resized.device.type == "cpu":
        # numpy works single-threaded: preparing the next batch then does not fight the model's OpenMP threads for
        # the cores. The float32 operations are the same as torch's, so the numbers are too.
        out = torch.from_numpy(_normalise_host(cropped.numpy(), geometry, channels))
    else:
        with torch.inference_mode():
            out = cropped.float()
            if geometry.resize_in_uint8:
                out.div_(255)
            out = out.expand(-1, channels, -1, -1).clone() if channels == 3 else out
            mean = torch.tensor(geometry.mean[:channels], device=resized.device).view(1, channels, 1, 1)
            std = torch.tensor(geometry.std[:channels], device=resized.device).view(1, channels, 1, 1)
            out.sub_(mean).div_(std)
    return out.expand(-1, 3, -1, -1) if same else out


def _normalise_host(cropped: np.ndarray, geometry: Geometry, channels: int) -> np.ndarray:
    out = cropped.astype(np.float32)
    if geometry.resize_in_uint8:
        out /= np.float32(255)
    if channels == 3:
        out = np.repeat(out, 3, axis=1)
    out -= np.asarray(geometry.mean[:channels], dtype=np.float32).reshape(1, channels, 1, 1)
    out /= np.asarray(geometry.std[:channels], dtype=np.float32).reshape(1, channels, 1, 1)
    return out


@dataclass(frozen=True, eq=False)
class Change:
    """One image's perturbation: the pixels ``patch`` replace the clean canvas at ``box`` (x1, y1, x2, y2)."""

    box: tuple[int, int, int, int]
    patch: np.ndarray

    def bounds(self, clean: np.ndarray) -> Bounds | None:
        """The bounding box of the canvas pixels that differ from ``clean`` (None: nothing changed)."""
        x1, y1, x2, y2 = self.box
        diff = self.patch != clean[y1:y2, x1:x2]
        rows = np.flatnonzero(diff.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(diff.any(axis=0))
        return (x1 + int(cols[0]), y1 + int(rows[0]), x1 + int(cols[-1]) + 1, y1 + int(rows[-1]) + 1)

    def paste(self, canvas: np.ndarray, origin: tuple[int, int] = (0, 0)) -> None:
        """Write the patch into ``canvas``, a block of the canvas whose top-left corner is ``origin`` (x, y)."""
        ox, oy = origin
        x1, y1, x2, y2 = self.box
        h, w = canvas.shape
        cx1, cy1, cx2, cy2 = max(x1 - ox, 0), max(y1 - oy, 0), min(x2 - ox, w), min(y2 - oy, h)
        if cx1 < cx2 and cy1 < cy2:
            canvas[cy1:cy2, cx1:cx2] = self.patch[cy1 + oy - y1 : cy2 + oy - y1, cx1 + ox - x1 : cx2 + ox - x1]


@dataclass(frozen=True)
class Block:
    """An aligned block of the canvas (``src``, half-open, both axes) whose resize is the output range ``dst``; the
    output pixels ``keep`` (inside ``dst``) are the ones copied into the clean view's resize."""

    src: tuple[int, int, int, int]  # x1, y1, x2, y2 on the canvas
    dst: tuple[int, int, int, int]  # x1, y1, x2, y2 on the resized image
    keep: tuple[int, int, int, int]


def _period(canvas: int, size: int) -> tuple[int, int]:
    """(p, q): canvas pixels p * k map exactly onto output pixels q * k."""
    g = math.gcd(canvas, size)
    return canvas // g, size // g


def _axis(lo: int, hi: int, canvas: int, size: int, half_width: int) -> tuple[int, int, int, int, int, int]:
    """One axis of a block: (src_lo, src_hi, dst_lo, dst_hi, keep_lo, keep_hi) for changed canvas pixels [lo, hi)."""
    p, q = _period(canvas, size)
    scale = canvas / size
    reach = half_width * scale  # the kernel's half-width in canvas pixels
    margin = half_width + 1
    keep_lo = max(0, math.floor((lo - reach) / scale - 0.5) - 1)
    keep_hi = min(size, math.ceil((hi + reach) / scale - 0.5) + 1)
    dst_lo = max(0, (keep_lo - margin) // q * q)
    dst_hi = min(size, -(-(keep_hi + margin) // q) * q)
    return dst_lo // q * p, dst_hi // q * p, dst_lo, dst_hi, keep_lo, keep_hi


def block_for(bounds: Bounds, canvas: int, geometry: Geometry) -> Block:
    """The aligned block to re-resize so that every output pixel the changed canvas pixels reach is recomputed."""
    half_width = _HALF_WIDTH[geometry.interpolation]
    x = _axis(bounds[0], bounds[2], canvas, geometry.resize, half_width)
    y = _axis(bounds[1], bounds[3], canvas, geometry.resize, half_width)
    return Block(src=(x[0], y[0], x[1], y[1]), dst=(x[2], y[2], x[3], y[3]), keep=(x[4], y[4], x[5], y[5]))


def _widened(block: Block, width: int, height: int, canvas: int, size: int) -> Block:
    """``block`` grown to ``width`` x ``height`` output pixels (inward at the image's edge), still aligned."""
    p, q = _period(canvas, size)

    def axis(lo: int, span: int) -> tuple[int, int, int, int]:
        lo = min(lo, size - span)  # spans and lo are multiples of q, and so is size
        return lo * p // q, (lo + span) * p // q, lo, lo + span

    sx1, sx2, dx1, dx2 = axis(block.dst[0], width)
    sy1, sy2, dy1, dy2 = axis(block.dst[1], height)
    return Block(src=(sx1, sy1, sx2, sy2), dst=(dx1, dy1, dx2, dy2), keep=block.keep)


def resize_changed(
    clean_resized: torch.Tensor, clean: np.ndarray, changes: Sequence[Change], geometry: Geometry
) -> torch.Tensor:
    """The resize of the clean canvases with ``changes`` applied, from the resize of the clean ones: per image, only
    the aligned block around the changed pixels is resized again. The blocks are widened to one size so that a
    single resize call does them all (a panel condition's patches all have one size)."""
    fn, mode = _resize_fn(geometry)
    out = clean_resized.clone()
    canvas, size = clean.shape[-1], geometry.resize
    found = [(i, change.bounds(clean[i])) for i, change in enumerate(changes)]
    blocks = {i: block_for(bounds, canvas, geometry) for i, bounds in found if bounds is not None}
    if not blocks:
        return out
    width = max(b.dst[2] - b.dst[0] for b in blocks.values())
    height = max(b.dst[3] - b.dst[1] for b in blocks.values())
    blocks = {i: _widened(b, width, height, canvas, size) for i, b in blocks.items()}
    first = next(iter(blocks.values()))
    pixels = np.empty((len(blocks), first.src[3] - first.src[1], first.src[2] - first.src[0]), np.uint8)
    for row, (i, block) in enumerate(blocks.items()):
        sx1, sy1, sx2, sy2 = block.src
        pixels[row] = clean[i, sy1:sy2, sx1:sx2]
        changes[i].paste(pixels[row], (sx1, sy1))
    with torch.inference_mode():
        small = fn(
            torch.from_numpy(pixels).to(out.device)[:, None], [height, width], interpolation=mode, antialias=True
        )
    for row, (i, block) in enumerate(blocks.items()):
        dx1, dy1 = block.dst[:2]
        kx1, ky1, kx2, ky2 = block.keep
        out[i, ky1:ky2, kx1:kx2] = small[row, 0, ky1 - dy1 : ky2 - dy1, kx1 - dx1 : kx2 - dx1]
    return out


class View:
    """One chunk seen one way: clean, or the clean chunk with one condition's change in each image. Everything
    the feature sources ask of it (full canvases, each geometry's resize, each geometry's normalised model input)
    is computed once, on first request, and kept; a perturbed view never copies a canvas unless a source asks for
    the whole canvas (the raw-pixel baseline), and derives its resizes from its clean view's."""

    def __init__(self, canvases: np.ndarray, clean: View | None = None, changes: Sequence[Change] = ()) -> None:
        if clean is not None and len(changes) != len(clean):
            raise ValueError(f"{len(changes)} changes for a chunk of {len(clean)} images")
        self._canvases = canvases
        self.clean = clean
        self.changes = tuple(changes)
        self._resized: dict[tuple[Geometry, torch.device], torch.Tensor] = {}
        self._pixels: dict[tuple[Geometry, torch.device], torch.Tensor] = {}

    @classmethod
    def perturbed(cls, clean: View, changes: Sequence[Change]) -> View:
        return cls(clean.canvases, clean, changes)

    def __len__(self) -> int:
        return len(self._canvases)

    @property
    def canvas_size(self) -> int:
        return int(self._canvases.shape[-1])

    @property
    def canvases(self) -> np.ndarray:
        """(B, H, W) uint8, changes applied (made on first request)."""
        if self.clean is not None and self.changes:
            whole = self._canvases.copy()
            for canvas, change in zip(whole, self.changes, strict=True):
                change.paste(canvas)
            self._canvases, self.changes = whole, ()
        return self._canvases

    def resized(self, geometry: Geometry, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, S, S) on ``device``: uint8, or float32 in [0, 1] for a float-resize geometry."""
        key = (geometry, torch.device(device))
        if key not in self._resized:
            if self.clean is None or not self.changes or not geometry.resize_in_uint8:
                self._resized[key] = resize(_to_device(self.canvases, key[1]), geometry)
            else:
                clean = self.clean.resized(geometry, key[1])
                self._resized[key] = resize_changed(clean, self.clean.canvases, self.changes, geometry)
        return self._resized[key]

    def pixels(self, geometry: Geometry, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, 3, C, C) normalised model input on ``device`` (``normalise`` of ``resized``)."""
        key = (geometry, torch.device(device))
        if key not in self._pixels:
            self._pixels[key] = normalise(self.resized(geometry, device), geometry)
        return self._pixels[key]


def _to_device(canvases: np.ndarray, device: torch.device) -> torch.Tensor:
    host = torch.from_numpy(np.ascontiguousarray(canvases))
    if device.type == "cuda":
        # Page-locked memory lets the copy run asynchronously with the model's kernels.
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
