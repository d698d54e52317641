"""Images to read: an id, a path and a 16-bit window, and reading a batch of them into canvases."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionsignal.core.canvas import CanvasError, Resample, Window, load_canvas
from lesionsignal.core.errors import UserError


class ImageError(UserError, ValueError):
    """An image of a cohort cannot be read; the message names the image and its file."""


@dataclass(frozen=True)
class ImageItem:
    """An image to read: its id (the file's base name, which perturbation seeding hashes), path and 16-bit window."""

    image_id: str
    path: Path
    window: tuple[float, float] | None = None

    def fingerprint(self) -> tuple[str, str, int, int, tuple[float, float] | None]:
        """What identifies the pixels in a cache key: the id, the file (resolved path, size, modification time) and
        the window. The whole path, not the file name alone: two cohorts may hold different films of one name and
        size (two demo cohorts name their films alike); a file rewritten in place gets a new modification time."""
        try:
            stat = self.path.stat()
        except OSError as err:
            raise ImageError(f"image {self.image_id}: cannot read {self.path} ({err})") from None
        return (self.image_id, str(self.path.resolve()), stat.st_size, stat.st_mtime_ns, self.window)

    def canvas(self, size: int, resample: Resample = Resample.FLOAT) -> np.ndarray:
        window = Window(*self.window) if self.window else None
        try:
            return load_canvas(self.path, size=size, window=window, resample=resample)
        except (CanvasError, ValueError) as err:
            raise ImageError(f"image {self.image_id}: {err}") from err


def load_canvases(
    items: Sequence[ImageItem], size: int, pool: ThreadPoolExecutor, resample: Resample = Resample.FLOAT
) -> np.ndarray:
    """The canvases of ``items`` in order, decoded on ``pool``'s threads: (len(items), size, size) uint8."""
    return np.stack(list(pool.map(lambda item: item.canvas(size, resample), items)))
