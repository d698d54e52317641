"""Institutional CSV cohorts (e.g. the paper's Emory set) read into the common manifest.

One row per image: a path relative to a root folder, patient id, split and 0/1 labels, under column names given by
``InstitutionalColumns``, with optional view and per-row 16-bit window columns. Every cell is checked and all the
problems of the file are reported together, each with its line and column. Patients in two splits are left to
``validation.validate``, so that a cohort that allows exclusions can exclude them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from lesionsignal.data.manifest import DISEASES, Manifest, Problem, Record, Split
from lesionsignal.data.tables import (
    FRONTAL_VIEWS,
    LineProblem,
    not_blank,
    one_of,
    parse_column,
    raise_problems,
    read_table,
    repeated_keys,
    sorted_manifest,
    where,
    zero_or_one,
)
from lesionsignal.data.validation import window_is_valid

SPLIT_NAMES = tuple(split.value for split in Split)


@dataclass(frozen=True)
class InstitutionalColumns:
    """Which CSV column holds what; ``labels`` pairs each label name with its column."""

    path: str = "path"
    patient_id: str = "patient_id"
    split: str = "split"
    labels: tuple[tuple[str, str], ...] = tuple((name, name) for name in DISEASES)
    view: str | None = None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object]) -> InstitutionalColumns:
        """From {"path": ..., "patient_id": ..., "split": ..., "labels": {name: column}, "view": ...}."""
        unknown = sorted(set(mapping) - {"path", "patient_id", "split", "labels", "view"})
        if unknown:
            raise ValueError(f"unknown column mapping key(s) {unknown}")
        values = dict(mapping)
        labels = values.get("labels")
        if isinstance(labels, Mapping):
            values["labels"] = tuple((str(k), str(v)) for k, v in labels.items())
        return cls(**values)  # type: ignore[arg-type]


def read_institutional(
    csv: str | Path,
    *,
    root: str | Path,
    columns: InstitutionalColumns | Mapping[str, object] = InstitutionalColumns(),
    window_columns: tuple[str, str] | None = None,
    split_map: Mapping[str, str] | None = None,
    cohort: str = "institutional",
) -> Manifest:
    """A CSV cohort (path relative to ``root``, patient, split, 0/1 labels), e.g. the paper's Emory set.

    ``window_columns`` (min, max) give each row's 16-bit window; both blank means no window for that row.
    ``split_map`` renames split values explicitly (e.g. {"val": "train"}); other values pass unchanged and must
    then be train, validate or test. A view column, when named, must say AP or PA on every row.
    """
    csv, root = Path(csv), Path(root)
    cols = columns if isinstance(columns, InstitutionalColumns) else InstitutionalColumns.from_mapping(columns)
    label_columns = [column for _, column in cols.labels]
    required = [cols.path, cols.patient_id, cols.split, *label_columns]
    required += [c for c in (cols.view,) if c] + list(window_columns or ())
    table = read_table(csv, required)
    names = [Path(text).name for text in table[cols.path].tolist()]
    paths, found = parse_column(table, cols.path, not_blank, names)
    patients, bad = parse_column(table, cols.patient_id, not_blank, names)
    found += bad
    splits, bad = parse_column(table, cols.split, partial(_split_name, split_map or {}), names)
    found += bad
    labels = []
    for column in label_columns:
        values, bad = parse_column(table, column, zero_or_one, names)
        labels.append(values)
        found += bad
    views: list[str | None] = [""] * len(table)
    if cols.view:
        views, bad = parse_column(table, cols.view, _frontal_view, names)
        found += bad
    windows: list[tuple[float, float] | None] = [None] * len(table)
    if window_columns:
        windows, bad = _windows(table, window_columns, names)
        found += bad
    found += repeated_keys(table.index.tolist(), names, names, f"column {cols.path!r} (its file name is the image id)")
    raise_problems(csv, found)
    label_names = [name for name, _ in cols.labels]
    records = (
        Record(
            name,
            root / str(path),
            str(patient),
            str(split),
            str(view),
            tuple(zip(label_names, row, strict=True)),
            window=window,
        )
        for name, path, patient, split, view, window, *row in zip(
            names, paths, patients, splits, views, windows, *labels, strict=True
        )
    )
    return sorted_manifest(cohort, records, label_names)


def _split_name(split_map: Mapping[str, str], text: str) -> str:
    name = split_map.get(text, text)
    if name in SPLIT_NAMES:
        return name
    choices = f"one of the splits {', '.join(SPLIT_NAMES)}"
    if name != text:
        raise ValueError(f"{text!r} becomes {name!r} by split_map, which is not {choices}")
    if not text.strip():
        raise ValueError(f"blank, but must be {choices}")
    raise ValueError(f"{text!r} is not {choices}; rename it with split_map, e.g. {{{text}: train}}")


def _frontal_view(text: str) -> str:
    return one_of(text, FRONTAL_VIEWS, "frontal views")


def _windows(
    table: pd.DataFrame, columns: tuple[str, str], names: Sequence[str]
) -> tuple[list[tuple[float, float] | None], list[LineProblem]]:
    """Each row's (min, max) window, None where both cells are blank."""
    label = f"columns {columns[0]!r}, {columns[1]!r}"
    windows: list[tuple[float, float] | None] = []
    found = []
    cells = zip(table.index.tolist(), names, table[columns[0]].tolist(), table[columns[1]].tolist(), strict=True)
    for line, name, low, high in cells:
        try:
            windows.append(_window(low, high))
        except ValueError as err:
            found.append(LineProblem(line, Problem(where(line), name, f"{label}: {err}")))
            windows.append(None)
    return windows, found


def _window(low: str, high: str) -> tuple[float, float] | None:
    if low == "" and high == "":
        return None
    try:
        window = float(low), float(high)
    except ValueError:
        raise ValueError(f"{low!r}, {high!r} are not numbers (give both, or leave both blank)") from None
    if not window_is_valid(*window):
        raise ValueError(f"need finite min < max, got {low!r}, {high!r}")
    return window
