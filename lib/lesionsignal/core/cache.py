"""The one cache helper: results stored under a key of their inputs and of the code that computes them.

A ``Store`` is a folder of results of one kind of computation. Its key for a result hashes the inputs given and
the derived digest of every package module the computation imports (``digests.code_digest``), so a changed
input or a changed line of code anywhere in that closure misses the cache, and nothing else does. Writes are
atomic (``core.files``), so a killed run leaves either a whole result or none, and a re-run resumes at the first
missing key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import pandas as pd

from lesionsignal.core.digests import code_digest, stable_digest
from lesionsignal.core.files import load_arrays, read_frame, save_arrays, write_frame

T = TypeVar("T")


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How one kind of result goes to disk (``write`` must be atomic) and comes back; a result may be a folder."""

    suffix: str
    write: Callable[[Path, T], object]
    read: Callable[[Path], T]


FRAMES: Codec[pd.DataFrame] = Codec(".csv", write_frame, read_frame)
ARRAYS: Codec[dict[str, np.ndarray]] = Codec(".npz", save_arrays, load_arrays)


@dataclass(frozen=True)
class Store(Generic[T]):
    """Results of one computation under ``folder/<key[:2]>/<key><suffix>``."""

    folder: Path
    codec: Codec[T]
    code: str  # digest of the computation's import closure

    @classmethod
    def of(cls, folder: Path, codec: Codec[T], *modules: str, root: Path | None = None) -> Store[T]:
        """A store for the computation implemented in ``modules`` (their import closure is part of every key)."""
        return cls(Path(folder), codec, code_digest(*modules, root=root))

    def key(self, *inputs: object) -> str:
        return stable_digest(self.code, *inputs)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}{self.codec.suffix}"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [key for key in keys if not self.has(key)]

    def read(self, key: str) -> T:
        return self.codec.read(self.path(key))

    def write(self, key: str, value: T) -> Path:
        path = self.path(key)
        self.codec.write(path, value)
        return path

    def get_or_compute(self, key: str, compute: Callable[[], T]) -> T:
        """The stored result, or ``compute()`` stored and then read back (so both paths hand on the same value)."""
        if not self.has(key):
            self.write(key, compute())
        return self.read(key)
