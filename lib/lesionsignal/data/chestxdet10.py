"""ChestX-Det10 read into the common manifest: train/test JSON of lesion boxes, and the images.

The annotations come in two releases holding the same records in the same order: the first (2020-06-17) names each
image by its NIH file name (``00000091_005.png``, the patient id is the prefix), the current one by number
(``36200.png``, as in the image zips Deepwise distributes). Numeric names get their NIH names from a name map: the
first-release JSONs (matched record by record, after checking that both records hold the same syms and boxes) or a
CSV. Without one, each image is its own patient, and the manifest says so (``PatientIds.PER_IMAGE``).

Corners are inclusive in the source (its own evaluation code takes a width as x2 - x1 + 1) and become the project's
half-open ``Box``. The official split, which the paper used, puts 271 patients on both sides: it is kept and declared
(``SplitPolicy.OVERLAP_REPORTED``), or replaced on request by a seeded patient-disjoint re-split.

The JSON records ({file_name, syms, boxes}) are also the box format of the rendered demo cohort, so the record
reader (``read_det_pair``) and the class-label helpers serve ``demo_cohort.read_demo`` too.
"""

from __future__ import annotations

import enum
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lesionsignal.core.box import Box
from lesionsignal.data.manifest import (
    LesionBox,
    Manifest,
    ManifestError,
    PatientIds,
    Problem,
    Record,
    Split,
    SplitPolicy,
    load_json,
    repeats,
)
from lesionsignal.data.tables import locate_images, read_table, require_unique, sorted_manifest, where
from lesionsignal.data.validation import mixed_patients

CHESTXDET10_CLASSES = (
    "Atelectasis",
    "Calcification",
    "Consolidation",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Fracture",
    "Mass",
    "Nodule",
    "Pneumothorax",
)
LESION_CLASSES = ("Calcification", "Nodule", "Mass")  # the three small-lesion classes of protocol section 7
NIH_NAME = re.compile(r"(\d+)_\d+\.png")  # 00000091_005.png: patient 00000091, follow-up 5
NUMERIC_NAME = re.compile(r"\d+\.png")  # 36200.png: the current release's names
NAME_MAP_COLUMNS = ("file_name", "nih_name")  # a name-map CSV: the name in train/test.json -> the NIH file name


class BoxCorners(enum.StrEnum):
    """How a record's x2, y2 are meant."""

    INCLUSIVE = "inclusive"  # the last pixel inside the box: ChestX-Det10 as published
    HALF_OPEN = "half_open"  # the first pixel past it, as core.box.Box: what the demo generator writes

    def box(self, x1: int, y1: int, x2: int, y2: int) -> Box:
        end = 1 if self is BoxCorners.INCLUSIVE else 0
        return Box(x1, y1, x2 + end, y2 + end)


class DetSplit(enum.StrEnum):
    OFFICIAL = "official"  # train.json / test.json as published (the paper's); patients cross it, and it is reported
    PATIENT_DISJOINT = "patient_disjoint"  # seeded re-split by whole patients at the official test size


class NoPatientIdsWarning(UserWarning):
    """ChestX-Det10 read from numeric file names without a name map: no image has a patient id."""


