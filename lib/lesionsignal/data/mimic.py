"""MIMIC-CXR-JPG 2.x read into the common manifest, and the writer of its probe-training subsample manifest.

Frontal (AP/PA) images from the metadata CSV, U-Zero CheXpert labels per study, the official split, and an
optional subsample manifest that restricts the train split (drawn once by ``make_mimic_subsample``). An image
whose study has no CheXpert row is an error naming it, or, when asked, an exclusion with its reason.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from lesionsignal.core.files import atomic_write_bytes
from lesionsignal.data.manifest import Manifest, ManifestError, Problem, Record, Split
from lesionsignal.data.tables import (
    FRONTAL_VIEWS,
    LineProblem,
    duplicates,
    one_of,
    parse_column,
    raise_problems,
    read_table,
    require_unique,
    sorted_manifest,
    where,
    whole_number,
)
from lesionsignal.data.validation import Exclusion

MIMIC_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_LABEL_COLUMNS = (("cardiomegaly", "Cardiomegaly"), ("edema", "Edema"), ("lung_lesion", "Lung Lesion"))
MIMIC_OFFICIAL_SPLITS = ("train", "validate", "test")
# U-Zero: only a definite positive counts; uncertain (-1) and unmentioned (blank) are negative.
_U_ZERO = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": 0, "-1": 0, "": 0}
_Labels = dict[tuple[str, str], tuple[int, ...]]  # (subject_id, study_id) -> the 0/1 labels
_UNLABELLED_ADVICE = (
    "Set exclude_invalid: true for this cohort to leave these images out (they are listed with their reason in "
    "exclusions.csv beside the manifest), or add their studies' rows. The published release 2.0.0 has CheXpert "
    "rows for 227,827 of its 227,835 studies."
)


def read_mimic(
    root: str | Path,
    *,
    metadata_csv: str | Path,
    chexpert_csv: str | Path,
    split_csv: str | Path,
    subsample_manifest: str | Path | None = None,
    validate_split: Split = Split.TRAIN,
    exclude_unlabelled: bool = False,
    cohort: str = "mimic",
) -> tuple[Manifest, list[Exclusion]]:
    """MIMIC-CXR-JPG 2.x frontal (AP/PA) images with U-Zero CheXpert labels and the official split.

    The official "validate" split becomes ``validate_split``: TRAIN (default: more rows for probe training;
    probes choose C by cross-validation, so no separate validation set is needed) or VALIDATE (kept apart).
    ``subsample_manifest`` (CSV or parquet with a dicom_id column) restricts the train split to its images.
    An image whose study has no CheXpert row is an error, or with ``exclude_unlabelled`` one of the returned
    exclusions; only the images the cohort keeps (after the subsample) are checked.
    """
    root, metadata_csv, chexpert_csv = Path(root), Path(metadata_csv), Path(chexpert_csv)
    if validate_split not in (Split.TRAIN, Split.VALIDATE):
        raise ValueError(f"validate_split must be Split.TRAIN or Split.VALIDATE, got {validate_split!r}")
    frontal = _frontal_metadata(metadata_csv)
    images = _mimic_images(Path(split_csv), frontal, validate_split, metadata_csv)
    if subsample_manifest is not None:
        images = _apply_subsample(images, Path(subsample_manifest))
    labels = _mimic_labels(chexpert_csv)
    images, exclusions = _labelled(images, labels, metadata_csv, chexpert_csv, exclude=exclude_unlabelled)
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
    return sorted_manifest(cohort, records, names), exclusions


def _labelled(
    images: list[_MimicImage], labels: _Labels, metadata: Path, chexpert: Path, *, exclude: bool
) -> tuple[list[_MimicImage], list[Exclusion]]:
    """The images whose study has a CheXpert row; the others raise, or with ``exclude`` become exclusions."""
    unlabelled = [i for i in images if (i.subject, i.study) not in labels]
    if not unlabelled:
        return images, []
    reasons = [f"study {i.study} (subject {i.subject}) has no row in {chexpert.name}" for i in unlabelled]
    if not exclude:
        pairs = zip(unlabelled, reasons, strict=True)
        problems = [Problem(f"{metadata.name} {where(i.line)}", i.dicom, reason) for i, reason in pairs]
        raise ManifestError(chexpert, problems, advice=_UNLABELLED_ADVICE)
    exclusions = [Exclusion(f"{i.dicom}.jpg", reason) for i, reason in zip(unlabelled, reasons, strict=True)]
    return [i for i in images if (i.subject, i.study) in labels], exclusions


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
    line: int  # in the metadata CSV


def _frontal_metadata(path: Path) -> pd.DataFrame:
    """The metadata rows of frontal images, indexed by their lines; ids checked on every row."""
    meta = read_table(path, MIMIC_METADATA_COLUMNS)
    dicoms = meta["dicom_id"].tolist()
    found = duplicates(meta, ["dicom_id"], dicoms)
    for column in ("subject_id", "study_id"):
        found += parse_column(meta, column, whole_number, dicoms)[1]
    raise_problems(path, found)
    return meta[meta["ViewPosition"].isin(FRONTAL_VIEWS)]


def _mimic_images(path: Path, frontal: pd.DataFrame, validate_split: Split, metadata: Path) -> list[_MimicImage]:
    """The frontal images with their official split (``validate`` renamed to ``validate_split``)."""
    table = read_table(path, MIMIC_SPLIT_COLUMNS)
    dicoms = table["dicom_id"].tolist()
    found = duplicates(table, ["dicom_id"], dicoms) + parse_column(table, "split", _official_split, dicoms)[1]
    raise_problems(path, found)
    official = {
        dicom: (subject, study, name)
        for dicom, subject, study, name in zip(
            dicoms, table["subject_id"].tolist(), table["study_id"].tolist(), table["split"].tolist(), strict=True
        )
    }
    images, found = [], []
    columns = [frontal[c].tolist() for c in ("dicom_id", "subject_id", "study_id", "ViewPosition")]
    for line, dicom, subject, study, view in zip(frontal.index.tolist(), *columns, strict=True):
        entry = official.get(dicom)
        if entry is None:
            found.append(LineProblem(line, Problem(where(line), dicom, f"column 'dicom_id': not in {path.name}")))
        elif entry[:2] != (subject, study):
            reason = f"columns 'subject_id', 'study_id': {subject}, {study} but {path.name} says {entry[0]}, {entry[1]}"
            found.append(LineProblem(line, Problem(where(line), dicom, reason)))
        else:
            name = validate_split.value if entry[2] == "validate" else entry[2]
            images.append(_MimicImage(dicom, subject, study, view, name, line))
    raise_problems(metadata, found)
    return images


def _official_split(text: str) -> str:
    return one_of(text, MIMIC_OFFICIAL_SPLITS, "official splits")


def _mimic_labels(path: Path) -> _Labels:
    columns = [column for _, column in MIMIC_LABEL_COLUMNS]
    table = read_table(path, ("subject_id", "study_id", *columns))
    studies = [f"s{study}" for study in table["study_id"].tolist()]
    found = duplicates(table, ["subject_id", "study_id"], studies)
    values = []
    for column in columns:
        parsed, bad = parse_column(table, column, _u_zero, studies)
        values.append(parsed)
        found += bad
    raise_problems(path, found)
    keys = zip(table["subject_id"].tolist(), table["study_id"].tolist(), strict=True)
    return dict(zip(keys, zip(*values, strict=True), strict=True))


def _u_zero(text: str) -> int:
    if text not in _U_ZERO:
        raise ValueError(f"{text!r} is not 1.0, 0.0, -1.0 or blank")
    return _U_ZERO[text]


def _read_subsample(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: subsample manifest not found")
    if Path(path).suffix == ".parquet":
        table = pd.read_parquet(path, columns=["dicom_id"]).astype(str)
        table.index = pd.RangeIndex(1, len(table) + 1, name="row")  # a parquet file has rows, not lines
    else:
        table = read_table(path, ("dicom_id",))
    require_unique(table, "dicom_id", path)
    return table


def _apply_subsample(images: list[_MimicImage], path: Path) -> list[_MimicImage]:
    table = _read_subsample(path)
    keep = table["dicom_id"].tolist()
    train = {i.dicom for i in images if i.split == Split.TRAIN.value}
    stray = [
        Problem(
            where(number, table.index.name), dicom, "column 'dicom_id': not a frontal image of the official train split"
        )
        for number, dicom in zip(table.index.tolist(), keep, strict=True)
        if dicom not in train
    ]
    if stray:
        raise ManifestError(path, stray)
    chosen = set(keep)
    return [i for i in images if i.split != Split.TRAIN.value or i.dicom in chosen]
