"""NIH ChestX-ray14 read into the common manifest: Data_Entry_2017_v2020.csv, image folders and the split.

The split is either NIH's official lists (train_val_list.txt / test_list.txt), checked to be patient-disjoint, or
``grouped_split``: patient-grouped and stratified on the label combination.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from lesionsignal.data.manifest import DISEASES, Manifest, ManifestError, Problem, Record, Split
from lesionsignal.data.tables import Row, line, locate_images, parse_rows, read_table, require_unique, sorted_manifest
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
    table = read_table(csv, ("Image Index", "Finding Labels", "Patient ID", "View Position"))
    image_ids = table["Image Index"].tolist()
    require_unique(image_ids, csv, "Image Index")

    def parse(row: Row) -> tuple[tuple[int, int, int], str]:
        labels = _nih_labels(row["Finding Labels"], lung_lesion_from)
        return labels, f"{int(row['Patient ID']):08d}"  # the same form as the file-name prefix (ChestX-Det10)

    # Row dicts of only the columns parsed: the full table has 112,120 rows of 11 columns.
    needed = table[["Image Index", "Finding Labels", "Patient ID"]]
    parsed, problems = parse_rows(needed, parse, lambda row: row["Image Index"])
    if problems:
        raise ManifestError(csv, problems)
    labels = [combo for combo, _ in parsed]
    patients = [patient for _, patient in parsed]
    paths = locate_images(image_ids, image_dirs, csv)
    if split_lists is not None:
        split = _official_split(image_ids, patients, (Path(split_lists[0]), Path(split_lists[1])), csv)
    else:
        strata = ["".join(map(str, combo)) for combo in labels]
        split = grouped_split(strata, patients, test_fraction=test_fraction, seed=seed)
    records = (
        Record(image_id, path, patient, name, view, tuple(zip(DISEASES, combo, strict=True)))
        for image_id, path, patient, name, view, combo in zip(
            image_ids, paths, patients, split, table["View Position"], labels, strict=True
        )
    )
    return sorted_manifest(cohort, records, DISEASES)


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
    names = findings.split("|")
    unknown = [name for name in names if name not in NIH_FINDINGS and name != NIH_NO_FINDING]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown} in {findings!r}")
    if NIH_NO_FINDING in names and len(names) > 1:
        raise ValueError(f"{NIH_NO_FINDING!r} together with findings in {findings!r}")
    lesion = any(name in names for name in lung_lesion_from)
    return int("Cardiomegaly" in names), int("Edema" in names), int(lesion)


def _read_id_list(path: Path) -> set[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split list not found")
    return {text.strip() for text in path.read_text().splitlines() if text.strip()}


def _official_split(
    image_ids: Sequence[str], patients: Sequence[str], lists: tuple[Path, Path], source: Path
) -> list[str]:
    train, test = (_read_id_list(Path(p)) for p in lists)
    split, problems = [], []
    for index, image_id in enumerate(image_ids):
        where = (Split.TRAIN.value,) * (image_id in train) + (Split.TEST.value,) * (image_id in test)
        if len(where) != 1:
            problems.append(Problem(line(index), image_id, "in both split lists" if where else "in neither list"))
        split.append(where[0] if where else "")
    if problems:
        raise ManifestError(f"{source} with {lists[0].name} / {lists[1].name}", problems)
    mixed = mixed_patients(patients, split)
    leaks = [
        Problem(line(i), image_ids[i], f"patient {patient} has images in both official lists")
        for i, patient in enumerate(patients)
        if patient in mixed
    ]
    if leaks:
        raise ManifestError(f"{lists[0]} / {lists[1]} are not patient-disjoint", leaks)
    return split
