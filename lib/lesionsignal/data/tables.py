"""Reading a cohort's source tables: CSVs with required columns, unique keys, per-row parsing, images in folders.

The cohort readers share these so that every source error names the file and its CSV line numbers the same way
(``ManifestError`` with one ``Problem`` per bad row), and every reader returns its records in the same order.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import pandas as pd

from lesionsignal.data.manifest import Manifest, ManifestError, Problem, Record, repeats

T = TypeVar("T")
Row = dict[str, str]
_BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


def read_table(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    """A CSV as strings (blank cells stay ''), after checking that the required columns are there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [name for name in required if name not in table.columns]
    if missing:
        raise ManifestError(path, f"missing column(s) {missing}; found {list(table.columns)}")
    return table


def line(index: int) -> str:
    """Where data row ``index`` (from 0) stands in its CSV file."""
    return f"line {index + 2}"  # header is line 1, data starts at line 2


def require_unique(values: Sequence[str], source: str | Path, what: str) -> None:
    """Raise naming every row whose value repeats another row's (``what`` names the column)."""
    problems = [
        Problem(line(i), value, f"duplicate {what} (lines {', '.join(str(j + 2) for j in rows)})")
        for value, rows in repeats(values).items()
        for i in rows
    ]
    if problems:
        raise ManifestError(source, problems)


def parse_rows(
    table: pd.DataFrame, parse: Callable[[Row], T], name: Callable[[Row], str]
) -> tuple[list[T], list[Problem]]:
    """Each row through ``parse``; a row whose parse raises ValueError becomes a Problem (its line, ``name``).

    The problems are returned, not raised, so that a reader can add its own before raising them together.
    """
    parsed: list[T] = []
    problems = []
    for index, row in enumerate(table.to_dict("records")):
        try:
            parsed.append(parse(row))
        except ValueError as err:
            problems.append(Problem(line(index), name(row), str(err)))
    return parsed, problems


def parse_binary(value: str, column: str) -> int:
    """A 0/1 cell ("0", "1", "0.0" or "1.0")."""
    if value not in _BINARY:
        raise ValueError(f"column {column!r}: {value!r} is not 0 or 1")
    return _BINARY[value]


def locate_images(names: Sequence[str], folders: Path | Sequence[Path], source: str | Path) -> list[Path]:
    """The path of each named image in exactly one of the folders; a missing or ambiguous name is an error."""
    folders = [Path(folders)] if isinstance(folders, str | Path) else [Path(f) for f in folders]
    found: dict[str, list[Path]] = defaultdict(list)
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: image folder not found")
        # One listing per folder: looking each name up on disk would be slow for 100,000 images.
        with os.scandir(folder) as entries:
            for entry in entries:
                found[entry.name].append(Path(entry.path))
    problems = []
    for name in names:
        hits = found.get(name, [])
        if len(hits) != 1:
            where = ", ".join(map(str, hits)) if hits else ", ".join(map(str, folders))
            reason = "found in several folders" if hits else "image not found in"
            problems.append(Problem("image", name, f"{reason}: {where}"))
    if problems:
        raise ManifestError(source, problems)
    return [found[name][0] for name in names]


def sorted_manifest(cohort: str, records: Iterable[Record], label_names: Sequence[str]) -> Manifest:
    """The records in image-id order."""
    # A canonical record order makes saved manifests and their digests independent of source row order.
    return Manifest(cohort, tuple(sorted(records, key=lambda r: r.image_id)), tuple(label_names))
