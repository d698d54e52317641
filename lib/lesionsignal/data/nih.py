"""NIH ChestX-ray14 read into the common manifest: Data_Entry_2017_v2020.csv, image folders and the split.

The split is either NIH's official lists (train_val_list.txt / test_list.txt), checked to name exactly the images
of the CSV and to be patient-disjoint, or ``grouped_split``: patient-grouped and stratified on the label
combination. Every row of the CSV is checked (image name, findings, patient id against the name's prefix, view)
and all its problems are reported together.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from lesionsignal.data.manifest import DISEASES, Manifest, ManifestError, Problem, Record, Split
from lesionsignal.data.tables import (
    LineProblem,
    duplicates,
    locate_images,
    one_of,
    parse_column,
    raise_problems,
    read_table,
    sorted_manifest,
    where,
    whole_number,
)
from lesionsignal.data.validation import mixed_patients

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
NIH_VIEWS = ("PA", "AP")  # the release has 67,310 PA and 44,810 AP images and no other value
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
NIH_RELEASE_ROWS = 112_120
# <8-digit patient>_<3-digit follow-up>.png; ChestX-Det10 and the patient check read the patient from it
_IMAGE_NAME = re.compile(r"([0-9]{8})_[0-9]{3}\.png")


class NihRow(NamedTuple):
    """One checked row of the CSV; ``patient`` is zero-padded to eight digits, as in the image name."""

    line: int
    image_id: str
    patient: str
    view: str
    labels: tuple[int, int, int]


def read_nih(
    csv: str | Path,
    image_dirs: Sequence[Path] | None,
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
    ``image_dirs=None`` reads the metadata and the split without the images: each record's path is then the
    bare image name, which ``validate(..., check_files=True)`` would refuse.
    """
    csv = Path(csv)
    bad = [name for name in lung_lesion_from if name not in NIH_FINDINGS]
    if bad or not lung_lesion_from:
        raise ValueError(f"lung_lesion_from must name NIH findings {NIH_FINDINGS}, got {list(lung_lesion_from)}")
    rows = nih_rows(csv, lung_lesion_from)
    image_ids = [row.image_id for row in rows]
    patients = [row.patient for row in rows]
    paths = locate_images(image_ids, image_dirs, csv) if image_dirs is not None else [Path(i) for i in image_ids]
    if split_lists is not None:
        split = _official_split(rows, (Path(split_lists[0]), Path(split_lists[1])), csv)
    else:
        strata = ["".join(map(str, row.labels)) for row in rows]
        split = grouped_split(strata, patients, test_fraction=test_fraction, seed=seed)
    records = (
        Record(row.image_id, path, row.patient, name, row.view, tuple(zip(DISEASES, row.labels, strict=True)))
        for row, path, name in zip(rows, paths, split, strict=True)
    )
    return sorted_manifest(cohort, records, DISEASES)


def nih_rows(csv: Path, lung_lesion_from: Sequence[str] = NIH_LUNG_LESION) -> list[NihRow]:
    """Every row of the CSV, checked; raises one ManifestError naming the line and column of every bad cell."""
    table = read_table(csv, NIH_COLUMNS)
    names = table["Image Index"].tolist()
    prefixes, found = parse_column(table, "Image Index", _image_prefix, names)
    labels, bad_labels = parse_column(table, "Finding Labels", lambda text: _nih_labels(text, lung_lesion_from), names)
    patients, bad_patients = parse_column(table, "Patient ID", _patient_id, names)
    views, bad_views = parse_column(table, "View Position", lambda text: one_of(text, NIH_VIEWS, "NIH views"), names)
    found += bad_labels + bad_patients + bad_views + duplicates(table, ["Image Index"], names)
    found += _prefix_problems(table, prefixes, patients)
    raise_problems(csv, found)
    return [
        NihRow(line, name, patient, view, combo)
        for line, name, patient, view, combo in zip(table.index.tolist(), names, patients, views, labels, strict=True)
    ]


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


def _nih_labels(findings: str, lung_lesion_from: Sequence[str]) -> tuple[int, int, int]:
    if not findings.strip():
        raise ValueError(f"blank (an image without findings says {NIH_NO_FINDING!r})")
    names = findings.split("|")
    unknown = [name for name in names if name not in NIH_FINDINGS and name != NIH_NO_FINDING]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown} in {findings!r}")
    if NIH_NO_FINDING in names and len(names) > 1:
        raise ValueError(f"{NIH_NO_FINDING!r} together with findings in {findings!r}")
    lesion = any(name in names for name in lung_lesion_from)
    return int("Cardiomegaly" in names), int("Edema" in names), int(lesion)


