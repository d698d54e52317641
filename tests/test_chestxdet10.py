"""ChestX-Det10 as published, on tiny synthetic JSONs: both file-name schemes and the name maps, inclusive corners,
the official split's declared patient overlap and the patient-disjoint re-split, image folders, and errors that
name the file and the record."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from lesionsignal.core.box import Box
from lesionsignal.data.chestxdet10 import (
    BoxCorners,
    DetSplit,
    NoPatientIdsWarning,
    patient_disjoint_split,
    read_chestxdet10,
)
from lesionsignal.data.manifest import LesionBox, Manifest, ManifestError, PatientIds, SplitPolicy
from lesionsignal.data.summary import split_notes, split_overlap
from lesionsignal.data.validation import validate

# (NIH name, numeric name, syms, boxes): patient 00000001 has images on both sides of the split.
TRAIN = [
    ("00000001_000.png", "100.png", ["Nodule"], [[10, 20, 30, 40]]),
    ("00000001_001.png", "101.png", [], []),
    ("00000002_000.png", "102.png", ["Mass", "Effusion"], [[100, 100, 300, 280], [500, 600, 700, 900]]),
    ("00000003_000.png", "103.png", ["Calcification"], [[5, 5, 5, 5]]),  # one pixel, inclusive
]
TEST = [
    ("00000001_002.png", "104.png", ["Nodule"], [[12, 22, 31, 41]]),
    ("00000004_000.png", "105.png", [], []),
    ("00000005_000.png", "106.png", ["Calcification"], [[600, 610, 620, 625]]),
]


def _records(rows: list, numeric: bool) -> list[dict]:
    return [{"file_name": r[1] if numeric else r[0], "syms": r[2], "boxes": r[3]} for r in rows]


def _json(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def _images(folder: Path, names: list[str]) -> Path:
    """Empty placeholder files: the reader and the validator check that each image exists, not its pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).touch()
    return folder


