"""One manifest format for every cohort (SPEC section 1): records, lesion boxes, validation and exclusions.

A manifest on disk is three files with deterministic bytes: ``manifest.json`` (cohort and label names),
``manifest.csv`` (one row per image) and ``boxes.csv`` (one row per lesion box). ``Manifest.digest`` hashes
the same canonical bytes, so it is a cache key that changes exactly when the saved files would.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import json
import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from lesionsignal.canvas import CanvasError, read_image
from lesionsignal.outputs import atomic_write_bytes

MANIFEST_CSV = "manifest.csv"
BOXES_CSV = "boxes.csv"
META_JSON = "manifest.json"
FORMAT_VERSION = 1
CANVAS = 1024
MAX_SHOWN = 20  # problems spelt out in an error message; the rest are counted
DISEASES = ("cardiomegaly", "edema", "lung_lesion")
RECORD_COLUMNS = ("image_id", "path", "patient_id", "split", "view", "group", "window_min", "window_max")
BOX_COLUMNS = ("image_id", "label", "x1", "y1", "x2", "y2")


class Split(enum.StrEnum):
    TRAIN = "train"
    VALIDATE = "validate"  # MIMIC's official validation split, only when it is kept apart from train
    TEST = "test"


@dataclass(frozen=True)
class Problem:
    """One bad row: where it is (``record 3``, ``line 5``, ``train.json[12]``), its image id and why."""

    where: str
    image_id: str
    reason: str

    def __str__(self) -> str:
        name = f" ({self.image_id})" if self.image_id else ""
        return f"{self.where}{name}: {self.reason}"


class ManifestError(ValueError):
    """Bad cohort data; the message names the source and every offending row (the first ``MAX_SHOWN``)."""

    def __init__(self, source: str | Path, problems: Sequence[Problem] | str) -> None:
        self.source = str(source)
        self.problems: tuple[Problem, ...] = (
            (Problem("", "", problems),) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__(_error_text(self.source, self.problems))


def _error_text(source: str, problems: Sequence[Problem]) -> str:
    if len(problems) == 1 and not problems[0].where:
        return f"{source}: {problems[0].reason}"
    lines = [f"{source}: {len(problems)} problem(s):"]
    lines += [f"  {problem}" for problem in problems[:MAX_SHOWN]]
    if len(problems) > MAX_SHOWN:
        lines.append(f"  ... and {len(problems) - MAX_SHOWN} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class LesionBox:
    """A lesion box in the 1024 canvas frame, half-open: ``x1 <= x < x2``, ``y1 <= y < y2``."""

    label: str
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    @property
    def area(self) -> int:
        return self.width * self.height


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

    def label(self, name: str) -> int:
        for key, value in self.labels:
            if key == name:
                return value
        raise KeyError(f"{self.image_id}: no label {name!r} (labels: {', '.join(self.label_names)})")


@dataclass(frozen=True)
class Exclusion:
    """A record left out by ``validate(..., exclude=True)``, with every reason found for it."""

    image_id: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    """A cohort: its records in a fixed order and the names of the 0/1 labels every record carries."""

    cohort: str
    records: tuple[Record, ...]
    label_names: tuple[str, ...]

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
            (r.image_id, b.label, b.x1, b.y1, b.x2, b.y2, r.split, b.width, b.height, b.area)
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
        meta = {"cohort": self.cohort, "format": FORMAT_VERSION, "label_names": list(self.label_names)}
        meta_bytes = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
        records = _csv_bytes([*RECORD_COLUMNS, *self.label_names], (_record_row(r) for r in self.records))
        boxes = _csv_bytes(
            BOX_COLUMNS,
            ((r.image_id, b.label, b.x1, b.y1, b.x2, b.y2) for r in self.records for b in r.boxes),
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
        duplicates = _duplicate_issues(self.records)
        if duplicates:
            # boxes.csv is keyed by image id, so duplicates could not be told apart on loading
            raise ManifestError(f"{self.cohort}: cannot save to {folder}", _as_problems(self.records, duplicates))
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
        cohort, label_names = _read_meta(folder / META_JSON)
        boxes = _read_boxes(folder / BOXES_CSV)
        records = _read_records(folder / MANIFEST_CSV, label_names, boxes)
        return cls(cohort=cohort, records=records, label_names=label_names)


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


def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _read_meta(path: Path) -> tuple[str, tuple[str, ...]]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(path, f"not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ManifestError(path, f"expected an object with format {FORMAT_VERSION}")
    cohort, names = meta.get("cohort"), meta.get("label_names")
    if not isinstance(cohort, str) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ManifestError(path, "needs 'cohort' (a string) and 'label_names' (a list of strings)")
    return cohort, tuple(names)


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
        boxes[image_id].append(LesionBox(label, x1, y1, x2, y2))
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


def validate(
    manifest: Manifest,
    *,
    canvas: int = CANVAS,
    known_classes: Collection[str] | None = None,
    check_files: bool = True,
    check_readable: bool = False,
    exclude: bool = False,
    splits: Collection[str] = tuple(Split),
) -> tuple[Manifest, list[Exclusion]]:
    """Check every record; raise ManifestError naming each bad one, or with ``exclude`` drop and list them.

    ``check_readable`` decodes every image (slow on a whole cohort); it implies ``check_files``.
    """
    records = manifest.records
    issues = [
        *_split_name_issues(records, splits),
        *_duplicate_issues(records),
        *_patient_issues(records),
        *_label_issues(records),
        *_window_issues(records),
        *_box_issues(records, canvas, known_classes),
    ]
    if check_files or check_readable:
        issues += _file_issues(records, check_readable)
    if not issues:
        return manifest, []
    issues.sort(key=lambda issue: issue[0])  # stable: one record's reasons stay in check order
    if not exclude:
        raise ManifestError(manifest.cohort, _as_problems(records, issues))
    reasons: dict[int, list[str]] = defaultdict(list)
    for index, reason in issues:
        reasons[index].append(reason)
    exclusions = [Exclusion(records[i].image_id, "; ".join(texts)) for i, texts in reasons.items()]
    kept = manifest.with_records(r for i, r in enumerate(records) if i not in reasons)
    return kept, exclusions


def write_exclusions(path: str | Path, exclusions: Sequence[Exclusion]) -> Path:
    """Write the exclusion list (image_id, reason) next to the manifest it belongs to."""
    path = Path(path)
    atomic_write_bytes(path, _csv_bytes(("image_id", "reason"), ((e.image_id, e.reason) for e in exclusions)))
    return path


# Each check returns (record index, reason) pairs; a record may collect several.
Issue = tuple[int, str]


def _as_problems(records: Sequence[Record], issues: Iterable[Issue]) -> list[Problem]:
    return [Problem(f"record {i}", records[i].image_id, reason) for i, reason in issues]


def _split_name_issues(records: Sequence[Record], splits: Collection[str]) -> list[Issue]:
    known = ", ".join(splits)
    return [(i, f"unknown split {r.split!r} (known: {known})") for i, r in enumerate(records) if r.split not in splits]


def _duplicate_issues(records: Sequence[Record]) -> list[Issue]:
    where: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        where[record.image_id].append(i)
    return [
        (i, f"duplicate image id (records {', '.join(map(str, rows))})")
        for rows in where.values()
        if len(rows) > 1
        for i in rows
    ]


def _patient_issues(records: Sequence[Record]) -> list[Issue]:
    splits: dict[str, set[str]] = defaultdict(set)
    for record in records:
        splits[record.patient_id].add(record.split)
    return [
        (i, f"patient {r.patient_id} is in splits {sorted(splits[r.patient_id])}")
        for i, r in enumerate(records)
        if len(splits[r.patient_id]) > 1
    ]


def _label_issues(records: Sequence[Record]) -> list[Issue]:
    return [
        (i, f"label {name}={value!r} is not the integer 0 or 1")
        for i, r in enumerate(records)
        for name, value in r.labels
        if type(value) is not int or value not in (0, 1)
    ]


def _window_issues(records: Sequence[Record]) -> list[Issue]:
    return [
        (i, f"window {r.window[0]!r}..{r.window[1]!r} is not finite with low < high")
        for i, r in enumerate(records)
        if r.window is not None and not (math.isfinite(r.window[0]) and r.window[0] < r.window[1] < math.inf)
    ]


def _box_issues(records: Sequence[Record], canvas: int, known: Collection[str] | None) -> list[Issue]:
    issues = []
    for i, record in enumerate(records):
        for j, box in enumerate(record.boxes):
            text = f"box {j} ({box.label} {box.x1},{box.y1},{box.x2},{box.y2})"
            if box.x2 <= box.x1 or box.y2 <= box.y1:
                issues.append((i, f"{text} is zero-area or inverted"))
            if min(box.x1, box.y1) < 0 or max(box.x2, box.y2) > canvas:
                issues.append((i, f"{text} lies outside the {canvas} x {canvas} canvas"))
            if known is not None and box.label not in known:
                issues.append((i, f"{text} has an unknown class (known: {', '.join(sorted(known))})"))
    return issues


def _file_issues(records: Sequence[Record], check_readable: bool) -> list[Issue]:
    issues = []
    for i, record in enumerate(records):
        if not record.path.is_file():
            issues.append((i, f"file not found: {record.path}"))
        elif check_readable:
            try:
                read_image(record.path)
            except CanvasError as err:
                issues.append((i, f"unreadable: {err.reason}"))
    return issues
