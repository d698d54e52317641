"""MIMIC-CXR-JPG 2.x read into the common manifest, and the writer of its probe-training subsample manifest.

Frontal (AP/PA) images from the metadata CSV, U-Zero CheXpert labels per study, the official split, and an
optional subsample manifest that restricts the train split (drawn once by ``make_mimic_subsample``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from lesionsignal.core.files import atomic_write_bytes
from lesionsignal.data.manifest import Manifest, ManifestError, Problem, Record, Split
from lesionsignal.data.tables import line, read_table, require_unique, sorted_manifest

MIMIC_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_LABEL_COLUMNS = (("cardiomegaly", "Cardiomegaly"), ("edema", "Edema"), ("lung_lesion", "Lung Lesion"))
MIMIC_OFFICIAL_SPLITS = ("train", "validate", "test")
FRONTAL_VIEWS = ("AP", "PA")
# U-Zero: only a definite positive counts; uncertain (-1) and unmentioned (blank) are negative.
_U_ZERO = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": 0, "-1": 0, "": 0}


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
    meta = read_table(metadata_csv, MIMIC_METADATA_COLUMNS)
    require_unique(meta["dicom_id"].tolist(), metadata_csv, "dicom_id")
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
    return sorted_manifest(cohort, records, names)


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


def mimic_image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """Where MIMIC-CXR-JPG keeps an image: files/p<first two digits>/p<subject>/s<study>/<dicom>.jpg."""
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


class _MimicImage(NamedTuple):
    dicom: str
    subject: str
    study: str
    view: str
    split: str


def _mimic_images(path: Path, frontal: pd.DataFrame, validate_split: Split) -> list[_MimicImage]:
    """The frontal images with their official split (``validate`` renamed to ``validate_split``)."""
    table = read_table(path, MIMIC_SPLIT_COLUMNS)
    require_unique(table["dicom_id"].tolist(), path, "dicom_id")
    problems = [
        Problem(line(i), dicom, f"split {name!r} is not one of {MIMIC_OFFICIAL_SPLITS}")
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


def _mimic_labels(path: Path) -> dict[tuple[str, str], tuple[int, ...]]:
    columns = [column for _, column in MIMIC_LABEL_COLUMNS]
    table = read_table(path, ("subject_id", "study_id", *columns))
    keys = list(zip(table["subject_id"], table["study_id"], strict=True))
    require_unique([f"{subject}/{study}" for subject, study in keys], path, "subject_id/study_id")
    values = list(zip(*(table[column] for column in columns), strict=True))
    problems = [
        Problem(line(i), f"s{keys[i][1]}", f"column {column!r}: {value!r} is not 1.0, 0.0, -1.0 or blank")
        for i, row in enumerate(values)
        for column, value in zip(columns, row, strict=True)
        if value not in _U_ZERO
    ]
    if problems:
        raise ManifestError(path, problems)
    return {key: tuple(_U_ZERO[v] for v in row) for key, row in zip(keys, values, strict=True)}


def _read_subsample(path: Path) -> list[str]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: subsample manifest not found")
    if Path(path).suffix == ".parquet":
        table = pd.read_parquet(path, columns=["dicom_id"]).astype(str)
    else:
        table = read_table(path, ("dicom_id",))
    dicoms = table["dicom_id"].tolist()
    require_unique(dicoms, path, "dicom_id")
    return dicoms


def _apply_subsample(images: list[_MimicImage], path: Path) -> list[_MimicImage]:
    keep = _read_subsample(path)
    train = {i.dicom for i in images if i.split == Split.TRAIN.value}
    stray = [
        Problem(line(i), d, "not a frontal image of the official train split")
        for i, d in enumerate(keep)
        if d not in train
    ]
    if stray:
        raise ManifestError(path, stray)
    chosen = set(keep)
    return [i for i in images if i.split != Split.TRAIN.value or i.dicom in chosen]
