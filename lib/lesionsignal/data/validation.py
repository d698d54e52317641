"""Record-level checks every cohort shares (protocol section 1), and the exclusion list they produce.

``validate`` checks split names, image ids, patient-disjoint splits, label values, 16-bit windows, boxes and
(optionally) the image files; it either raises one ManifestError naming every bad record or, with ``exclude``,
drops the bad records and lists why. A manifest whose ``split_policy`` declares a published split that crosses
patients (ChestX-Det10's official split) is not held to patient-disjoint splits; ``split_overlap`` in
``data.summary`` reports that overlap instead.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lesionsignal.core.canvas import CanvasError, read_image
from lesionsignal.core.files import atomic_write_bytes
from lesionsignal.data.manifest import (
    Issue,
    Manifest,
    ManifestError,
    Record,
    Split,
    SplitPolicy,
    csv_bytes,
    duplicate_issues,
    issue_problems,
)

CANVAS = 1024


@dataclass(frozen=True)
class Exclusion:
    """A record left out by ``validate(..., exclude=True)``, with every reason found for it."""

    image_id: str
    reason: str


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
        *duplicate_issues(records),
        *(_patient_issues(records) if manifest.split_policy is SplitPolicy.PATIENT_DISJOINT else []),
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
        raise ManifestError(manifest.cohort, issue_problems(records, issues))
    reasons: dict[int, list[str]] = defaultdict(list)
    for index, reason in issues:
        reasons[index].append(reason)
    exclusions = [Exclusion(records[i].image_id, "; ".join(texts)) for i, texts in reasons.items()]
    kept = manifest.with_records(r for i, r in enumerate(records) if i not in reasons)
    return kept, exclusions


def write_exclusions(path: str | Path, exclusions: Sequence[Exclusion]) -> Path:
    """Write the exclusion list (image_id, reason) next to the manifest it belongs to."""
    path = Path(path)
    atomic_write_bytes(path, csv_bytes(("image_id", "reason"), ((e.image_id, e.reason) for e in exclusions)))
    return path


def mixed_patients(patients: Iterable[str], splits: Iterable[str]) -> dict[str, list[str]]:
    """Each patient whose images lie in more than one split, with those splits sorted."""
    where: dict[str, set[str]] = defaultdict(set)
    for patient, split in zip(patients, splits, strict=True):
        where[patient].add(split)
    return {patient: sorted(names) for patient, names in where.items() if len(names) > 1}


def window_is_valid(low: float, high: float) -> bool:
    return math.isfinite(low) and math.isfinite(high) and low < high


def _split_name_issues(records: Sequence[Record], splits: Collection[str]) -> list[Issue]:
    known = ", ".join(splits)
    return [(i, f"unknown split {r.split!r} (known: {known})") for i, r in enumerate(records) if r.split not in splits]


def _patient_issues(records: Sequence[Record]) -> list[Issue]:
    mixed = mixed_patients((r.patient_id for r in records), (r.split for r in records))
    return [
        (i, f"patient {r.patient_id} is in splits {mixed[r.patient_id]}")
        for i, r in enumerate(records)
        if r.patient_id in mixed
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
        if r.window is not None and not window_is_valid(*r.window)
    ]


def _box_issues(records: Sequence[Record], canvas: int, known: Collection[str] | None) -> list[Issue]:
    issues = []
    for i, record in enumerate(records):
        for j, box in enumerate(record.boxes):
            text = f"box {j} ({box.label} {','.join(map(str, box.box.as_tuple()))})"
            if box.box.is_empty:
                issues.append((i, f"{text} is zero-area or inverted"))
            if not box.box.inside(canvas):
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
