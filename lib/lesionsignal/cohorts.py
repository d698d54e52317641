"""Adapters that read the real cohorts into the common manifest (SPEC section 1), and cohort summaries.

Each adapter checks its own source format strictly and raises ManifestError naming the file and the rows. The
record-level checks every cohort shares (files on disk, splits, patients, boxes, label values) are
``manifest.validate``, run by the caller after reading.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from lesionsignal.manifest import DISEASES, LesionBox, Manifest, ManifestError, Problem, Record, Split
from lesionsignal.outputs import atomic_write_bytes

NIH_CSV_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",  # the header 'OriginalImage[Width,Height]' is two CSV columns
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NIH_NO_FINDING = "No Finding"
NIH_LUNG_LESION = ("Mass", "Nodule")  # the paper's text; the authors' code used ("Nodule",)

MIMIC_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_LABEL_COLUMNS = (("cardiomegaly", "Cardiomegaly"), ("edema", "Edema"), ("lung_lesion", "Lung Lesion"))
MIMIC_OFFICIAL_SPLITS = ("train", "validate", "test")
FRONTAL_VIEWS = ("AP", "PA")
# U-Zero: only a definite positive counts; uncertain (-1) and unmentioned (blank) are negative.
_U_ZERO = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": 0, "-1": 0, "": 0}

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
LESION_CLASSES = ("Calcification", "Nodule", "Mass")  # the three small-lesion classes of SPEC section 7
DEMO_COLUMNS = ("image_id", "patient_id", "split", "view", "cardiomegaly", "edema", "lung_lesion", "ctr")
_BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


# ---------------------------------------------------------------- shared readers


def _read_table(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    """A CSV as strings (blank cells stay ''), after checking that the required columns are there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [name for name in required if name not in table.columns]
    if missing:
        raise ManifestError(path, f"missing column(s) {missing}; found {list(table.columns)}")
    return table


def _line(index: int) -> str:
    return f"line {index + 2}"  # header is line 1, data starts at line 2


def _require_unique(values: Sequence[str], source: str | Path, what: str) -> None:
    rows: dict[str, list[int]] = defaultdict(list)
    for index, value in enumerate(values):
        rows[value].append(index)
    problems = [
        Problem(_line(i), value, f"duplicate {what} (lines {', '.join(str(j + 2) for j in where)})")
        for value, where in rows.items()
        if len(where) > 1
        for i in where
    ]
    if problems:
        raise ManifestError(source, problems)


def _locate_images(names: Sequence[str], folders: Path | Sequence[Path], source: str | Path) -> list[Path]:
    """The path of each named image in exactly one of the folders; a missing or ambiguous name is an error."""
    folders = [Path(folders)] if isinstance(folders, str | Path) else [Path(f) for f in folders]
    found: dict[str, list[Path]] = defaultdict(list)
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: image folder not found")
        with os.scandir(folder) as entries:
            for entry in entries:
                found[entry.name].append(Path(entry.path))
    problems = []
    for name in names:
        hits = found.get(name, [])
        if len(hits) != 1:
            where = ", ".join(str(p.parent) for p in hits) if hits else ", ".join(map(str, folders))
            reason = "found in several folders" if hits else "image not found in"
            problems.append(Problem("image", name, f"{reason}: {where}"))
    if problems:
        raise ManifestError(source, problems)
    return [found[name][0] for name in names]


def _binary(value: str, column: str) -> int:
    if value not in _BINARY:
        raise ValueError(f"column {column!r}: {value!r} is not 0 or 1")
    return _BINARY[value]


def _sorted_manifest(cohort: str, records: Iterable[Record], label_names: Sequence[str]) -> Manifest:
    # A canonical record order makes saved manifests and their digests independent of source row order.
    return Manifest(cohort, tuple(sorted(records, key=lambda r: r.image_id)), tuple(label_names))


# ---------------------------------------------------------------- splits


def grouped_split(strata: Sequence[str], groups: Sequence[str], *, test_fraction: float, seed: int) -> list[str]:
    """Patient-grouped, stratified train/test: one fold of ``StratifiedGroupKFold(round(1/test_fraction))``."""
    folds = round(1 / test_fraction) if 0 < test_fraction < 1 else 0
    if folds < 2 or not math.isclose(folds * test_fraction, 1.0):
        raise ValueError(f"test_fraction must be 1/k for an integer k >= 2 (0.5, 0.25, 0.2, ...), got {test_fraction}")
    _, codes = np.unique(np.asarray(strata, dtype=str), return_inverse=True)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    _, test_rows = next(splitter.split(np.zeros(len(codes)), codes, groups=np.asarray(groups, dtype=str)))
    split = [Split.TRAIN.value] * len(codes)
    for row in test_rows:
        split[row] = Split.TEST.value
    return split