def read_chestxdet10(
    train_json: str | Path,
    test_json: str | Path,
    image_dirs: Path | Sequence[Path],
    *,
    classes: Sequence[str] = LESION_CLASSES,
    cohort: str = "chestx-det10",
    corners: BoxCorners = BoxCorners.INCLUSIVE,
    name_map_jsons: tuple[Path, Path] | None = None,
    name_map_csv: Path | None = None,
    split: DetSplit = DetSplit.OFFICIAL,
    seed: int = 42,
) -> Manifest:
    """ChestX-Det10 with one 0/1 label per class in ``classes`` (the image has a box of it) and every box.

    Boxes of the other ChestX-Det10 classes stay on their records; ``Manifest.boxes_frame`` marks them with
    ``is_target`` False. Image ids are NIH file names when the JSONs carry them or a name map (first-release JSONs
    for train and test, or a CSV with ``NAME_MAP_COLUMNS``) gives them, and images are found under those names in
    ``image_dirs``; otherwise ids are the numeric names and each image is its own patient (with a warning).
    ``split`` keeps the official split (``SplitPolicy.OVERLAP_REPORTED``) or re-splits by patient with ``seed``.
    """
    classes = check_classes(classes)
    train_json, test_json = Path(train_json), Path(test_json)
    source = f"{train_json} / {test_json}"
    train, test = read_det_files(train_json, test_json, corners=corners)
    for path, entries in ((train_json, train), (test_json, test)):
        if not entries:
            raise ManifestError(path, "holds no records; ChestX-Det10's train and test files each list images")
    entries = [*train, *test]
    names = _image_names((train_json, test_json), (train, test), corners, name_map_jsons, name_map_csv)
    if split is DetSplit.PATIENT_DISJOINT and not names.nih:
        raise ManifestError(source, _NEEDS_PATIENTS)
    if not names.nih:
        warnings.warn(NoPatientIdsWarning(_no_patients_text(cohort, source)), stacklevel=2)
    # Without patient ids, each image stands for its own patient: its id is the image id.
    patients = [_patient_of(n) if names.nih else n for n in names.ids]
    splits = [e.split for e in entries]
    if split is DetSplit.PATIENT_DISJOINT:
        splits = patient_disjoint_split(patients, splits, seed)
    where = f"{source} (images by {'NIH' if names.mapped else 'their JSON'} file name)"
    paths = locate_images(names.ids, image_dirs, where)
    records = (
        Record(image_id, path, patient, image_split, "", class_labels(entry.boxes, classes), entry.boxes)
        for image_id, path, patient, image_split, entry in zip(names.ids, paths, patients, splits, entries, strict=True)
    )
    policy = SplitPolicy.OVERLAP_REPORTED if split is DetSplit.OFFICIAL else SplitPolicy.PATIENT_DISJOINT
    patient_ids = PatientIds.SOURCE if names.nih else PatientIds.PER_IMAGE
    return replace(sorted_manifest(cohort, records, classes), split_policy=policy, patient_ids=patient_ids)


_NEEDS_PATIENTS = (
    "split: patient_disjoint needs patient ids, but the file names are numeric and no name map was given; "
    "set name_map_jsons (the first-release JSONs) or name_map_csv, or keep split: official"
)


def _no_patients_text(cohort: str, source: str) -> str:
    return (
        f"{cohort}: {source} names images by number and no name map was given, so no image has a patient id: each "
        "image is its own patient, cross-validation cannot group a patient's images, and the official split's "
        "patient overlap cannot be seen. Give the first-release JSONs (name_map_jsons) or a name_map_csv."
    )


def patient_disjoint_split(patients: Sequence[str], splits: Sequence[str], seed: int) -> list[str]:
    """A patient-disjoint train / test split at the size of the given test split, as nearly as whole patients allow.

    A patient whose images are all on one side stays there. The patients on both sides move whole, in an order drawn
    by ``default_rng(seed)`` from their sorted ids: each joins test if test then still holds no more images than the
    given test split, else train. If test is then short, the smallest patient left in train (the first of them in
    that order) joins it when that brings test nearer the given size.
    """
    test = Split.TEST.value
    crossing = mixed_patients(patients, splits)
    sizes = Counter(patients)
    target = sum(s == test for s in splits)
    in_test = sum(s == test and p not in crossing for p, s in zip(patients, splits, strict=True))
    candidates = sorted(crossing)
    order = [candidates[int(i)] for i in np.random.default_rng(seed).permutation(len(candidates))]
    joined, left = set(), []
    for patient in order:
        if in_test + sizes[patient] <= target:
            joined.add(patient)
            in_test += sizes[patient]
        else:
            left.append(patient)
    if left:
        # Every patient left over was larger than the shortfall, so one more is the only way nearer.
        smallest = min(left, key=lambda p: sizes[p])
        if abs(in_test + sizes[smallest] - target) < target - in_test:
            joined.add(smallest)
    return [
        test if p in joined or (p not in crossing and s == test) else Split.TRAIN.value
        for p, s in zip(patients, splits, strict=True)
    ]


def patient_disjoint_manifest(manifest: Manifest, seed: int) -> Manifest:
    """The same images re-split by ``patient_disjoint_split``: a manifest of the official split (patients on both
    sides, ``SplitPolicy.OVERLAP_REPORTED``) becomes the one ``split: patient_disjoint`` would have read. Needs
    patient ids from the source (NIH names or a name map)."""
    if manifest.patient_ids is not PatientIds.SOURCE:
        raise ManifestError(manifest.cohort, _NEEDS_PATIENTS)
    records = manifest.records
    splits = patient_disjoint_split([r.patient_id for r in records], [r.split for r in records], seed)
    moved = manifest.with_records(replace(r, split=s) for r, s in zip(records, splits, strict=True))
    return replace(moved, split_policy=SplitPolicy.PATIENT_DISJOINT)


