"""One manifest format for every cohort (protocol section 1): records, lesion boxes, saving and loading.

A manifest on disk is three files with deterministic bytes: ``manifest.json`` (cohort and label names),
``manifest.csv`` (one row per image) and ``boxes.csv`` (one row per lesion box). ``Manifest.digest`` hashes
the same canonical bytes, so it is a cache key that changes exactly when the saved files would. Checking the
records against a study's rules (files, splits, patients, boxes) is ``validation.validate``.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pandas as pd

from lesionsignal.core.box import Box
from lesionsignal.core.errors import UserError
from lesionsignal.core.files import atomic_write_bytes
from lesionsignal.data.images import ImageItem

MANIFEST_CSV = "manifest.csv"
BOXES_CSV = "boxes.csv"
META_JSON = "manifest.json"
FORMAT_VERSION = 1
MAX_SHOWN = 20  # problems spelt out in an error message; the rest are counted
DISEASES = ("cardiomegaly", "edema", "lung_lesion")
RECORD_COLUMNS = ("image_id", "path", "patient_id", "split", "view", "group", "window_min", "window_max")
BOX_COLUMNS = ("image_id", "label", "x1", "y1", "x2", "y2")


class Split(enum.StrEnum):
    TRAIN = "train"
    VALIDATE = "validate"  # MIMIC's official validation split, only when it is kept apart from train
    TEST = "test"


class SplitPolicy(enum.StrEnum):
    """What the validator demands of a cohort's splits; a manifest declares it, so no check is skipped silently."""

    PATIENT_DISJOINT = "patient_disjoint"  # no patient in two splits (every cohort but the one below)
    OVERLAP_REPORTED = "overlap_reported"  # a published split that crosses patients, kept as published and reported


class PatientIds(enum.StrEnum):
    """Where a manifest's patient ids come from."""

    SOURCE = "source"  # the source names each image's patient (a column, an NIH file-name prefix)
    PER_IMAGE = "per_image"  # the source names none: each image is its own patient, so nothing groups by patient


@dataclass(frozen=True)
class Problem:
    """One bad row: where it is (``record 3``, ``line 5``, ``train.json[12]``), its image id and why."""

    where: str
    image_id: str
    reason: str

    def __str__(self) -> str:
        name = f" ({self.image_id})" if self.image_id else ""
        return f"{self.where}{name}: {self.reason}"


class ManifestError(UserError, ValueError):
    """Bad cohort data; the message names the source and every offending row (the first ``MAX_SHOWN``).

    ``advice`` (what to do about it) ends the message when the problems alone do not make that plain.
    """

    def __init__(self, source: str | Path, problems: Sequence[Problem] | str, *, advice: str = "") -> None:
        self.source = str(source)
        self.problems: tuple[Problem, ...] = (
            (Problem("", "", problems),) if isinstance(problems, str) else tuple(problems)
        )
        self.advice = advice
        super().__init__(_error_text(self.source, self.problems, advice))


def _error_text(source: str, problems: Sequence[Problem], advice: str) -> str:
    if len(problems) == 1 and not problems[0].where:
        lines = [f"{source}: {problems[0].reason}"]
    else:
        lines = [f"{source}: {len(problems)} problem(s):"]
        lines += [f"  {problem}" for problem in problems[:MAX_SHOWN]]
        if len(problems) > MAX_SHOWN:
            lines.append(f"  ... and {len(problems) - MAX_SHOWN} more")
    return "\n".join([*lines, *([advice] if advice else [])])


@dataclass(frozen=True)
class LesionBox:
    """A labelled lesion box of a record, in the canvas frame."""

    label: str
    box: Box


@dataclass(frozen=True)
class Record:
    """One image of a cohort; ``labels`` are (name, 0/1) pairs in the manifest's label order."""

    image_id: str
    path: Path
    patient_id: str
    split: str
    view: str  # "PA", "AP", ... ; empty when the source does not say
    labels: tuple[tuple[str, int], ...]
    boxes: tuple[LesionBox, ...] = ()
    window: tuple[float, float] | None = None  # 16-bit sources: stretch linearly from low to high
    group: str = ""  # a free subgroup tag (e.g. the source of a real film); empty when unused

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.labels)

    @property
    def item(self) -> ImageItem:
        return ImageItem(self.image_id, self.path, self.window)

    def label(self, name: str) -> int:
        for key, value in self.labels:
            if key == name:
                return value
        raise KeyError(f"{self.image_id}: no label {name!r} (labels: {', '.join(self.label_names)})")


