"""From parameters to validated cohorts and detection sets, on the fixture files of the real formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lesionsignal.manifest import Manifest, ManifestError
from lesionsignal.params import load_params
from lesionsignal.study import detection_items, read_cohort, splits_of

FIXTURES = Path(__file__).parent / "fixtures" / "cohorts"


def _params(tmp_path: Path, cohort: dict) -> Path:
    data = {"name": "t", "run": "study", "paths": {"work": str(tmp_path / "work")}, "cohorts": [cohort]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _nih(**extra) -> dict:
    nih = FIXTURES / "nih"
    return {
        "name": "nih",
        "kind": "nih",
        "csv": str(nih / "Data_Entry_2017_v2020.csv"),
        "image_dirs": [str(nih / "images_001" / "images"), str(nih / "images_002" / "images")],
        "split_lists": [str(nih / "train_val_list.txt"), str(nih / "test_list.txt")],
        **extra,
    }


def test_read_cohort_validates_and_saves_the_manifest(tmp_path: Path) -> None:
    params = load_params(_params(tmp_path, _nih()))
    params.check_files()
    manifest = read_cohort(params, params.cohorts[0])
    saved = Manifest.load(tmp_path / "work" / "manifests" / "nih")
    assert saved.digest() == manifest.digest()
    assert set(splits_of(manifest).values()) <= {"train", "test"}


def test_detection_set_is_a_seeded_subsample(tmp_path: Path) -> None:
    params = load_params(_params(tmp_path, _nih(n_images=4, seed=3)))
    manifest = read_cohort(params, params.cohorts[0])
    first = detection_items(manifest, params.cohorts[0])
    again = detection_items(manifest, params.cohorts[0])
    assert [i.image_id for i in first] == [i.image_id for i in again]
    assert len(first) == 4 and [i.image_id for i in first] == sorted(i.image_id for i in first)
    assert {i.image_id for i in first} <= {r.image_id for r in manifest.records}
    everything = load_params(_params(tmp_path, _nih()))
    assert len(detection_items(manifest, everything.cohorts[0])) == len(manifest.records)


def test_missing_image_fails_naming_it_or_is_excluded_when_allowed(tmp_path: Path) -> None:
    import shutil

    nih = tmp_path / "nih"
    shutil.copytree(FIXTURES / "nih", nih)
    victim = sorted((nih / "images_001" / "images").iterdir())[0]
    victim.unlink()
    cohort = {
        "name": "nih",
        "kind": "nih",
        "csv": str(nih / "Data_Entry_2017_v2020.csv"),
        "image_dirs": [str(nih / "images_001" / "images"), str(nih / "images_002" / "images")],
    }
    params = load_params(_params(tmp_path, cohort))
    with pytest.raises((ManifestError, ValueError), match=victim.name):
        read_cohort(params, params.cohorts[0])


def test_real_films_cohort_reads_the_registry_films(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    cache = root / ".cache" / "data"
    if not (cache / "provenance.json").is_file():
        pytest.skip("registry data not fetched (make data)")
    data = {
        "name": "t",
        "run": "demo",
        "paths": {"work": str(tmp_path / "work"), "data_cache": str(cache)},
        "cohorts": [{"name": "films", "kind": "real_films", "uses": []}],
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    params = load_params(path)
    manifest = read_cohort(params, params.cohorts[0])
    assert len(manifest.records) == 17
    assert {r.split for r in manifest.records} == {"test"}
    assert "RG1_UNCR.dcm" in {r.image_id for r in manifest.records}


def test_institutional_cohort_with_its_own_columns_and_16_bit_windows(tmp_path: Path) -> None:
    folder = FIXTURES / "institutional"
    cohort = {
        "name": "emory",
        "kind": "institutional",
        "csv": str(folder / "cohort.csv"),
        "root": str(folder),
        "columns": {"path": "image_path", "patient_id": "mrn", "split": "partition", "view": "view_position"},
        "label_columns": {"cardiomegaly": "cardiomegaly_label", "edema": "edema_label", "lung_lesion": "lesion_label"},
        "window_columns": ["voi_min", "voi_max"],
        "split_map": {"val": "train"},
    }
    params = load_params(_params(tmp_path, cohort))
    manifest = read_cohort(params, params.cohorts[0])
    first = next(r for r in manifest.records if r.image_id == "emory_0001.png")
    assert first.window == (1200.0, 3400.0) and first.patient_id == "MRN001"
    assert dict(first.labels)["cardiomegaly"] == 1