def _read_id_list(path: Path) -> set[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split list not found")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _official_nih_split(
    image_ids: Sequence[str], patients: Sequence[str], lists: tuple[Path, Path], source: Path
) -> list[str]:
    train, test = (_read_id_list(Path(p)) for p in lists)
    split, problems = [], []
    for index, image_id in enumerate(image_ids):
        where = (Split.TRAIN.value,) * (image_id in train) + (Split.TEST.value,) * (image_id in test)
        if len(where) != 1:
            problems.append(Problem(_line(index), image_id, "in both split lists" if where else "in neither list"))
        split.append(where[0] if where else "")
    if problems:
        raise ManifestError(f"{source} with {lists[0].name} / {lists[1].name}", problems)
    by_patient: dict[str, set[str]] = defaultdict(set)
    for patient, name in zip(patients, split, strict=True):
        by_patient[patient].add(name)
    leaks = [
        Problem(_line(i), image_ids[i], f"patient {patients[i]} has images in both official lists")
        for i in range(len(image_ids))
        if len(by_patient[patients[i]]) > 1
    ]
    if leaks:
        raise ManifestError(f"{lists[0]} / {lists[1]} are not patient-disjoint", leaks)
    return split


# ---------------------------------------------------------------- NIH ChestX-ray14


def _nih_labels(findings: str, lung_lesion_from: Sequence[str]) -> tuple[int, int, int]:
    names = findings.split("|")
    unknown = [name for name in names if name not in NIH_FINDINGS and name != NIH_NO_FINDING]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown} in {findings!r}")
    if NIH_NO_FINDING in names and len(names) > 1:
        raise ValueError(f"{NIH_NO_FINDING!r} together with findings in {findings!r}")
    lesion = any(name in names for name in lung_lesion_from)
    return int("Cardiomegaly" in names), int("Edema" in names), int(lesion)


def read_nih(
    csv: str | Path,
    image_dirs: Sequence[Path],
    *,
    lung_lesion_from: Sequence[str] = NIH_LUNG_LESION,
    split_lists: tuple[Path, Path] | None = None,
    test_fraction: float = 0.2,
    seed: int = 42,
    cohort: str = "nih",
) -> Manifest:
    """NIH ChestX-ray14 from Data_Entry_2017_v2020.csv; images looked up by name in ``image_dirs``.

    Split: the official (train_val_list.txt, test_list.txt) when given, else ``grouped_split`` by patient,
    stratified on the label combination. lung_lesion = any finding in ``lung_lesion_from``.
    """
    csv = Path(csv)
    bad = [name for name in lung_lesion_from if name not in NIH_FINDINGS]
    if bad or not lung_lesion_from:
        raise ValueError(f"lung_lesion_from must name NIH findings {NIH_FINDINGS}, got {list(lung_lesion_from)}")
    table = _read_table(csv, ("Image Index", "Finding Labels", "Patient ID", "View Position"))
    image_ids = table["Image Index"].tolist()
    _require_unique(image_ids, csv, "Image Index")
    labels, patients, problems = [], [], []
    for index, (image_id, findings, patient) in enumerate(
        zip(image_ids, table["Finding Labels"], table["Patient ID"], strict=True)
    ):
        try:
            labels.append(_nih_labels(findings, lung_lesion_from))
            patients.append(f"{int(patient):08d}")  # the same form as the file-name prefix (ChestX-Det10)
        except ValueError as err:
            problems.append(Problem(_line(index), image_id, str(err)))
    if problems:
        raise ManifestError(csv, problems)
    paths = _locate_images(image_ids, image_dirs, csv)
    if split_lists is not None:
        split = _official_nih_split(image_ids, patients, (Path(split_lists[0]), Path(split_lists[1])), csv)
    else:
        strata = ["".join(map(str, combo)) for combo in labels]
        split = grouped_split(strata, patients, test_fraction=test_fraction, seed=seed)
    records = (
        Record(image_id, path, patient, name, view, tuple(zip(DISEASES, combo, strict=True)))
        for image_id, path, patient, name, view, combo in zip(
            image_ids, paths, patients, split, table["View Position"], labels, strict=True
        )
    )
    return _sorted_manifest(cohort, records, DISEASES)


