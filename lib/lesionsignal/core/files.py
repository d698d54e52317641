"""Files written atomically and deterministically: bytes, text, CSV frames and array archives.

A crash never leaves a half-written file (each write goes to a temporary sibling that is renamed into place), and
identical values always give identical bytes: ``numpy.savez`` stamps members with the current time, so archives
are written with a fixed timestamp; CSV floats use the shortest repr that reads back bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20


class ArrayFileError(ValueError):
    """An array file is missing, truncated or lacks an expected member; the message names the file."""


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary sibling of ``path``, renamed onto it only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """A temporary sibling folder, renamed onto ``folder`` when the block succeeds (a concurrent writer that
    finished first wins; its folder is kept)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        yield tmp
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (data files can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write named arrays to an uncompressed .npz with fixed member order and timestamps, atomically."""
    with atomic_writer(path) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


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


def array_names(path: Path) -> list[str]:
    """The member names of an archive, without reading the arrays."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return list(archive.files)
    except (FileNotFoundError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise ArrayFileError(f"{path}: unreadable array file ({err})") from None


def write_frame(path: Path, frame: pd.DataFrame) -> Path:
    """CSV whose floats read back bit for bit (shortest round-trip repr), written atomically."""
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    return path


def read_frame(path: Path) -> pd.DataFrame:
    # pandas' default parser reads back the shortest round-trip repr exactly (checked in the tests).
    return pd.read_csv(path)


def write_table(path: Path, frame: pd.DataFrame) -> Path:
    """A frame as JSON that reads back exactly: values (floats by their shortest round-trip repr), column order,
    and dtypes (an all-empty text column stays text, where CSV would turn it into floats)."""
    columns = [str(c) for c in frame.columns]
    rows = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
    payload = {"columns": columns, "dtypes": [str(t) for t in frame.dtypes], "rows": rows}
    atomic_write_text(path, json.dumps(payload, separators=(",", ":")) + "\n")
    return path


def read_table(path: Path) -> pd.DataFrame:
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        frame = pd.DataFrame(payload["rows"], columns=payload["columns"], dtype=object)
        return frame.astype(dict(zip(payload["columns"], payload["dtypes"], strict=True)))
    except FileNotFoundError:
        raise ArrayFileError(f"{path}: table not found") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ArrayFileError(f"{path}: unreadable table ({err})") from None