@pytest.fixture
def nih(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The first-release files (NIH names) and a folder holding their images."""
    train = _json(tmp_path / "v1" / "train_v20200617.json", _records(TRAIN, numeric=False))
    test = _json(tmp_path / "v1" / "test_v20200617.json", _records(TEST, numeric=False))
    return train, test, _images(tmp_path / "nih_images", [r[0] for r in TRAIN + TEST])


@pytest.fixture
def numeric(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The current-release files (numeric names) and a folder holding the images under those names."""
    train = _json(tmp_path / "current" / "train.json", _records(TRAIN, numeric=True))
    test = _json(tmp_path / "current" / "test.json", _records(TEST, numeric=True))
    return train, test, _images(tmp_path / "numeric_images", [r[1] for r in TRAIN + TEST])


def _boxes(manifest: Manifest) -> dict[str, tuple[LesionBox, ...]]:
    return {r.image_id: r.boxes for r in manifest.records}


# ---------------------------------------------------------------- corners


def test_inclusive_corners_become_half_open(nih: tuple[Path, Path, Path]) -> None:
    boxes = _boxes(read_chestxdet10(*nih))
    assert boxes["00000001_000.png"] == (LesionBox("Nodule", Box(10, 20, 31, 41)),)  # x2 + 1, y2 + 1
    assert boxes["00000003_000.png"][0].box.area == 1  # [5, 5, 5, 5]: the one pixel (5, 5)
    assert boxes["00000002_000.png"][1] == LesionBox("Effusion", Box(500, 600, 701, 901))


def test_half_open_corners_are_kept(nih: tuple[Path, Path, Path]) -> None:
    manifest = read_chestxdet10(*nih, corners=BoxCorners.HALF_OPEN)
    assert _boxes(manifest)["00000001_000.png"] == (LesionBox("Nodule", Box(10, 20, 30, 40)),)
    # Read half-open, the one-pixel box is empty; the validator names it.
    with pytest.raises(ManifestError, match=r"\(00000003_000\.png\): box 0 \(Calcification 5,5,5,5\) is zero-area"):
        validate(manifest)


# ---------------------------------------------------------------- the official split and its declared overlap


def test_official_split_keeps_the_overlap_declared_and_reported(nih: tuple[Path, Path, Path]) -> None:
    manifest = read_chestxdet10(*nih)
    assert manifest.split_policy is SplitPolicy.OVERLAP_REPORTED and manifest.patient_ids is PatientIds.SOURCE
    assert {r.image_id: r.split for r in manifest.records}["00000001_002.png"] == "test"
    validate(manifest, check_files=True)  # the declared overlap passes
    table = split_overlap(manifest).set_index("split")
    assert table.loc["train", ["images", "patients", "shared_patients", "shared_images"]].tolist() == [4, 3, 1, 2]
    assert table.loc["test", ["images", "patients", "shared_patients", "shared_images"]].tolist() == [3, 3, 1, 1]
    assert table.loc["all", ["images", "patients", "shared_patients", "shared_images"]].tolist() == [7, 5, 1, 3]
    assert set(table["split_policy"]) == {"overlap_reported"}
    assert split_notes(manifest) == [
        "chestx-det10: the published split is kept although 1 patients have images on both sides (2 train, 1 test "
        "images); results on it are not patient-disjoint."
    ]
    # The policy, not a skipped check, lets it pass: declared patient-disjoint, the same records are refused.
    with pytest.raises(ManifestError, match=r"record 0 \(00000001_000\.png\): patient 00000001 is in splits"):
        validate(replace(manifest, split_policy=SplitPolicy.PATIENT_DISJOINT))


def test_patient_disjoint_resplit_moves_whole_patients(nih: tuple[Path, Path, Path]) -> None:
    manifest = read_chestxdet10(*nih, split=DetSplit.PATIENT_DISJOINT, seed=0)
    assert manifest.split_policy is SplitPolicy.PATIENT_DISJOINT
    validate(manifest)
    splits = {r.image_id: r.split for r in manifest.records}
    # Patient 00000001 (3 images) would take test from 2 to 5 images, past the official 3: it joins train.
    assert [splits[f"00000001_00{i}.png"] for i in range(3)] == ["train"] * 3
    assert splits["00000004_000.png"] == splits["00000005_000.png"] == "test"
    assert split_overlap(manifest).set_index("split").at["all", "shared_patients"] == 0


def test_resplit_is_patient_disjoint_near_the_test_size_and_seeded() -> None:
    # 40 patients on one side each, and 30 crossing patients of 2-4 images.
    patients, splits = [], []
    for p in range(40):
        side = "test" if p % 4 == 0 else "train"
        patients += [f"a{p}"] * (1 + p % 3)
        splits += [side] * (1 + p % 3)
    for p in range(30):
        n = 2 + p % 3
        patients += [f"b{p}"] * n
        splits += ["train"] * (n - 1) + ["test"]
    target = splits.count("test")
    first = patient_disjoint_split(patients, splits, seed=5)
    assert first == patient_disjoint_split(patients, splits, seed=5)
    assert first != patient_disjoint_split(patients, splits, seed=6)
    for seed in range(20):
        new = patient_disjoint_split(patients, splits, seed)
        sides: dict[str, set[str]] = {}
        for patient, split in zip(patients, new, strict=True):
            sides.setdefault(patient, set()).add(split)
        assert all(len(s) == 1 for s in sides.values())
        assert all(sides[p] == {s} for p, s in zip(patients, splits, strict=True) if p.startswith("a"))
        # The smallest crossing patient has 2 images, so a shortfall of 1 is as near as whole patients allow.
        assert abs(new.count("test") - target) <= 1


# ---------------------------------------------------------------- file-name schemes and name maps


def test_numeric_names_mapped_by_the_first_release(
    nih: tuple[Path, Path, Path], numeric: tuple[Path, Path, Path]
) -> None:
    reference = read_chestxdet10(*nih)
    mapped = read_chestxdet10(numeric[0], numeric[1], nih[2], name_map_jsons=(nih[0], nih[1]))
    assert mapped.canonical_bytes() == reference.canonical_bytes()
    assert (mapped.split_policy, mapped.patient_ids) == (reference.split_policy, reference.patient_ids)


def test_numeric_names_mapped_by_a_csv(
    tmp_path: Path, nih: tuple[Path, Path, Path], numeric: tuple[Path, Path, Path]
) -> None:
    table = tmp_path / "names.csv"
    table.write_text("file_name,nih_name\n" + "".join(f"{r[1]},{r[0]}\n" for r in TRAIN + TEST) + "999.png,0_0.png\n")
    mapped = read_chestxdet10(numeric[0], numeric[1], nih[2], name_map_csv=table)
    assert mapped.canonical_bytes() == read_chestxdet10(*nih).canonical_bytes()
    with pytest.raises(ValueError, match="not both"):
        read_chestxdet10(numeric[0], numeric[1], nih[2], name_map_jsons=(nih[0], nih[1]), name_map_csv=table)


def test_numeric_names_without_a_map_have_no_patient_ids(numeric: tuple[Path, Path, Path]) -> None:
    with pytest.warns(NoPatientIdsWarning, match="no image has a patient id: each image is its own patient"):
        manifest = read_chestxdet10(*numeric)
    assert manifest.patient_ids is PatientIds.PER_IMAGE
    assert all(r.patient_id == r.image_id for r in manifest.records)
    assert {r.path.name for r in manifest.records} == {r[1] for r in TRAIN + TEST}  # found under numeric names
    validate(manifest, check_files=True)
    notes = split_notes(manifest)
    assert any("each image is its own patient" in n for n in notes)
    assert any("cannot be counted without patient ids" in n for n in notes)
    assert set(split_overlap(manifest)["patient_ids"]) == {"per_image"}
    with pytest.raises(ManifestError, match=r"split: patient_disjoint needs patient ids.*name_map_jsons"):
        read_chestxdet10(*numeric, split=DetSplit.PATIENT_DISJOINT)


def test_name_map_records_must_agree(
    tmp_path: Path, nih: tuple[Path, Path, Path], numeric: tuple[Path, Path, Path]
) -> None:
    train = _records(TRAIN, numeric=False)
    train[2]["boxes"] = [[100, 100, 300, 281], [500, 600, 700, 900]]
    train[3]["syms"] = ["Nodule"]
    bad = _json(tmp_path / "bad" / "train_v20200617.json", train)
    with pytest.raises(ManifestError) as info:
        read_chestxdet10(numeric[0], numeric[1], nih[2], name_map_jsons=(bad, nih[1]))
    text = str(info.value)
    assert text.startswith(f"{numeric[0]} / {bad}: 2 problem(s):")
    assert (
        "train.json[2] (102.png): boxes [(100, 100, 301, 281), (500, 600, 701, 901)] differ from "
        "[(100, 100, 301, 282), (500, 600, 701, 901)] in train_v20200617.json[2] (00000002_000.png) of the name map"
    ) in text
    assert "train.json[3] (103.png): syms ['Calcification'] differ from ['Nodule'] in train_v20200617.json[3]" in text
    short = _json(tmp_path / "short" / "test_v20200617.json", _records(TEST[:2], numeric=False))
    with pytest.raises(ManifestError, match=re.escape(f"{numeric[1]} / {short}: 3 records but 2 in the name map")):
        read_chestxdet10(numeric[0], numeric[1], nih[2], name_map_jsons=(nih[0], short))


def test_name_map_csv_errors_name_file_and_row(
    tmp_path: Path, nih: tuple[Path, Path, Path], numeric: tuple[Path, Path, Path]
) -> None:
    table = tmp_path / "names.csv"
    rows = [f"{r[1]},{r[0]}\n" for r in TRAIN + TEST]
    table.write_text("file_name,nih_name\n" + "".join(rows[:-1]))
    with pytest.raises(ManifestError, match=re.escape(f"test.json[2] (106.png): not in the name map {table}")):
        read_chestxdet10(numeric[0], numeric[1], nih[2], name_map_csv=table)
    table.write_text("file_name,nih_name\n" + "".join(rows[:-1]) + "106.png,image106.png\n")
    with pytest.raises(ManifestError, match=re.escape(f"{table}: 1 problem(s):\n  line 8 (image106.png): nih_name")):
        read_chestxdet10(numeric[0], numeric[1], nih[2], name_map_csv=table)
    table.write_text("file_name,nih_name\n" + "".join(rows) + "107.png,00000005_000.png\n")
    with pytest.raises(ManifestError, match=r"line 9 \(00000005_000\.png\): column 'nih_name': repeated on lines 8, 9"):
        read_chestxdet10(numeric[0], numeric[1], nih[2], name_map_csv=table)
    table.write_text("name,nih\n")
    with pytest.raises(ManifestError, match=re.escape(f"{table}: missing column(s) ['file_name', 'nih_name']")):
        read_chestxdet10(numeric[0], numeric[1], nih[2], name_map_csv=table)


def test_file_names_of_another_scheme_are_named(tmp_path: Path, nih: tuple[Path, Path, Path]) -> None:
    records = _records(TRAIN, numeric=False)
    records[1]["file_name"] = "101.png"
    records[2]["file_name"] = "scan-7.png"
    train = _json(tmp_path / "mixed" / "train.json", records)
    with pytest.raises(ManifestError) as info:
        read_chestxdet10(train, nih[1], nih[2])
    text = str(info.value)
    assert (
        "train.json[1] (101.png): file name scheme differs from train.json[0] (00000001_000.png, an NIH name)" in text
    )
    assert "train.json[2] (scan-7.png): file name is neither an NIH name" in text


# ---------------------------------------------------------------- files and folders


def test_empty_files_are_errors_naming_them(tmp_path: Path, nih: tuple[Path, Path, Path]) -> None:
    empty = _json(tmp_path / "empty" / "test.json", [])
    with pytest.raises(ManifestError, match=re.escape(f"{empty}: holds no records")):
        read_chestxdet10(nih[0], empty, nih[2])
    with pytest.raises(ManifestError, match=re.escape(f"{empty}: holds no records")):
        read_chestxdet10(empty, nih[1], nih[2])


def test_images_over_several_folders(tmp_path: Path, nih: tuple[Path, Path, Path]) -> None:
    folders = [_images(tmp_path / f"images_00{i}" / "images", []) for i in (1, 2)]
    for k, row in enumerate(TRAIN + TEST):
        (nih[2] / row[0]).rename(folders[k % 2] / row[0])
    manifest = read_chestxdet10(nih[0], nih[1], folders)
    paths = {r.image_id: r.path for r in manifest.records}
    assert paths["00000001_000.png"] == folders[0] / "00000001_000.png"
    assert paths["00000001_001.png"] == folders[1] / "00000001_001.png"
    (folders[0] / "00000001_001.png").touch()
    with pytest.raises(ManifestError) as info:
        read_chestxdet10(nih[0], nih[1], folders)
    both = f"{folders[0] / '00000001_001.png'}, {folders[1] / '00000001_001.png'}"
    assert f"image (00000001_001.png): found in several folders: {both}" in str(info.value)
    (folders[1] / "00000001_001.png").unlink()
    (folders[0] / "00000001_001.png").unlink()
    with pytest.raises(ManifestError, match=r"image \(00000001_001\.png\): image not found in"):
        read_chestxdet10(nih[0], nih[1], folders)