@dataclass(frozen=True)
class DetEntry:
    """One image's record in a ChestX-Det10-style JSON file."""

    file_name: str
    split: str
    where: str  # "train.json[12]": the record's place in its file, for messages
    boxes: tuple[LesionBox, ...]

    @property
    def syms(self) -> tuple[str, ...]:
        return tuple(b.label for b in self.boxes)


def read_det_files(train_json: Path, test_json: Path, *, corners: BoxCorners) -> tuple[list[DetEntry], list[DetEntry]]:
    """The records of both files, each in file order; a name listed more than once (anywhere) is an error."""
    train = _read_det_json(train_json, Split.TRAIN.value, corners)
    test = _read_det_json(test_json, Split.TEST.value, corners)
    entries = train + test
    listed = [
        Problem(entries[i].where, name, f"listed {len(rows)} times ({', '.join(entries[j].where for j in rows)})")
        for name, rows in repeats(e.file_name for e in entries).items()
        for i in rows
    ]
    if listed:
        raise ManifestError(f"{train_json} / {test_json}", listed)
    return train, test


def read_det_pair(train_json: Path, test_json: Path, *, corners: BoxCorners) -> dict[str, DetEntry]:
    """The records of both files by file name, in file order; a name listed more than once is an error."""
    train, test = read_det_files(train_json, test_json, corners=corners)
    return {entry.file_name: entry for entry in (*train, *test)}


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """``classes`` as a tuple, after checking they are distinct ChestX-Det10 classes."""
    unknown = [c for c in classes if c not in CHESTXDET10_CLASSES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct ChestX-Det10 classes {CHESTXDET10_CLASSES}, got {list(classes)}")
    return tuple(classes)


def class_labels(boxes: Sequence[LesionBox], classes: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """One 0/1 label per class: whether any box is of that class."""
    present = {box.label for box in boxes}
    return tuple((name, int(name in present)) for name in classes)


@dataclass(frozen=True)
class _Names:
    """The image id of each record, in record order."""

    ids: list[str]
    nih: bool  # the ids are NIH file names, so they carry patient ids
    mapped: bool  # the ids come from a name map


def _image_names(
    paths: tuple[Path, Path],
    files: tuple[list[DetEntry], list[DetEntry]],
    corners: BoxCorners,
    map_jsons: tuple[Path, Path] | None,
    map_csv: Path | None,
) -> _Names:
    """The image ids of the records of both files (train first), from a name map when one is given."""
    if map_jsons is not None and map_csv is not None:
        raise ValueError("give name_map_jsons or name_map_csv, not both")
    entries = [*files[0], *files[1]]
    if map_jsons is not None:
        mapped = read_det_files(Path(map_jsons[0]), Path(map_jsons[1]), corners=corners)
        ids = [
            name
            for ours, path, theirs, mapping in zip(files, paths, mapped, map_jsons, strict=True)
            for name in _match_by_order(ours, theirs, f"{path} / {mapping}")
        ]
        return _Names(ids, nih=True, mapped=True)
    if map_csv is not None:
        return _Names(_names_from_csv(entries, f"{paths[0]} / {paths[1]}", Path(map_csv)), nih=True, mapped=True)
    return _Names([e.file_name for e in entries], nih=_has_nih_names(entries, f"{paths[0]} / {paths[1]}"), mapped=False)


def _patient_of(nih_name: str) -> str:
    found = NIH_NAME.fullmatch(nih_name)
    if found is None:  # every caller has checked the scheme; this guards the invariant
        raise ValueError(f"{nih_name!r} is not an NIH file name")
    return found[1]


def _has_nih_names(entries: Sequence[DetEntry], source: str) -> bool:
    """Whether the records use NIH names (else numeric ones); one file pair must not mix the two schemes."""
    nih = [_is_nih(e.file_name) for e in entries]
    first = entries[0]
    scheme = "an NIH" if nih[0] else "a numeric"
    problems = [
        Problem(e.where, e.file_name, f"file name scheme differs from {first.where} ({first.file_name}, {scheme} name)")
        for e, is_nih in zip(entries, nih, strict=True)
        if is_nih is not None and is_nih != nih[0]
    ]
    neither = "file name is neither an NIH name (00000091_005.png) nor a numeric one (36200.png)"
    problems += [
        Problem(e.where, e.file_name, neither) for e, is_nih in zip(entries, nih, strict=True) if is_nih is None
    ]
    if problems:
        raise ManifestError(source, problems)
    return bool(nih[0])


def _is_nih(name: str) -> bool | None:
    if NIH_NAME.fullmatch(name):
        return True
    return False if NUMERIC_NAME.fullmatch(name) else None


def _match_by_order(entries: Sequence[DetEntry], mapped: Sequence[DetEntry], source: str) -> list[str]:
    """The name-map file's name of each record at the same place, after checking both hold the same syms and boxes."""
    if len(entries) != len(mapped):
        reason = f"{len(entries)} records but {len(mapped)} in the name map; it must be the first release of the file"
        raise ManifestError(source, reason)
    problems = [
        Problem(ours.where, ours.file_name, f"{difference} {theirs.where} ({theirs.file_name}) of the name map")
        for ours, theirs in zip(entries, mapped, strict=True)
        if (difference := _difference(ours, theirs))
    ]
    problems += [
        Problem(m.where, m.file_name, "the name map's file name is not an NIH name (00000091_005.png)")
        for m in mapped
        if not NIH_NAME.fullmatch(m.file_name)
    ]
    if problems:
        raise ManifestError(source, problems)
    return [m.file_name for m in mapped]


def _difference(ours: DetEntry, theirs: DetEntry) -> str:
    """How two records differ ('' when they do not): the words before the other record's place."""
    if ours.syms != theirs.syms:
        return f"syms {list(ours.syms)} differ from {list(theirs.syms)} in"
    if ours.boxes != theirs.boxes:
        ours_boxes = [b.box.as_tuple() for b in ours.boxes]
        theirs_boxes = [b.box.as_tuple() for b in theirs.boxes]
        return f"boxes {ours_boxes} differ from {theirs_boxes} in"
    return ""


def _names_from_csv(entries: Sequence[DetEntry], source: str, path: Path) -> list[str]:
    table = read_table(path, NAME_MAP_COLUMNS)
    require_unique(table, "file_name", path)
    require_unique(table, "nih_name", path)
    bad = [
        Problem(where(number), name, "nih_name is not an NIH file name (00000091_005.png)")
        for number, name in table["nih_name"].items()  # the table is indexed by the file's line numbers
        if not NIH_NAME.fullmatch(name)
    ]
    if bad:
        raise ManifestError(path, bad)
    mapping = dict(zip(table["file_name"], table["nih_name"], strict=True))
    missing = [
        Problem(e.where, e.file_name, f"not in the name map {path}") for e in entries if e.file_name not in mapping
    ]
    if missing:
        raise ManifestError(source, missing)
    return [mapping[e.file_name] for e in entries]


def _read_det_json(path: Path, split: str, corners: BoxCorners) -> list[DetEntry]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    items = load_json(path)
    if not isinstance(items, list):
        raise ManifestError(path, "expected a list of {file_name, syms, boxes} records")
    entries, problems = [], []
    for index, item in enumerate(items):
        where = f"{path.name}[{index}]"
        name = item.get("file_name", "") if isinstance(item, dict) else ""
        try:
            entries.append(_det_entry(item, split, where, corners))
        except ValueError as err:
            problems.append(Problem(where, str(name), str(err)))
    if problems:
        raise ManifestError(path, problems)
    return entries


def _det_entry(item: object, split: str, where: str, corners: BoxCorners) -> DetEntry:
    if not isinstance(item, dict) or not isinstance(item.get("file_name"), str):
        raise ValueError("expected an object with a string 'file_name'")
    syms, boxes = item.get("syms"), item.get("boxes")
    if not isinstance(syms, list) or not isinstance(boxes, list):
        raise ValueError("'syms' and 'boxes' must be lists")
    if len(syms) != len(boxes):
        raise ValueError(f"{len(syms)} syms but {len(boxes)} boxes")
    parsed = []
    for k, (sym, box) in enumerate(zip(syms, boxes, strict=True)):
        if sym not in CHESTXDET10_CLASSES:
            raise ValueError(f"syms[{k}] {sym!r} is not a ChestX-Det10 class {CHESTXDET10_CLASSES}")
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"boxes[{k}] {box!r} is not [x1, y1, x2, y2]")
        parsed.append(LesionBox(sym, corners.box(*(_corner(v, k) for v in box))))
    return DetEntry(item["file_name"], split, where, tuple(parsed))


def _corner(value: object, k: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"boxes[{k}] corner {value!r} is not a number")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"boxes[{k}] corner {value!r} is not a whole pixel")
    return int(value)
