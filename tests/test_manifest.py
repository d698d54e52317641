"""The common manifest: construction, frames, save/load round trip, digest, validation and exclusions."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from lesionsignal.core.box import Box
from lesionsignal.data.manifest import (
    BOXES_CSV,
    MANIFEST_CSV,
    MAX_SHOWN,
    META_JSON,
    LesionBox,
    Manifest,
    ManifestError,
    PatientIds,
    Record,
    SplitPolicy,
)
from lesionsignal.data.validation import Exclusion, validate, write_exclusions

LABELS = ("cardiomegaly", "edema", "lung_lesion")


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((16, 16), value, dtype=np.uint8))
    return path


def _record(folder: Path, image_id: str, patient: str, split: str, labels=(0, 0, 0), **kw) -> Record:
    return Record(
        image_id=image_id,
        path=_png(folder / image_id),
        patient_id=patient,
        split=split,
        view="PA",
        labels=tuple(zip(LABELS, labels, strict=True)),
        **kw,
    )


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    images = tmp_path / "images"
    records = (
        _record(images, "a.png", "p1", "train", (1, 0, 1), boxes=(LesionBox("Nodule", Box(10, 20, 30, 44)),)),
        _record(images, "b.png", "p1", "train", window=(1100.1, 3900.25)),
        _record(images, "c.png", "p2", "test", (0, 1, 0), boxes=(LesionBox("Effusion", Box(0, 0, 1024, 1024)),)),
        _record(images, "d.png", "p3", "test", (0, 0, 1), group="adult"),
    )
    return Manifest("unit", records, LABELS)


def _errors(manifest: Manifest, **kw) -> str:
    with pytest.raises(ManifestError) as info:
        validate(manifest, **kw)
    return str(info.value)


def _swap(manifest: Manifest, index: int, **changes) -> Manifest:
    records = list(manifest.records)
    records[index] = replace(records[index], **changes)
    return manifest.with_records(records)


def test_box_geometry_is_half_open() -> None:
    box = LesionBox("Mass", Box(10, 20, 14, 28))
    assert (box.box.width, box.box.height, box.box.area) == (4, 8, 32)


def test_record_label_lookup(manifest: Manifest) -> None:
    record = manifest.records[0]
    assert record.label("lung_lesion") == 1
    assert record.label_names == LABELS
    with pytest.raises(KeyError, match="no label 'nodule'"):
        record.label("nodule")


def test_manifest_rejects_records_with_other_label_names(manifest: Manifest) -> None:
    odd = replace(manifest.records[2], labels=(("cardiomegaly", 0), ("edema", 1)))
    with pytest.raises(ManifestError, match=r"record 2 \(c\.png\): labels"):
        manifest.with_records([*manifest.records[:2], odd])
    with pytest.raises(ManifestError, match=r"label names \['split'\] clash"):
        Manifest("unit", (), ("split",))
    with pytest.raises(ManifestError, match="label names repeat"):
        Manifest("unit", (), ("edema", "edema"))


def test_frame_and_boxes_frame(manifest: Manifest) -> None:
    frame = manifest.frame()
    assert list(frame.columns[:8]) == [
        "image_id",
        "path",
        "patient_id",
        "split",
        "view",
        "group",
        "window_min",
        "window_max",
    ]
    assert frame["lung_lesion"].tolist() == [1, 0, 0, 1]
    assert frame["n_boxes"].tolist() == [1, 0, 1, 0]
    assert frame.loc[1, "window_max"] == pytest.approx(3900.25)
    assert np.isnan(frame.loc[0, "window_min"])
    boxes = manifest.boxes_frame()
    assert boxes["area"].tolist() == [20 * 24, 1024 * 1024]
    assert boxes["split"].tolist() == ["train", "test"]
    # Neither box class is a label of this manifest, so neither is a target.
    assert not boxes["is_target"].any()


def test_split_selects_records(manifest: Manifest) -> None:
    test = manifest.split("test")
    assert [r.image_id for r in test.records] == ["c.png", "d.png"]
    assert test.label_names == manifest.label_names
    with pytest.raises(ManifestError, match="no record in split 'validate'"):
        manifest.split("validate")


def test_save_load_round_trip_is_byte_identical(manifest: Manifest, tmp_path: Path) -> None:
    first = manifest.save(tmp_path / "one")
    loaded = Manifest.load(first)
    assert loaded == manifest
    assert loaded.digest() == manifest.digest()
    second = loaded.save(tmp_path / "two")
    for name in (META_JSON, MANIFEST_CSV, BOXES_CSV):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in first.iterdir()) == sorted([META_JSON, MANIFEST_CSV, BOXES_CSV])


def test_split_policy_and_patient_ids_are_saved_and_loaded(manifest: Manifest, tmp_path: Path) -> None:
    declared = replace(manifest, split_policy=SplitPolicy.OVERLAP_REPORTED, patient_ids=PatientIds.PER_IMAGE)
    assert declared.digest() != manifest.digest()
    folder = declared.save(tmp_path / "declared")
    meta = json.loads((folder / META_JSON).read_text())
    assert (meta["split_policy"], meta["patient_ids"]) == ("overlap_reported", "per_image")
    assert Manifest.load(folder) == declared
    # A manifest saved before these keys existed reads with the defaults it was made under.
    del meta["split_policy"], meta["patient_ids"]
    (folder / META_JSON).write_text(json.dumps(meta))
    loaded = Manifest.load(folder)
    assert (loaded.split_policy, loaded.patient_ids) == (SplitPolicy.PATIENT_DISJOINT, PatientIds.SOURCE)
    (folder / META_JSON).write_text(json.dumps({**meta, "split_policy": "mixed"}))
    with pytest.raises(ManifestError, match=r"manifest\.json: split_policy 'mixed' is not one of"):
        Manifest.load(folder)


def test_a_declared_split_overlap_passes_and_nothing_else_does(manifest: Manifest) -> None:
    crossing = _swap(manifest, 3, patient_id="p1")
    assert "record 3 (d.png): patient p1 is in splits ['test', 'train']" in _errors(crossing)
    declared = replace(crossing, split_policy=SplitPolicy.OVERLAP_REPORTED)
    kept, exclusions = validate(declared)
    assert kept.records == crossing.records and exclusions == []
    # Every other check still runs on a declared overlap.
    bad_box = _swap(declared, 1, boxes=(LesionBox("Mass", Box(5, 5, 5, 9)),))
    assert "record 1 (b.png): box 0 (Mass 5,5,5,9) is zero-area" in _errors(bad_box)


def test_digest_tracks_content(manifest: Manifest) -> None:
    digest = manifest.digest()
    assert len(digest) == 64
    assert digest == manifest.with_records(manifest.records).digest()
    assert _swap(manifest, 3, labels=(("cardiomegaly", 1), ("edema", 0), ("lung_lesion", 1))).digest() != digest
    assert replace(manifest, cohort="other").digest() != digest
    moved = _swap(manifest, 0, boxes=(LesionBox("Nodule", Box(11, 20, 30, 44)),))
    assert moved.digest() != digest


def test_load_names_bad_rows(manifest: Manifest, tmp_path: Path) -> None:
    folder = manifest.save(tmp_path / "m")
    table = (folder / MANIFEST_CSV).read_text().replace(",p3,test,PA,adult,,,0,0,1", ",p3,test,PA,adult,,,0,x,1")
    (folder / MANIFEST_CSV).write_text(table)
    with pytest.raises(ManifestError, match=r"line 5 \(d\.png\): invalid literal"):
        Manifest.load(folder)
    manifest.save(folder)
    (folder / BOXES_CSV).write_text((folder / BOXES_CSV).read_text() + "zz.png,Mass,1,2,3,4\n")
    with pytest.raises(ManifestError, match=r"zz\.png\): boxes for an image not in manifest\.csv"):
        Manifest.load(folder)


def test_save_refuses_duplicate_ids(manifest: Manifest, tmp_path: Path) -> None:
    doubled = _swap(manifest, 1, image_id="a.png")
    with pytest.raises(ManifestError, match=r"record 1 \(a\.png\): duplicate image id \(records 0, 1\)"):
        doubled.save(tmp_path / "m")


def test_valid_manifest_passes_unchanged(manifest: Manifest) -> None:
    kept, exclusions = validate(manifest, check_readable=True, known_classes={"Nodule", "Effusion"})
    assert kept is manifest
    assert exclusions == []


def test_missing_file_is_named(manifest: Manifest) -> None:
    manifest.records[2].path.unlink()
    assert "record 2 (c.png): file not found" in _errors(manifest)
    validate(manifest, check_files=False)  # the only problem is the file, which is not checked here


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_unreadable_file_is_named(manifest: Manifest, damage: str) -> None:
    path = manifest.records[3].path
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    validate(manifest)  # present on disk: only the decode check finds it
    assert "record 3 (d.png): unreadable" in _errors(manifest, check_readable=True)


def test_duplicate_ids_are_named(manifest: Manifest) -> None:
    text = _errors(_swap(manifest, 3, image_id="c.png", path=manifest.records[3].path))
    assert "record 2 (c.png): duplicate image id (records 2, 3)" in text
    assert "record 3 (c.png): duplicate image id (records 2, 3)" in text


def test_patient_in_two_splits_is_named(manifest: Manifest) -> None:
    text = _errors(_swap(manifest, 3, patient_id="p1"))
    for where in ("record 0 (a.png)", "record 1 (b.png)", "record 3 (d.png)"):
        assert f"{where}: patient p1 is in splits ['test', 'train']" in text
    assert "record 2" not in text


def test_unknown_split_is_named(manifest: Manifest) -> None:
    assert "record 3 (d.png): unknown split 'val'" in _errors(_swap(manifest, 3, split="val"))
    validate(_swap(manifest, 3, split="val"), splits=("train", "test", "val"))


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        (LesionBox("Nodule", Box(1000, 10, 1030, 40)), "lies outside the 1024 x 1024 canvas"),
        (LesionBox("Nodule", Box(-1, 10, 30, 40)), "lies outside the 1024 x 1024 canvas"),
        (LesionBox("Nodule", Box(10, 10, 10, 40)), "is zero-area or inverted"),
        (LesionBox("Nodule", Box(40, 10, 30, 40)), "is zero-area or inverted"),
        (LesionBox("Nodule", Box(10, 50, 30, 40)), "is zero-area or inverted"),
    ],
)
def test_bad_boxes_are_named(manifest: Manifest, box: LesionBox, reason: str) -> None:
    bad = _swap(manifest, 1, boxes=(LesionBox("Mass", Box(1, 1, 5, 5)), box))
    text = _errors(bad)
    x1, y1, x2, y2 = box.box.as_tuple()
    assert f"record 1 (b.png): box 1 (Nodule {x1},{y1},{x2},{y2}) {reason}" in text


def test_canvas_size_is_a_parameter(manifest: Manifest) -> None:
    assert "lies outside the 512 x 512 canvas" in _errors(manifest, canvas=512)


def test_unknown_class_only_when_classes_given(manifest: Manifest) -> None:
    validate(manifest)
    text = _errors(manifest, known_classes={"Nodule"})
    assert "record 2 (c.png): box 0 (Effusion 0,0,1024,1024) has an unknown class (known: Nodule)" in text
    assert "record 0" not in text


@pytest.mark.parametrize("value", [2, -1, True])
def test_label_values_must_be_0_or_1(manifest: Manifest, value: object) -> None:
    bad = _swap(manifest, 0, labels=(("cardiomegaly", value), ("edema", 0), ("lung_lesion", 1)))
    assert f"record 0 (a.png): label cardiomegaly={value!r} is not the integer 0 or 1" in _errors(bad)


def test_window_must_be_increasing(manifest: Manifest) -> None:
    assert "record 1 (b.png): window 3.0..3.0" in _errors(_swap(manifest, 1, window=(3.0, 3.0)))


def test_long_error_lists_are_cut_with_a_count(tmp_path: Path) -> None:
    images = tmp_path / "images"
    records = [_record(images, f"{i:03d}.png", f"p{i}", "holdout") for i in range(MAX_SHOWN + 5)]
    text = _errors(Manifest("many", records, LABELS))
    assert f"{MAX_SHOWN + 5} problem(s)" in text
    assert "... and 5 more" in text
    assert f"record {MAX_SHOWN - 1} " in text and f"record {MAX_SHOWN} " not in text


def test_exclusion_mode_removes_exactly_the_bad_rows(manifest: Manifest, tmp_path: Path) -> None:
    manifest.records[0].path.unlink()
    bad = _swap(manifest, 2, boxes=(LesionBox("Effusion", Box(5, 5, 5, 9)),), split="valid")
    kept, exclusions = validate(bad, exclude=True)
    assert [r.image_id for r in kept.records] == ["b.png", "d.png"]
    assert [e.image_id for e in exclusions] == ["a.png", "c.png"]
    assert exclusions[0].reason.startswith("file not found")
    # Every reason for a record is kept, in check order.
    assert exclusions[1].reason.startswith("unknown split 'valid'")
    assert "zero-area or inverted" in exclusions[1].reason
    assert validate(kept) == (kept, [])
    path = write_exclusions(tmp_path / "m" / "exclusions.csv", exclusions)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Exclusion(**row) for row in rows] == exclusions


def test_exclusion_of_a_split_leak_drops_the_whole_patient(manifest: Manifest) -> None:
    kept, exclusions = validate(_swap(manifest, 2, patient_id="p1"), exclude=True)
    assert [r.image_id for r in kept.records] == ["d.png"]
    assert {e.image_id for e in exclusions} == {"a.png", "b.png", "c.png"}