# ---------------------------------------------------------------- MIMIC-CXR-JPG


def mimic_image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


def _mimic_labels(path: Path) -> dict[tuple[str, str], tuple[int, ...]]:
    columns = [column for _, column in MIMIC_LABEL_COLUMNS]
    table = _read_table(path, ("subject_id", "study_id", *columns))
    keys = list(zip(table["subject_id"], table["study_id"], strict=True))
    _require_unique([f"{subject}/{study}" for subject, study in keys], path, "subject_id/study_id")
    values = list(zip(*(table[column] for column in columns), strict=True))
    problems = [
        Problem(_line(i), f"s{keys[i][1]}", f"column {column!r}: {value!r} is not 1.0, 0.0, -1.0 or blank")
        for i, row in enumerate(values)
        for column, value in zip(columns, row, strict=True)
        if value not in _U_ZERO
    ]
    if problems:
        raise ManifestError(path, problems)
    return {key: tuple(_U_ZERO[v] for v in row) for key, row in zip(keys, values, strict=True)}


class _MimicImage(NamedTuple):
    dicom: str
    subject: str
    study: str
    view: str
    split: str


def _mimic_images(path: Path, frontal: pd.DataFrame, validate_split: Split) -> list[_MimicImage]:
    """The frontal images with their official split (``validate`` renamed to ``validate_split``)."""
    table = _read_table(path, MIMIC_SPLIT_COLUMNS)
    _require_unique(table["dicom_id"].tolist(), path, "dicom_id")
    problems = [
        Problem(_line(i), dicom, f"split {name!r} is not one of {MIMIC_OFFICIAL_SPLITS}")
        for i, (dicom, name) in enumerate(zip(table["dicom_id"], table["split"], strict=True))
        if name not in MIMIC_OFFICIAL_SPLITS
    ]
    if problems:
        raise ManifestError(path, problems)
    official = {
        dicom: (subject, study, name)
        for dicom, subject, study, name in zip(
            table["dicom_id"], table["subject_id"], table["study_id"], table["split"], strict=True
        )
    }
    images = []
    columns = (frontal[c] for c in ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    for dicom, subject, study, view in zip(*columns, strict=True):
        entry = official.get(dicom)
        if entry is None:
            problems.append(Problem("metadata", dicom, "frontal image missing from the split file"))
        elif entry[:2] != (subject, study):
            problems.append(Problem("metadata", dicom, f"subject/study {entry[:2]} != metadata {(subject, study)}"))
        else:
            name = validate_split.value if entry[2] == "validate" else entry[2]
            images.append(_MimicImage(dicom, subject, study, view, name))
    if problems:
        raise ManifestError(path, problems)
    return images


def _read_subsample(path: Path) -> list[str]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: subsample manifest not found")
    if Path(path).suffix == ".parquet":
        table = pd.read_parquet(path, columns=["dicom_id"]).astype(str)
    else:
        table = _read_table(path, ("dicom_id",))
    dicoms = table["dicom_id"].tolist()
    _require_unique(dicoms, path, "dicom_id")
    return dicoms


def read_mimic(
    root: str | Path,
    *,
    metadata_csv: str | Path,
    chexpert_csv: str | Path,
    split_csv: str | Path,
    subsample_manifest: str | Path | None = None,
    validate_split: Split = Split.TRAIN,
    cohort: str = "mimic",
) -> Manifest:
    """MIMIC-CXR-JPG 2.x frontal (AP/PA) images with U-Zero CheXpert labels and the official split.

    The official "validate" split becomes ``validate_split``: TRAIN (default: more rows for probe training;
    probes choose C by cross-validation, so no separate validation set is needed) or VALIDATE (kept apart).
    ``subsample_manifest`` (CSV or parquet with a dicom_id column) restricts the train split to its images.
    """
    root, metadata_csv = Path(root), Path(metadata_csv)
    if validate_split not in (Split.TRAIN, Split.VALIDATE):
        raise ValueError(f"validate_split must be Split.TRAIN or Split.VALIDATE, got {validate_split!r}")
    meta = _read_table(metadata_csv, MIMIC_METADATA_COLUMNS)
    _require_unique(meta["dicom_id"].tolist(), metadata_csv, "dicom_id")
    frontal = meta[meta["ViewPosition"].isin(FRONTAL_VIEWS)]
    images = _mimic_images(Path(split_csv), frontal, validate_split)
    labels = _mimic_labels(Path(chexpert_csv))
    unlabelled = [
        Problem("metadata", i.dicom, f"study s{i.study} has no CheXpert row")
        for i in images
        if (i.subject, i.study) not in labels
    ]
    if unlabelled:
        raise ManifestError(chexpert_csv, unlabelled)
    if subsample_manifest is not None:
        images = _apply_subsample(images, Path(subsample_manifest))
    names = [name for name, _ in MIMIC_LABEL_COLUMNS]
    records = (
        Record(
            f"{i.dicom}.jpg",
            mimic_image_path(root, i.subject, i.study, i.dicom),
            i.subject,
            i.split,
            i.view,
            tuple(zip(names, labels[i.subject, i.study], strict=True)),
        )
        for i in images
    )
    return _sorted_manifest(cohort, records, names)


def _apply_subsample(images: list[_MimicImage], path: Path) -> list[_MimicImage]:
    keep = _read_subsample(path)
    train = {i.dicom for i in images if i.split == Split.TRAIN.value}
    stray = [
        Problem(_line(i), d, "not a frontal image of the official train split")
        for i, d in enumerate(keep)
        if d not in train
    ]
    if stray:
        raise ManifestError(path, stray)
    chosen = set(keep)
    return [i for i in images if i.split != Split.TRAIN.value or i.dicom in chosen]


def make_mimic_subsample(
    manifest: Manifest, n: int, seed: int, *, out: str | Path, stratify: str = "lung_lesion"
) -> Path:
    """Write a subsample of the train split (dicom_id, subject_id): whole patients, stratified on ``stratify``.

    Patients are taken in a seeded random order while they fit the positive and negative image budgets
    (n times the train prevalence), so the result has n images, or slightly fewer when the last patients
    that would fit are all too large; it never has more.
    """
    train = [r for r in manifest.records if r.split == Split.TRAIN.value]
    if not 0 < n <= len(train):
        raise ValueError(f"n must be in 1..{len(train)} (train images of {manifest.cohort}), got {n}")
    if stratify not in manifest.label_names:
        raise ValueError(f"stratify {stratify!r} is not a label of {manifest.cohort} {manifest.label_names}")
    per_patient: dict[str, list[Record]] = defaultdict(list)
    for record in train:
        per_patient[record.patient_id].append(record)
    positives = sum(r.label(stratify) for r in train)
    budget = np.array([round(n * positives / len(train)), 0])
    budget[1] = n - budget[0]
    order = np.random.default_rng(seed).permutation(sorted(per_patient))
    chosen: list[Record] = []
    for patient in order:
        images = per_patient[str(patient)]
        need = np.array([sum(r.label(stratify) for r in images), 0])
        need[1] = len(images) - need[0]
        if np.all(need <= budget):
            budget -= need
            chosen.extend(images)
    table = pd.DataFrame(
        sorted((r.image_id.removesuffix(".jpg"), r.patient_id) for r in chosen), columns=["dicom_id", "subject_id"]
    )
    out = Path(out)
    atomic_write_bytes(out, table.to_csv(index=False, lineterminator="\n").encode())
    return out


# ---------------------------------------------------------------- institutional CSV cohorts


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
    table = _read_table(csv, required)
    records, problems = [], []
    for index, row in enumerate(table.to_dict("records")):
        relative = row[cols.path]
        try:
            labels = tuple((name, _binary(row[column], column)) for name, column in cols.labels)
            window = _window_cells(row, window_columns) if window_columns else None
            if not relative or not row[cols.patient_id]:
                raise ValueError("path and patient id must not be blank")
        except ValueError as err:
            problems.append(Problem(_line(index), Path(relative).name, str(err)))
            continue
        split = split_map.get(row[cols.split], row[cols.split]) if split_map else row[cols.split]
        view = row[cols.view] if cols.view else ""
        path = root / relative
        records.append(Record(path.name, path, row[cols.patient_id], split, view, labels, window=window))
    if problems:
        raise ManifestError(csv, problems)
    return _sorted_manifest(cohort, records, [name for name, _ in cols.labels])


def _window_cells(row: Mapping[str, str], columns: tuple[str, str]) -> tuple[float, float] | None:
    low, high = (row[c] for c in columns)
    if low == "" and high == "":
        return None
    try:
        window = float(low), float(high)
    except ValueError:
        raise ValueError(f"window columns {list(columns)}: {low!r}, {high!r} are not numbers") from None
    if not (math.isfinite(window[0]) and math.isfinite(window[1]) and window[0] < window[1]):
        raise ValueError(f"window columns {list(columns)}: need finite min < max, got {low!r}, {high!r}")
    return window


# ---------------------------------------------------------------- ChestX-Det10 (and the demo cohort's boxes)


@dataclass(frozen=True)
class _DetEntry:
    file_name: str
    split: str
    where: str  # "train.json[12]": the record's place in its file, for messages
    boxes: tuple[LesionBox, ...]


def _corner(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"box corner {value!r} is not a number")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"box corner {value!r} is not a whole pixel")
    return int(value)


