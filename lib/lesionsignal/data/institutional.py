"""Institutional CSV cohorts (e.g. the paper's Emory set) read into the common manifest.

One row per image: a path relative to a root folder, patient id, split and 0/1 labels, under column names given by
``InstitutionalColumns``, with optional view and per-row 16-bit window columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lesionsignal.data.manifest import DISEASES, Manifest, ManifestError, Record
from lesionsignal.data.tables import Row, parse_binary, parse_rows, read_table, sorted_manifest
from lesionsignal.data.validation import window_is_valid


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
    ``split_map`` renames split values explicitly (e.g. {"val": "train"}); other values pass unchanged.
    """
    csv, root = Path(csv), Path(root)
    cols = columns if isinstance(columns, InstitutionalColumns) else InstitutionalColumns.from_mapping(columns)
    label_columns = [column for _, column in cols.labels]
    required = [cols.path, cols.patient_id, cols.split, *label_columns]
    required += [c for c in (cols.view,) if c] + list(window_columns or ())
    table = read_table(csv, required)

    def record(row: Row) -> Record:
        relative = row[cols.path]
        labels = tuple((name, parse_binary(row[column], column)) for name, column in cols.labels)
        window = _window_cells(row, window_columns) if window_columns else None
        if not relative or not row[cols.patient_id]:
            raise ValueError("path and patient id must not be blank")
        split = split_map.get(row[cols.split], row[cols.split]) if split_map else row[cols.split]
        view = row[cols.view] if cols.view else ""
        path = root / relative
        return Record(path.name, path, row[cols.patient_id], split, view, labels, window=window)

    records, problems = parse_rows(table, record, lambda row: Path(row[cols.path]).name)
    if problems:
        raise ManifestError(csv, problems)
    return sorted_manifest(cohort, records, [name for name, _ in cols.labels])


def _window_cells(row: Row, columns: tuple[str, str]) -> tuple[float, float] | None:
    low, high = (row[c] for c in columns)
    if low == "" and high == "":
        return None
    try:
        window = float(low), float(high)
    except ValueError:
        raise ValueError(f"window columns {list(columns)}: {low!r}, {high!r} are not numbers") from None
    if not window_is_valid(*window):
        raise ValueError(f"window columns {list(columns)}: need finite min < max, got {low!r}, {high!r}")
    return window
