"""Reading a cohort's source tables: CSVs with required columns, unique keys, cell parsing, images in folders.

The cohort readers share these so that every source error names the file, the line a user sees in an editor
(the header is line 1) and the column, the same way (``ManifestError`` with one ``Problem`` per bad cell), and
so that every reader reports all the problems of a file at once and returns its records in the same order.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import pandas as pd

from lesionsignal.data.manifest import Manifest, ManifestError, Problem, Record, repeats

T = TypeVar("T")
Row = dict[str, str]
LINE = "line"  # the index name of a table from read_table: each row's line in its file
FRONTAL_VIEWS = ("AP", "PA")  # the projections the study keeps, as the sources spell them
_BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


class LineProblem(NamedTuple):
    """A problem with the line it stands on, so that problems found column by column can be put in file order."""

    line: int
    problem: Problem


def read_table(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    """A CSV as strings (blank cells stay ''), indexed by the line each row starts on (header = line 1).

    Checks that the required columns are there and that every row has as many cells as the header; the rows
    that do not are named together. Blank lines are skipped but still counted, as an editor counts them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    header, rows, lines = _csv_cells(path)
    missing = [name for name in required if name not in header]
    if missing:
        raise ManifestError(path, f"missing column(s) {missing}; found {header}")
    twice = sorted(name for name in repeats(header) if name in required)
    if twice:
        raise ManifestError(path, f"column(s) {twice} appear more than once in the header")
    ragged = [
        Problem(where(number), "", f"{len(cells)} cells, but the header (line 1) has {len(header)}")
        for number, cells in zip(lines, rows, strict=True)
        if len(cells) != len(header)
    ]
    if ragged:
        advice = "A row cut short or an unquoted comma in a cell shifts the columns: repair or re-download the file."
        raise ManifestError(path, ragged, advice=advice)
    return pd.DataFrame(rows, columns=header, index=pd.Index(lines, name=LINE))


