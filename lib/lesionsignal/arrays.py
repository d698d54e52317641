"""Deterministic, atomic array files.

``numpy.savez`` stamps each member with the current time, so two identical results would differ in bytes; the
study promises byte-identical outputs for identical parameters, so archives are written with a fixed timestamp.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)


class ArrayFileError(ValueError):
    """An array file is missing, truncated or lacks an expected member; the message names the file."""


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write named arrays to an uncompressed .npz with fixed member order and timestamps, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            for name in sorted(arrays):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                archive.writestr(info, buffer.getvalue())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(path: Path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read every array of an archive written by ``save_arrays``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise ArrayFileError(f"{path}: array file not found") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ArrayFileError(f"{path}: unreadable array file ({err})") from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ArrayFileError(f"{path}: missing arrays {missing}")
    return arrays
