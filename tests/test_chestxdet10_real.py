"""ChestX-Det10 on its real public metadata: both releases of train/test.json, with blank placeholder images under
the real file names. Skipped where the shared folder of public metadata files is absent."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from lesionsignal.core.box import Box
from lesionsignal.data.chestxdet10 import (
    CHESTXDET10_CLASSES,
    DetSplit,
    NoPatientIdsWarning,
    read_chestxdet10,
)
from lesionsignal.data.manifest import LesionBox, Manifest, PatientIds, SplitPolicy
from lesionsignal.data.summary import describe, split_overlap
from lesionsignal.data.validation import validate

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realdata"
DET = REAL / "chestx-det10"
FIRST = (DET / "train_v20200617.json", DET / "test_v20200617.json")  # NIH file names
CURRENT = (DET / "train.json", DET / "test.json")  # numeric file names

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"no public metadata files at {REAL}")

PUBLISHED_BOXES = {"Calcification": (280, 67), "Nodule": (789, 166), "Mass": (129, 31)}  # train, test
PUBLISHED_TEST_POSITIVES = {"Calcification": 38, "Nodule": 77, "Mass": 30}  # images with a box of the class


def _names(path: Path) -> list[str]:
    return [record["file_name"] for record in json.loads(path.read_text())]


@pytest.fixture(scope="module")
def nih_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Placeholders under the NIH names, spread over twelve folders as NIH distributes its images."""
    root = tmp_path_factory.mktemp("nih")
    folders = [root / f"images_{i:03d}" / "images" for i in range(1, 13)]
    for folder in folders:
        folder.mkdir(parents=True)
    for k, name in enumerate(_names(FIRST[0]) + _names(FIRST[1])):
        (folders[k % 12] / name).touch()
    return folders


@pytest.fixture(scope="module")
def numeric_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Placeholders under the numeric names, in one folder as in Deepwise's image zips."""
    folder = tmp_path_factory.mktemp("deepwise")
    for name in _names(CURRENT[0]) + _names(CURRENT[1]):
        (folder / name).touch()
    return folder


@pytest.fixture(scope="module")
def first(nih_dirs: list[Path]) -> Manifest:
    return read_chestxdet10(*FIRST, nih_dirs)


@pytest.fixture
def no_warnings() -> Iterator[None]:
    """A name map gives patient ids: the no-patient-ids warning would be a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoPatientIdsWarning)
        yield


def _published_counts(manifest: Manifest) -> None:
    frame = manifest.frame()
    assert frame["split"].value_counts().to_dict() == {"train": 3001, "test": 542}
    boxes = manifest.boxes_frame()
    assert set(boxes["label"]) == set(CHESTXDET10_CLASSES)
    for label, (train, test) in PUBLISHED_BOXES.items():
        chosen = boxes[boxes["label"] == label]
        assert (chosen["split"] == "train").sum() == train, label
        assert (chosen["split"] == "test").sum() == test, label
    test_frame = frame[frame["split"] == "test"]
    assert {c: int(test_frame[c].sum()) for c in PUBLISHED_TEST_POSITIVES} == PUBLISHED_TEST_POSITIVES


def test_first_release_gives_the_published_counts_and_the_shared_patients(first: Manifest) -> None:
    _published_counts(first)
    assert first.split_policy is SplitPolicy.OVERLAP_REPORTED and first.patient_ids is PatientIds.SOURCE
    validate(first, known_classes=set(CHESTXDET10_CLASSES), check_files=True)
    table = split_overlap(first).set_index("split")
    assert table.at["all", "shared_patients"] == 271
    assert (table.at["train", "shared_images"], table.at["test", "shared_images"]) == (1070, 373)
    assert (table.at["train", "shared_patients"], table.at["test", "shared_patients"]) == (271, 271)
    assert table.at["all", "patients"] == 1677


def test_corners_are_read_inclusive(first: Manifest) -> None:
    # 00000010_000.png (36204.png) lists one Nodule at [233, 666, 258, 693].
    record = {r.image_id: r for r in first.records}["00000010_000.png"]
    assert record.boxes == (LesionBox("Nodule", Box(233, 666, 259, 694)),)


def test_patient_ids_are_those_of_the_nih_table(first: Manifest) -> None:
    table = pd.read_csv(REAL / "nih-cxr14" / "Data_Entry_2017_v2020.csv", usecols=["Image Index", "Patient ID"])
    patients = dict(zip(table["Image Index"], table["Patient ID"], strict=True))
    assert all(int(r.patient_id) == patients[r.image_id] for r in first.records)


def test_current_release_mapped_by_the_first_release_is_the_same_manifest(
    first: Manifest, nih_dirs: list[Path], no_warnings: None
) -> None:
    mapped = read_chestxdet10(*CURRENT, nih_dirs, name_map_jsons=FIRST)
    assert mapped.canonical_bytes() == first.canonical_bytes()


def test_current_release_mapped_by_a_csv_is_the_same_manifest(
    tmp_path: Path, first: Manifest, nih_dirs: list[Path], no_warnings: None
) -> None:
    pairs = [(n, m) for a, b in zip(CURRENT, FIRST, strict=True) for n, m in zip(_names(a), _names(b), strict=True)]
    table = tmp_path / "names.csv"
    pd.DataFrame(pairs, columns=["file_name", "nih_name"]).to_csv(table, index=False)
    mapped = read_chestxdet10(*CURRENT, nih_dirs, name_map_csv=table)
    assert mapped.canonical_bytes() == first.canonical_bytes()


def test_current_release_without_a_map_loads_without_patient_ids(numeric_dir: Path) -> None:
    with pytest.warns(NoPatientIdsWarning, match="names images by number and no name map was given"):
        manifest = read_chestxdet10(*CURRENT, numeric_dir)
    _published_counts(manifest)
    assert manifest.patient_ids is PatientIds.PER_IMAGE
    assert describe(manifest).set_index(["split", "label"]).at[("all", "Nodule"), "patients"] == 3543
    assert {r.path.parent for r in manifest.records} == {numeric_dir}
    validate(manifest, check_files=True)


def test_patient_disjoint_resplit(first: Manifest, nih_dirs: list[Path]) -> None:
    official = {r.image_id: r.split for r in first.records}
    patient_sides: dict[str, set[str]] = {}
    for record in first.records:
        patient_sides.setdefault(record.patient_id, set()).add(record.split)
    for seed in (42, 0, 1):
        manifest = read_chestxdet10(*FIRST, nih_dirs, split=DetSplit.PATIENT_DISJOINT, seed=seed)
        assert manifest.split_policy is SplitPolicy.PATIENT_DISJOINT
        validate(manifest)  # patient-disjoint, checked as for every other cohort
        # Within one image of the official 542 (the smallest shared patient has 2 images).
        assert abs(sum(r.split == "test" for r in manifest.records) - 542) <= 1
        # A patient on one side of the official split stays there; only the 271 shared patients move.
        moved = {r.patient_id for r in manifest.records if r.split != official[r.image_id]}
        assert moved and all(len(patient_sides[p]) == 2 for p in moved)
        assert split_overlap(manifest).set_index("split").at["all", "shared_patients"] == 0
    again = read_chestxdet10(*FIRST, nih_dirs, split=DetSplit.PATIENT_DISJOINT, seed=1)
    assert again.canonical_bytes() == manifest.canonical_bytes()