@dataclass(frozen=True)
class Manifest:
    """A cohort: its records in a fixed order, the names of the 0/1 labels every record carries, and what its
    split and patient ids may be trusted for."""

    cohort: str
    records: tuple[Record, ...]
    label_names: tuple[str, ...]
    split_policy: SplitPolicy = SplitPolicy.PATIENT_DISJOINT
    patient_ids: PatientIds = PatientIds.SOURCE

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", tuple(self.records))
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if not self.cohort:
            raise ManifestError("<manifest>", "the cohort name is empty")
        clashes = sorted(set(self.label_names) & {*RECORD_COLUMNS, "n_boxes"})
        if clashes:
            raise ManifestError(self.cohort, f"label names {clashes} clash with the manifest's own columns")
        if len(set(self.label_names)) != len(self.label_names):
            raise ManifestError(self.cohort, f"label names repeat: {list(self.label_names)}")
        wrong = [
            Problem(f"record {i}", r.image_id, f"labels {list(r.label_names)} != {list(self.label_names)}")
            for i, r in enumerate(self.records)
            if r.label_names != self.label_names
        ]
        if wrong:
            raise ManifestError(self.cohort, wrong)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names present, in first-seen order."""
        return tuple(dict.fromkeys(r.split for r in self.records))

    def with_records(self, records: Iterable[Record]) -> Manifest:
        return replace(self, records=tuple(records))

    def split(self, name: str) -> Manifest:
        if name not in self.splits:
            raise ManifestError(self.cohort, f"no record in split {name!r} (splits: {list(self.splits)})")
        return self.with_records(r for r in self.records if r.split == name)

    def frame(self) -> pd.DataFrame:
        """One row per record: the manifest.csv columns (labels as int, window as float) plus ``n_boxes``."""
        rows = [_record_row(r) for r in self.records]
        frame = pd.DataFrame(rows, columns=[*RECORD_COLUMNS, *self.label_names])
        for name in self.label_names:
            frame[name] = frame[name].astype("int64")
        for name in ("window_min", "window_max"):
            frame[name] = pd.to_numeric(frame[name]).astype("float64")
        frame["n_boxes"] = pd.Series([len(r.boxes) for r in self.records], dtype="int64")
        return frame

    def boxes_frame(self) -> pd.DataFrame:
        """One row per box, with its image's split and ``is_target`` (its class is one of the label names)."""
        columns = [*BOX_COLUMNS, "split", "width", "height", "area", "is_target"]
        rows = [
            (r.image_id, b.label, *b.box.as_tuple(), r.split, b.box.width, b.box.height, b.box.area)
            for r in self.records
            for b in r.boxes
        ]
        frame = pd.DataFrame(rows, columns=columns[:-1])
        for name in ("x1", "y1", "x2", "y2", "width", "height", "area"):
            frame[name] = frame[name].astype("int64")
        frame["is_target"] = frame["label"].isin(self.label_names).astype(bool)
        return frame[columns]

    def canonical_bytes(self) -> tuple[bytes, bytes, bytes]:
        """The exact bytes of manifest.json, manifest.csv and boxes.csv."""
        meta = {
            "cohort": self.cohort,
            "format": FORMAT_VERSION,
            "label_names": list(self.label_names),
            "patient_ids": self.patient_ids.value,
            "split_policy": self.split_policy.value,
        }
        meta_bytes = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
        records = csv_bytes([*RECORD_COLUMNS, *self.label_names], (_record_row(r) for r in self.records))
        boxes = csv_bytes(
            BOX_COLUMNS,
            ((r.image_id, b.label, *b.box.as_tuple()) for r in self.records for b in r.boxes),
        )
        return meta_bytes, records, boxes

    def digest(self) -> str:
        """sha256 of the canonical bytes (hex), for cache keys."""
        hasher = hashlib.sha256()
        for part in self.canonical_bytes():
            hasher.update(len(part).to_bytes(8, "big"))
            hasher.update(part)
        return hasher.hexdigest()

    def save(self, folder: str | Path) -> Path:
        """Write manifest.json, manifest.csv and boxes.csv atomically into ``folder``; returns the folder."""
        folder = Path(folder)
        duplicates = duplicate_issues(self.records)
        if duplicates:
            # boxes.csv is keyed by image id, so duplicates could not be told apart on loading
            raise ManifestError(f"{self.cohort}: cannot save to {folder}", issue_problems(self.records, duplicates))
        meta, records, boxes = self.canonical_bytes()
        atomic_write_bytes(folder / BOXES_CSV, boxes)
        atomic_write_bytes(folder / MANIFEST_CSV, records)
        atomic_write_bytes(folder / META_JSON, meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        folder = Path(folder)
        for name in (META_JSON, MANIFEST_CSV, BOXES_CSV):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: manifest file not found")
        meta = _read_meta(folder / META_JSON)
        boxes = _read_boxes(folder / BOXES_CSV)
        records = _read_records(folder / MANIFEST_CSV, meta.label_names, boxes)
        return cls(meta.cohort, tuple(records), meta.label_names, meta.split_policy, meta.patient_ids)


def _record_row(record: Record) -> tuple[object, ...]:
    low, high = record.window if record.window is not None else ("", "")
    head = (
        record.image_id,
        record.path.as_posix(),
        record.patient_id,
        record.split,
        record.view,
        record.group,
    )
    return (*head, _float_text(low), _float_text(high), *(value for _, value in record.labels))


def _float_text(value: float | str) -> str:
    # repr round-trips exactly through float(), so a loaded window saves to the same bytes
    return value if isinstance(value, str) else repr(float(value))


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    """A CSV file's exact bytes: UTF-8, '\\n' line ends, quoting only where needed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def load_json(path: Path) -> object:
    """The parsed JSON of ``path``; bad JSON is a ManifestError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(path, f"not valid JSON ({err})") from None


@dataclass(frozen=True)
class _Meta:
    cohort: str
    label_names: tuple[str, ...]
    split_policy: SplitPolicy
    patient_ids: PatientIds


def _read_meta(path: Path) -> _Meta:
    meta = load_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ManifestError(path, f"expected an object with format {FORMAT_VERSION}")
    cohort, names = meta.get("cohort"), meta.get("label_names")
    if not isinstance(cohort, str) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ManifestError(path, "needs 'cohort' (a string) and 'label_names' (a list of strings)")
    # Manifests saved before these keys existed were all patient-disjoint with patient ids from the source.
    policy = _meta_enum(path, meta, "split_policy", SplitPolicy, SplitPolicy.PATIENT_DISJOINT)
    patients = _meta_enum(path, meta, "patient_ids", PatientIds, PatientIds.SOURCE)
    return _Meta(cohort, tuple(names), policy, patients)


E = TypeVar("E", bound=enum.StrEnum)


def _meta_enum(path: Path, meta: dict, key: str, kind: type[E], default: E) -> E:
    value = meta.get(key, default.value)
    try:
        return kind(value)
    except ValueError:
        raise ManifestError(path, f"{key} {value!r} is not one of {[k.value for k in kind]}") from None


def _csv_rows(path: Path, header: Sequence[str]) -> Iterable[tuple[int, list[str]]]:
    """(line number, cells) of each data row, after checking the header and the row lengths."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        found = next(reader, [])
        if found != list(header):
            raise ManifestError(path, f"header {found} != expected {list(header)}")
        for line, cells in enumerate(reader, start=2):
            if len(cells) != len(header):
                raise ManifestError(path, [Problem(f"line {line}", "", f"{len(cells)} cells, expected {len(header)}")])
            yield line, cells


def _read_boxes(path: Path) -> dict[str, list[LesionBox]]:
    boxes: dict[str, list[LesionBox]] = defaultdict(list)
    problems = []
    for line, (image_id, label, *corners) in _csv_rows(path, BOX_COLUMNS):
        try:
            x1, y1, x2, y2 = (int(value) for value in corners)
        except ValueError:
            problems.append(Problem(f"line {line}", image_id, f"box corners {corners} are not integers"))
            continue
        boxes[image_id].append(LesionBox(label, Box(x1, y1, x2, y2)))
    if problems:
        raise ManifestError(path, problems)
    return boxes


def _read_records(path: Path, label_names: tuple[str, ...], boxes: dict[str, list[LesionBox]]) -> list[Record]:
    records, problems = [], []
    n_fixed = len(RECORD_COLUMNS)
    for line, cells in _csv_rows(path, [*RECORD_COLUMNS, *label_names]):
        image_id, path_text, patient_id, split, view, group, low, high = cells[:n_fixed]
        try:
            labels = tuple((name, int(value)) for name, value in zip(label_names, cells[n_fixed:], strict=True))
            window = _parse_window(low, high)
        except ValueError as err:
            problems.append(Problem(f"line {line}", image_id, str(err)))
            continue
        record_boxes = tuple(boxes.pop(image_id, ()))
        records.append(Record(image_id, Path(path_text), patient_id, split, view, labels, record_boxes, window, group))
    problems += [Problem(BOXES_CSV, image_id, "boxes for an image not in manifest.csv") for image_id in boxes]
    if problems:
        raise ManifestError(path, problems)
    return records


def _parse_window(low: str, high: str) -> tuple[float, float] | None:
    if low == "" and high == "":
        return None
    if low == "" or high == "":
        raise ValueError(f"window needs both ends or neither, got {low!r}..{high!r}")
    return float(low), float(high)


K = TypeVar("K", bound=Hashable)


def repeats(keys: Iterable[K]) -> dict[K, list[int]]:
    """The positions of every key that occurs more than once, keys in first-seen order."""
    where: dict[K, list[int]] = defaultdict(list)
    for position, key in enumerate(keys):
        where[key].append(position)
    return {key: positions for key, positions in where.items() if len(positions) > 1}


# Record checks return (record index, reason) pairs; a record may collect several.
Issue = tuple[int, str]


def issue_problems(records: Sequence[Record], issues: Iterable[Issue]) -> list[Problem]:
    """The issues as problems that name each record by its position and image id."""
    return [Problem(f"record {i}", records[i].image_id, reason) for i, reason in issues]


def duplicate_issues(records: Sequence[Record]) -> list[Issue]:
    """Every record whose image id another record has too."""
    return [
        (i, f"duplicate image id (records {', '.join(map(str, rows))})")
        for rows in repeats(r.image_id for r in records).values()
        for i in rows
    ]
