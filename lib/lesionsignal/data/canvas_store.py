"""Canvases decoded once: each image's 1024 px canvas kept as a raw array on disk and memory-mapped when read.

Decoding a film (PNG or DICOM, windowing, padding to the square canvas) costs several milliseconds, as much as a
small encoder's forward pass. Inside one extraction run every chunk is decoded once for all its conditions and
encoders; the store carries that across runs and processes: the shards of a cluster run (each of which holds units
of every chunk), a second encoder extracted later, the lesion and disease stages over the same films, a re-run
after a crash. A canvas is stored under the image's fingerprint (id, resolved path, size, modification time,
window), the canvas arithmetic and the code of the decoder, so a changed file or decoder never reads a stale canvas;
writes are atomic. It costs one byte per canvas pixel on disk (1 MiB per image at 1024 px), which the preflight counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lesionsignal.core.cache import Codec, Store
from lesionsignal.core.canvas import Resample
from lesionsignal.core.files import atomic_writer
from lesionsignal.data.images import ImageItem, load_canvases


def _write(path: Path, canvas: np.ndarray) -> None:
    with atomic_writer(path) as handle:
        np.save(handle, np.ascontiguousarray(canvas), allow_pickle=False)


def _read(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


CANVAS: Codec[np.ndarray] = Codec(".npy", _write, _read)


def canvas_store(folder: Path) -> Store[np.ndarray]:
    """The canvases under ``folder``; the decoder's code (``data.images`` and what it imports) is in every key."""
    return Store.of(folder, CANVAS, "lesionsignal.data.images")


def canvas_bytes(n_images: int, size: int) -> int:
    """Disk the store takes for ``n_images`` canvases of ``size`` px (the .npy header is 128 bytes)."""
    return n_images * (size * size + 128)


def stored_canvases(
    items: Sequence[ImageItem],
    size: int,
    pool: ThreadPoolExecutor,
    resample: Resample,
    store: Store[np.ndarray] | None,
) -> np.ndarray:
    """The canvases of ``items`` in order: read from ``store`` where it has them, else decoded (on ``pool``) and
    stored. Without a store, decoded every time."""
    if store is None:
        return load_canvases(items, size, pool, resample)
    keys = [store.key(item.fingerprint(), size, resample.value) for item in items]
    missing = [i for i, key in enumerate(keys) if not store.has(key)]
    if missing:
        decoded = load_canvases([items[i] for i in missing], size, pool, resample)
        for i, canvas in zip(missing, decoded, strict=True):
            store.write(keys[i], canvas)
    return np.stack([store.read(key) for key in keys])