def _det_entry(item: object, split: str, where: str) -> _DetEntry:
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
        parsed.append(LesionBox(sym, *(_corner(v) for v in box)))
    return _DetEntry(item["file_name"], split, where, tuple(parsed))


def _read_det_json(path: Path, split: str) -> list[_DetEntry]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(path, f"not valid JSON ({err})") from None
    if not isinstance(items, list):
        raise ManifestError(path, "expected a list of {file_name, syms, boxes} records")
    entries, problems = [], []
    for index, item in enumerate(items):
        where = f"{path.name}[{index}]"
        name = item.get("file_name", "") if isinstance(item, dict) else ""
        try:
            entries.append(_det_entry(item, split, where))
        except ValueError as err:
            problems.append(Problem(where, str(name), str(err)))
    if problems:
        raise ManifestError(path, problems)
    return entries


def _read_det_pair(train_json: Path, test_json: Path) -> dict[str, _DetEntry]:
    entries = _read_det_json(train_json, Split.TRAIN.value) + _read_det_json(test_json, Split.TEST.value)
    by_name: dict[str, list[_DetEntry]] = defaultdict(list)
    for entry in entries:
        by_name[entry.file_name].append(entry)
    repeats = [
        Problem(e.where, name, f"listed {len(group)} times ({', '.join(x.where for x in group)})")
        for name, group in by_name.items()
        if len(group) > 1
        for e in group
    ]
    if repeats:
        raise ManifestError(f"{train_json} / {test_json}", repeats)
    return {name: group[0] for name, group in by_name.items()}


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    unknown = [c for c in classes if c not in CHESTXDET10_CLASSES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct ChestX-Det10 classes {CHESTXDET10_CLASSES}, got {list(classes)}")
    return tuple(classes)


def _class_labels(boxes: Sequence[LesionBox], classes: Sequence[str]) -> tuple[tuple[str, int], ...]:
    present = {box.label for box in boxes}
    return tuple((name, int(name in present)) for name in classes)


def read_chestxdet10(
    train_json: str | Path,
    test_json: str | Path,
    image_dir: Path | Sequence[Path],
    *,
    classes: Sequence[str] = LESION_CLASSES,
    cohort: str = "chestx-det10",
) -> Manifest:
    """ChestX-Det10 with one 0/1 label per class in ``classes`` (the image has a box of it) and every box.

    Boxes of the other ChestX-Det10 classes stay on their records; ``Manifest.boxes_frame`` marks them with
    ``is_target`` False. Patient id is the NIH file-name prefix before '_'.
    """
    classes = _check_classes(classes)
    entries = _read_det_pair(Path(train_json), Path(test_json))
    names = sorted(entries)
    no_patient = [
        Problem(entries[n].where, n, "file name has no NIH patient prefix ('_')") for n in names if "_" not in n
    ]
    if no_patient:
        raise ManifestError(f"{train_json} / {test_json}", no_patient)
    paths = _locate_images(names, image_dir, f"{train_json} / {test_json}")
    records = (
        Record(
            name,
            path,
            name.split("_", 1)[0],
            entries[name].split,
            "",
            _class_labels(entries[name].boxes, classes),
            entries[name].boxes,
        )
        for name, path in zip(names, paths, strict=True)
    )
    return _sorted_manifest(cohort, records, classes)


# ---------------------------------------------------------------- demo cohort and real films


def read_demo(folder: str | Path, *, classes: Sequence[str] = LESION_CLASSES, cohort: str = "demo") -> Manifest:
    """The rendered demo cohort: labels.csv, images/{image_id}.png, and ChestX-Det10-style train/test JSON.

    Labels: the three diseases from labels.csv, then one per lesion class in ``classes`` (from the boxes).
    The ``ctr`` column is required but not carried into the manifest.
    """
    folder = Path(folder)
    classes = _check_classes(classes)
    table = _read_table(folder / "labels.csv", DEMO_COLUMNS)
    if tuple(table.columns) != DEMO_COLUMNS:
        raise ManifestError(folder / "labels.csv", f"columns {list(table.columns)} != {list(DEMO_COLUMNS)}")
    _require_unique(table["image_id"].tolist(), folder / "labels.csv", "image_id")
    entries = _read_det_pair(folder / "train.json", folder / "test.json")
    records, problems = [], []
    for index, row in enumerate(table.to_dict("records")):
        image_id = row["image_id"]
        entry = entries.pop(image_id, None)
        try:
            diseases = tuple((name, _binary(row[name], name)) for name in DISEASES)
            if entry is not None and entry.split != row["split"]:
                raise ValueError(f"split {row['split']!r} but listed in {entry.where}")
        except ValueError as err:
            problems.append(Problem(_line(index), image_id, str(err)))
            continue
        boxes = entry.boxes if entry else ()
        name = image_id if Path(image_id).suffix else f"{image_id}.png"
        path = folder / "images" / name
        labels = diseases + _class_labels(boxes, classes)
        records.append(Record(path.name, path, row["patient_id"], row["split"], row["view"], labels, boxes))
    problems += [Problem(e.where, name, "not in labels.csv") for name, e in entries.items()]
    if problems:
        raise ManifestError(folder, problems)
    return _sorted_manifest(cohort, records, (*DISEASES, *classes))


def read_real_films(films: Sequence[tuple[str, str | Path, str, str]], *, cohort: str = "real_films") -> Manifest:
    """Real films (film id, path, group, label) as a test-only manifest; each film is its own patient.

    ``label`` is a word ("normal", "pneumonia", "unknown"): each distinct word becomes a 0/1 label column
    (one-hot), so nothing is lost and the labels stay binary. ``group`` goes to ``Record.group``.
    """
    words = sorted({str(label) for *_, label in films})
    records = (
        Record(
            Path(path).name,
            Path(path),
            film_id,
            Split.TEST.value,
            "",
            tuple((word, int(word == str(label))) for word in words),
            group=group,
        )
        for film_id, path, group, label in films
    )
    return _sorted_manifest(cohort, records, words)


# ---------------------------------------------------------------- summaries


def _split_order(names: Iterable[str]) -> list[str]:
    known = [s.value for s in Split]
    present = set(names)
    return [s for s in known if s in present] + sorted(present - set(known))


def describe(manifest: Manifest) -> pd.DataFrame:
    """Per split (and "all") and label: images, patients, positives and prevalence."""
    frame = manifest.frame()
    parts = [(name, frame[frame["split"] == name]) for name in _split_order(frame["split"])]
    rows = [
        {
            "split": split,
            "label": label,
            "images": len(part),
            "patients": part["patient_id"].nunique(),
            "positives": int(part[label].sum()),
            "prevalence": float(part[label].mean()) if len(part) else math.nan,
        }
        for split, part in [*parts, ("all", frame)]
        for label in manifest.label_names
    ]
    return pd.DataFrame(rows, columns=["split", "label", "images", "patients", "positives", "prevalence"])


def box_size_summary(manifest: Manifest) -> pd.DataFrame:
    """Per split (and "all") and box class: boxes, images, median / quartile area and median side in px."""
    boxes = manifest.boxes_frame()
    boxes["side"] = np.sqrt(boxes["area"].astype(float))
    classes = [c for c in manifest.label_names if c in set(boxes["label"])]
    classes += sorted(set(boxes["label"]) - set(classes))
    parts = [(name, boxes[boxes["split"] == name]) for name in _split_order(boxes["split"])]
    rows = []
    for split, part in [*parts, ("all", boxes)]:
        for label in classes:
            chosen = part[part["label"] == label]
            if chosen.empty:
                continue
            q1, median, q3 = np.percentile(chosen["area"], [25, 50, 75])
            rows.append(
                {
                    "split": split,
                    "label": label,
                    "is_target": label in manifest.label_names,
                    "boxes": len(chosen),
                    "images": chosen["image_id"].nunique(),
                    "area_median": float(median),
                    "area_q1": float(q1),
                    "area_q3": float(q3),
                    "area_iqr": float(q3 - q1),
                    "side_median": float(chosen["side"].median()),
                    "width_median": float(chosen["width"].median()),
                    "height_median": float(chosen["height"].median()),
                }
            )
    columns = ["split", "label", "is_target", "boxes", "images", "area_median", "area_q1", "area_q3"]
    columns += ["area_iqr", "side_median", "width_median", "height_median"]
    return pd.DataFrame(rows, columns=columns)