def _image_prefix(name: str) -> str:
    match = _IMAGE_NAME.fullmatch(name)
    if match is None:
        what = "blank" if not name.strip() else f"{name!r} is not"
        raise ValueError(f"{what} an NIH image name like 00000001_000.png (patient, follow-up, .png)")
    return match.group(1)


def _patient_id(text: str) -> str:
    return f"{int(whole_number(text)):08d}"  # the form of the image name's prefix


def _prefix_problems(table: pd.DataFrame, prefixes: list[str | None], patients: list[str | None]) -> list[LineProblem]:
    """Rows whose Patient ID is not the patient of their image name (rows with an unreadable cell are skipped)."""
    cells = zip(
        table.index.tolist(),
        table["Image Index"].tolist(),
        table["Patient ID"].tolist(),
        prefixes,
        patients,
        strict=True,
    )
    return [
        LineProblem(line, Problem(where(line), name, f"column 'Patient ID': {raw} but the image name says {prefix}"))
        for line, name, raw, prefix, patient in cells
        if prefix is not None and patient is not None and prefix != patient
    ]


def _read_id_list(path: Path) -> dict[str, int]:
    """Each image name of a split list with its line in the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split list not found")
    lines: dict[str, int] = {}
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        lines.setdefault(text.strip(), number)
    lines.pop("", None)
    return lines


def _official_split(rows: Sequence[NihRow], lists: tuple[Path, Path], csv: Path) -> list[str]:
    """Each row's split from the official lists, which must name exactly the CSV's images, patient-disjointly."""
    train, test = (_read_id_list(path) for path in lists)
    split, unplaced = [], []
    for row in rows:
        found = (Split.TRAIN.value,) * (row.image_id in train) + (Split.TEST.value,) * (row.image_id in test)
        if len(found) != 1:
            reason = f"in both {lists[0].name} and {lists[1].name}" if found else "in neither list"
            unplaced.append(Problem(f"{csv.name} {where(row.line)}", row.image_id, reason))
        split.append(found[0] if found else "")
    in_csv = {row.image_id for row in rows}
    missing = [_not_in(csv, path, listed, in_csv) for path, listed in zip(lists, (train, test), strict=True)]
    if unplaced or any(missing):
        advice = [_missing_advice(csv, lists, (train, test), missing, len(rows))] if any(missing) else []
        advice += ["Every image of the CSV must be in exactly one list."] if unplaced else []
        source = f"{csv} against the split lists {lists[0]}, {lists[1]}"
        raise ManifestError(source, [*unplaced, *missing[0], *missing[1]], advice=" ".join(advice))
    _require_disjoint(rows, split, lists, csv)
    return split


def _not_in(csv: Path, path: Path, listed: dict[str, int], in_csv: set[str]) -> list[Problem]:
    """The images of one split list that the CSV lacks, each with its line in the list."""
    return [
        Problem(f"{path.name} {where(line)}", name, f"not in {csv.name}")
        for name, line in listed.items()
        if name not in in_csv
    ]


def _missing_advice(
    csv: Path, lists: tuple[Path, Path], listed: tuple[dict[str, int], ...], missing: list[list[Problem]], rows: int
) -> str:
    counts = "; ".join(
        f"{path.name}: {len(lacking):,} of {len(names):,}"
        for path, names, lacking in zip(lists, listed, missing, strict=True)
    )
    return (
        f"{sum(map(len, missing)):,} images of the split lists are missing from {csv.name} ({counts}), which has "
        f"{rows:,} data rows (the release: {NIH_RELEASE_ROWS:,}). A CSV cut short: download it again. A part of the "
        "cohort on purpose: leave out split_lists for a patient-grouped split."
    )


def _require_disjoint(rows: Sequence[NihRow], split: Sequence[str], lists: tuple[Path, Path], csv: Path) -> None:
    mixed = mixed_patients((row.patient for row in rows), split)
    leaks = [
        Problem(where(row.line), row.image_id, f"column 'Patient ID': patient {row.patient} has images in both lists")
        for row in rows
        if row.patient in mixed
    ]
    if leaks:
        advice = f"The official lists are patient-disjoint: {lists[0]} and {lists[1]} are not; use them as published."
        raise ManifestError(csv, leaks, advice=advice)