def _csv_cells(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the cells of each data row and the line each row starts on."""
    header: list[str] = []
    rows, lines = [], []
    try:
        # utf-8-sig: a spreadsheet's byte-order mark would otherwise become part of the first column's name
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            end = reader.line_num
            for cells in reader:
                start, end = end + 1, reader.line_num  # a quoted cell may span lines; the row starts at the first
                if cells:
                    rows.append(cells)
                    lines.append(start)
    except UnicodeDecodeError as err:
        raise ManifestError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise ManifestError(path, f"not a readable CSV file ({err})") from None
    return header, rows, lines


def where(number: int, kind: str = LINE) -> str:
    """How a problem names a line of a CSV file (or a row of a table that has no lines)."""
    return f"{kind} {number}"


def parse_column(
    table: pd.DataFrame, column: str, parse: Callable[[str], T], names: Sequence[str]
) -> tuple[list[T | None], list[LineProblem]]:
    """Each cell of ``column`` through ``parse``; a cell whose parse raises ValueError becomes a problem naming its
    line (from the table's index), its row's name (``names``) and the column, and its value becomes None.

    Each distinct value is parsed once: label and view columns of 100,000 rows hold a handful of values.
    """
    outcomes: dict[str, T | ValueError] = {}
    for value in table[column].unique():
        try:
            outcomes[value] = parse(value)
        except ValueError as err:
            outcomes[value] = err
    cells = table[column].tolist()
    kind = table.index.name or "row"
    values: list[T | None] = [outcomes[cell] for cell in cells]
    failed = {value for value, outcome in outcomes.items() if isinstance(outcome, ValueError)}
    found = []
    for index, (line, cell) in enumerate(zip(table.index.tolist(), cells, strict=True)):
        if cell in failed:
            problem = Problem(where(line, kind), names[index], f"column {column!r}: {outcomes[cell]}")
            found.append(LineProblem(line, problem))
            values[index] = None
    return values, found


def duplicates(table: pd.DataFrame, columns: Sequence[str], names: Sequence[str]) -> list[LineProblem]:
    """Every row whose values in ``columns`` repeat another row's, naming the lines that share them."""
    # pandas finds the few repeated rows among 100,000 quickly; only those are grouped in Python
    rows = np.flatnonzero(table.duplicated(subset=list(columns), keep=False).to_numpy()).tolist()
    keys = [tuple(table[c].iloc[i] for c in columns) for i in rows]
    label = f"column {columns[0]!r}" if len(columns) == 1 else f"columns {', '.join(map(repr, columns))}"
    lines = table.index.tolist()
    kind = table.index.name or "row"
    return repeated_keys([lines[i] for i in rows], keys, [names[i] for i in rows], label, kind)


def repeated_keys(
    lines: Sequence[int], keys: Sequence[Hashable], names: Sequence[str], label: str, kind: str = LINE
) -> list[LineProblem]:
    """A problem for each row (at ``lines``) whose key another row shares; ``label`` names the column(s)."""
    found = []
    for group in repeats(keys).values():
        shared = ", ".join(str(lines[i]) for i in group)
        reason = f"{label}: repeated on {kind}s {shared}"
        found += [LineProblem(lines[i], Problem(where(lines[i], kind), names[i], reason)) for i in group]
    return found


def raise_problems(source: str | Path, found: Iterable[LineProblem], *, advice: str = "") -> None:
    """Raise every problem of a file together, in line order (one line's problems in the order found)."""
    problems = [item.problem for item in sorted(found, key=lambda item: item.line)]
    if problems:
        raise ManifestError(source, problems, advice=advice)


def require_unique(table: pd.DataFrame, column: str, source: str | Path) -> None:
    """Raise naming every row whose ``column`` value repeats another row's."""
    raise_problems(source, duplicates(table, [column], table[column].tolist()))


def parse_rows(
    table: pd.DataFrame, parse: Callable[[Row], T], name: Callable[[Row], str]
) -> tuple[list[T], list[Problem]]:
    """Each row through ``parse``; a row whose parse raises ValueError becomes a Problem (its line, ``name``).

    The problems are returned, not raised, so that a reader can add its own before raising them together.
    """
    parsed: list[T] = []
    problems = []
    for line, row in zip(table.index.tolist(), table.to_dict("records"), strict=True):
        try:
            parsed.append(parse(row))
        except ValueError as err:
            problems.append(Problem(where(line), name(row), str(err)))
    return parsed, problems


def zero_or_one(value: str) -> int:
    """A 0/1 cell ("0", "1", "0.0" or "1.0")."""
    if value not in _BINARY:
        raise ValueError(f"{value!r} is not 0 or 1")
    return _BINARY[value]


def parse_binary(value: str, column: str) -> int:
    """A 0/1 cell whose error names its column (for readers that parse a row at a time)."""
    try:
        return zero_or_one(value)
    except ValueError as err:
        raise ValueError(f"column {column!r}: {err}") from None


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank")
    return value


def whole_number(text: str) -> str:
    """A cell of decimal digits only (an id), kept as text."""
    if not text.isascii() or not text.isdigit():
        raise ValueError("blank" if not text.strip() else f"{text!r} is not a whole number")
    return text


def one_of(value: str, allowed: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``allowed``; the error names the allowed values (``what`` says what they are)."""
    if value in allowed:
        return value
    choices = f"{what} {', '.join(allowed)}"
    raise ValueError(
        f"blank, but must be one of the {choices}" if not value.strip() else f"{value!r} is not one of the {choices}"
    )


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
            places = ", ".join(map(str, hits)) if hits else ", ".join(map(str, folders))
            reason = "found in several folders" if hits else "image not found in"
            problems.append(Problem("image", name, f"{reason}: {places}"))
    if problems:
        raise ManifestError(source, problems)
    return [found[name][0] for name in names]


def sorted_manifest(cohort: str, records: Iterable[Record], label_names: Sequence[str]) -> Manifest:
    """The records in image-id order."""
    # A canonical record order makes saved manifests and their digests independent of source row order.
    return Manifest(cohort, tuple(sorted(records, key=lambda r: r.image_id)), tuple(label_names))
