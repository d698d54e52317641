"""Cohort readers and summaries on tiny fixtures in the real file formats (tests/fixtures/cohorts/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cohort_fixtures import DET, DET_DIRS, FIXTURES, INSTITUTIONAL_COLUMNS, MIMIC, NIH, NIH_CSV, NIH_DIRS, NIH_LISTS

from lesionsignal.core.box import Box
from lesionsignal.data.chestxdet10 import CHESTXDET10_CLASSES, read_chestxdet10
from lesionsignal.data.demo_cohort import read_demo
from lesionsignal.data.institutional import InstitutionalColumns, read_institutional
from lesionsignal.data.manifest import DISEASES, LesionBox, Manifest, ManifestError, Record, Split
from lesionsignal.data.mimic import make_mimic_subsample, read_mimic
from lesionsignal.data.nih import grouped_split, read_nih
from lesionsignal.data.real_films import read_real_films
from lesionsignal.data.summary import box_size_summary, describe
from lesionsignal.data.validation import validate

NIH_CSV_COLUMNS = (  # the full header of the real file; the reader needs only some of these columns
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


def _labels(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    return {r.image_id: tuple(v for _, v in r.labels) for r in manifest.records}


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# ---------------------------------------------------------------- NIH


def test_nih_header_is_the_real_one() -> None:
    assert tuple(pd.read_csv(NIH_CSV, nrows=0).columns) == NIH_CSV_COLUMNS


def test_nih_labels_patients_and_paths() -> None:
    nih = read_nih(NIH_CSV, NIH_DIRS, split_lists=NIH_LISTS)
    labels = _labels(nih)
    assert labels["00000001_000.png"] == (1, 0, 0)
    assert labels["00000002_000.png"] == (0, 0, 0)  # No Finding
    assert labels["00000003_000.png"] == (0, 1, 1)  # Edema|Nodule
    assert labels["00000003_001.png"] == (0, 0, 1)  # Mass counts as lung lesion by default
    assert labels["00000005_000.png"] == (0, 0, 0)  # findings outside the three labels
    assert labels["00000006_000.png"] == (1, 0, 1)
    record = {r.image_id: r for r in nih.records}["00000004_000.png"]
    assert (record.patient_id, record.view) == ("00000004", "AP")
    assert record.path == NIH_DIRS[1] / "00000004_000.png"
    assert nih.label_names == DISEASES
    validate(nih, check_readable=True)


def test_nih_lung_lesion_rule_is_a_parameter() -> None:
    nodule_only = _labels(read_nih(NIH_CSV, NIH_DIRS, split_lists=NIH_LISTS, lung_lesion_from=("Nodule",)))
    assert nodule_only["00000003_001.png"] == (0, 0, 0)  # Mass alone is no longer a lesion
    assert nodule_only["00000004_000.png"] == (0, 0, 1)
    with pytest.raises(ValueError, match="lung_lesion_from"):
        read_nih(NIH_CSV, NIH_DIRS, lung_lesion_from=("Lesion",))


def test_nih_official_split() -> None:
    nih = read_nih(NIH_CSV, NIH_DIRS, split_lists=NIH_LISTS)
    test = {r.patient_id for r in nih.records if r.split == "test"}
    assert test == {"00000003", "00000007"}
    assert set(nih.splits) == {"train", "test"}


def test_nih_official_lists_must_be_patient_disjoint(tmp_path: Path) -> None:
    train, test = tmp_path / "train_val_list.txt", tmp_path / "test_list.txt"
    names = NIH_LISTS[0].read_text().split()
    train.write_text("\n".join(n for n in names if n != "00000001_001.png"))
    test.write_text(NIH_LISTS[1].read_text() + "00000001_001.png\n")
    with pytest.raises(ManifestError, match="are not; use them as published") as info:
        read_nih(NIH_CSV, NIH_DIRS, split_lists=(train, test))
    expected = "line 2 (00000001_000.png): column 'Patient ID': patient 00000001 has images in both lists"
    assert expected in str(info.value)
    test.write_text(NIH_LISTS[1].read_text())
    with pytest.raises(ManifestError, match=r"csv line 3 \(00000001_001\.png\): in neither list"):
        read_nih(NIH_CSV, NIH_DIRS, split_lists=(train, test))


def test_nih_missing_and_ambiguous_images(tmp_path: Path) -> None:
    nih = _copy(NIH, tmp_path)
    dirs = [nih / "images_001" / "images", nih / "images_002" / "images"]
    (dirs[0] / "00000002_000.png").unlink()
    with pytest.raises(ManifestError, match=r"\(00000002_000\.png\): image not found in"):
        read_nih(nih / NIH_CSV.name, dirs)
    shutil.copy(dirs[1] / "00000004_000.png", dirs[0] / "00000002_000.png")
    shutil.copy(dirs[1] / "00000004_000.png", dirs[0] / "00000004_000.png")
    with pytest.raises(ManifestError, match=r"\(00000004_000\.png\): found in several folders"):
        read_nih(nih / NIH_CSV.name, dirs)


def test_nih_bad_rows_are_named(tmp_path: Path) -> None:
    csv = tmp_path / NIH_CSV.name
    shutil.copy(NIH_CSV, csv)
    _rewrite(csv, "Effusion|Infiltration", "Effusion|Infiltrate")
    _rewrite(csv, "00000002_000.png,No Finding", "00000002_000.png,No Finding|Mass")
    with pytest.raises(ManifestError) as info:
        read_nih(csv, NIH_DIRS)
    text = str(info.value)
    assert "line 8 (00000005_000.png): column 'Finding Labels': unknown finding(s) ['Infiltrate']" in text
    assert "line 4 (00000002_000.png): column 'Finding Labels': 'No Finding' together with findings" in text
    csv.write_text(NIH_CSV.read_text().replace("Patient ID", "Patient", 1))
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['Patient ID'\]"):
        read_nih(csv, NIH_DIRS)


def _synthetic_nih(tmp_path: Path, patients: int, seed: int) -> tuple[Path, Path]:
    """A real-format CSV of ``patients`` patients with 1-4 images each, and empty image files."""
    rng = np.random.default_rng(seed)
    folder = tmp_path / "images"
    folder.mkdir()
    findings = ["No Finding", "Cardiomegaly", "Edema", "Nodule", "Mass|Effusion", "Cardiomegaly|Edema"]
    rows = []
    for patient in range(1, patients + 1):
        for follow_up in range(int(rng.integers(1, 5))):
            name = f"{patient:08d}_{follow_up:03d}.png"
            (folder / name).touch()
            label = findings[int(rng.choice(len(findings), p=[0.5, 0.15, 0.1, 0.1, 0.1, 0.05]))]
            rows.append(f"{name},{label},{follow_up},{patient},50,M,PA,2048,2048,0.14,0.14\n")
    csv = tmp_path / "Data_Entry_2017_v2020.csv"
    csv.write_text(",".join(NIH_CSV_COLUMNS) + "\n" + "".join(rows))
    return csv, folder


def test_nih_grouped_split_is_patient_disjoint_and_stratified(tmp_path: Path) -> None:
    csv, folder = _synthetic_nih(tmp_path, patients=400, seed=3)
    nih = read_nih(csv, [folder], test_fraction=0.2, seed=42)
    validate(nih)  # no patient in two splits, known split names
    frame = nih.frame()
    assert 0.17 < (frame["split"] == "test").mean() < 0.23
    prevalence = frame.groupby("split")[list(DISEASES)].mean()
    assert (prevalence.loc["test"] - prevalence.loc["train"]).abs().max() < 0.04
    again = read_nih(csv, [folder], test_fraction=0.2, seed=42)
    assert again.digest() == nih.digest()
    other = read_nih(csv, [folder], test_fraction=0.2, seed=7)
    assert other.frame()["split"].tolist() != frame["split"].tolist()


def test_grouped_split_needs_a_fold_fraction() -> None:
    with pytest.raises(ValueError, match="1/k"):
        grouped_split(["a"] * 10, [str(i) for i in range(10)], test_fraction=0.3, seed=0)
    split = grouped_split(["a", "b"] * 10, [str(i // 2) for i in range(20)], test_fraction=0.5, seed=0)
    assert split.count("test") == 10
    assert all(split[i] == split[i + 1] for i in range(0, 20, 2))  # both images of a patient together


# ---------------------------------------------------------------- MIMIC-CXR-JPG


def _mimic(**kw) -> Manifest:
    manifest, exclusions = read_mimic(
        MIMIC,
        metadata_csv=kw.pop("metadata_csv", MIMIC / "mimic-cxr-2.0.0-metadata.csv"),
        chexpert_csv=kw.pop("chexpert_csv", MIMIC / "mimic-cxr-2.0.0-chexpert.csv"),
        split_csv=kw.pop("split_csv", MIMIC / "mimic-cxr-2.0.0-split.csv"),
        **kw,
    )
    assert exclusions == []
    return manifest


def _dicom(prefix: str) -> str:
    lines = (MIMIC / "mimic-cxr-2.0.0-metadata.csv").read_text().splitlines()
    return next(line.split(",")[0] for line in lines if line.startswith(prefix))


def test_mimic_frontal_u_zero_and_paths() -> None:
    mimic = _mimic()
    records = {r.image_id[:8]: r for r in mimic.records}
    # Lateral (LATERAL, LL) and blank view positions are left out.
    assert sorted(records) == ["02aa804e", "2a2277a9", "3e0a3d87", "5a2c5fa9", "6b3d6ab0", "8d5f8cd2"]
    assert {r.view for r in mimic.records} == {"AP", "PA"}
    assert records["02aa804e"].labels == (("cardiomegaly", 1), ("edema", 0), ("lung_lesion", 0))  # -1, blank
    assert records["2a2277a9"].labels == (("cardiomegaly", 0), ("edema", 1), ("lung_lesion", 1))  # -1
    assert records["3e0a3d87"].labels == (("cardiomegaly", 0), ("edema", 0), ("lung_lesion", 0))  # 0, blank, -1
    first = records["02aa804e"]
    assert first.path == MIMIC / "files/p10/p10000032/s50414267" / first.image_id
    assert first.patient_id == "10000032"
    validate(mimic, check_readable=True)


def test_mimic_official_split_and_validate_handling() -> None:
    merged = {r.image_id[:8]: r.split for r in _mimic().records}
    assert merged == {
        "02aa804e": "train",
        "2a2277a9": "train",
        "3e0a3d87": "train",
        "5a2c5fa9": "train",  # official "validate", merged into train by default
        "6b3d6ab0": "test",
        "8d5f8cd2": "test",
    }
    kept = {r.image_id[:8]: r.split for r in _mimic(validate_split=Split.VALIDATE).records}
    assert kept["5a2c5fa9"] == "validate"
    with pytest.raises(ValueError, match="validate_split"):
        _mimic(validate_split=Split.TEST)


def test_mimic_subsample_restricts_train_only(tmp_path: Path) -> None:
    sub = _mimic(subsample_manifest=MIMIC / "subsample.csv")
    assert [r.image_id[:8] for r in sub.records if r.split == "train"] == ["2a2277a9"]
    assert len(sub.split("test")) == 2
    stray = tmp_path / "stray.csv"
    stray.write_text(f"dicom_id\n{_dicom('6b3d6ab0')}\n")
    with pytest.raises(ManifestError, match="not a frontal image of the official train split"):
        _mimic(subsample_manifest=stray)


def test_mimic_bad_values_are_named(tmp_path: Path) -> None:
    mimic = _copy(MIMIC, tmp_path)
    labels = mimic / "mimic-cxr-2.0.0-chexpert.csv"
    _rewrite(labels, "10000764,57375967,,0.0", "10000764,57375967,,2.0")
    with pytest.raises(ManifestError, match=r"line 4 \(s57375967\): column 'Cardiomegaly': '2.0'"):
        _mimic(chexpert_csv=labels)
    split = mimic / "mimic-cxr-2.0.0-split.csv"
    _rewrite(split, "11000183,validate", "11000183,val")
    with pytest.raises(ManifestError, match=r"line 7 \(5a2c5fa9-.*\): column 'split': 'val' is not one of"):
        _mimic(split_csv=split)


def test_make_mimic_subsample_round_trip(tmp_path: Path) -> None:
    out = make_mimic_subsample(_mimic(), 2, 0, out=tmp_path / "subsample.csv")
    table = pd.read_csv(out, dtype=str)
    assert list(table.columns) == ["dicom_id", "subject_id"]
    sub = _mimic(subsample_manifest=out)
    assert sorted(r.image_id.removesuffix(".jpg") for r in sub.split("train").records) == sorted(table["dicom_id"])
    assert len(sub.split("test")) == 2


def _many_patients(patients: int, seed: int) -> Manifest:
    rng = np.random.default_rng(seed)
    records = []
    for patient in range(patients):
        lesion = int(rng.random() < 0.2)
        for image in range(int(rng.integers(1, 4))):
            labels = (("cardiomegaly", 0), ("edema", 0), ("lung_lesion", lesion))
            records.append(Record(f"d{patient}_{image}.jpg", Path("x"), f"s{patient}", "train", "PA", labels))
    return Manifest("mimic", tuple(records), DISEASES)


def test_make_mimic_subsample_is_patient_whole_stratified_and_deterministic(tmp_path: Path) -> None:
    manifest = _many_patients(600, seed=1)
    first = make_mimic_subsample(manifest, 300, 5, out=tmp_path / "a.csv")
    again = make_mimic_subsample(manifest, 300, 5, out=tmp_path / "b.csv")
    assert first.read_bytes() == again.read_bytes()
    chosen = set(pd.read_csv(first, dtype=str)["dicom_id"])
    assert 295 <= len(chosen) <= 300
    by_patient: dict[str, set[bool]] = {}
    for r in manifest.records:
        by_patient.setdefault(r.patient_id, set()).add(r.image_id.removesuffix(".jpg") in chosen)
    assert all(len(flags) == 1 for flags in by_patient.values())  # every patient wholly in or out
    frame = manifest.frame()
    picked = frame[frame["image_id"].str.removesuffix(".jpg").isin(chosen)]
    assert abs(picked["lung_lesion"].mean() - frame["lung_lesion"].mean()) < 0.02
    with pytest.raises(ValueError, match="n must be"):
        make_mimic_subsample(manifest, len(manifest) + 1, 5, out=tmp_path / "c.csv")


# ---------------------------------------------------------------- institutional


def _institutional(csv: Path | None = None, **kw) -> Manifest:
    folder = FIXTURES / "institutional"
    return read_institutional(
        csv or folder / "cohort.csv",
        root=folder,
        columns=kw.pop("columns", INSTITUTIONAL_COLUMNS),
        window_columns=("voi_min", "voi_max"),
        **kw,
    )


def test_institutional_columns_windows_and_split_map() -> None:
    cohort = _institutional(split_map={"val": "train"})
    records = {r.image_id: r for r in cohort.records}
    assert records["emory_0001.png"].window == (1200.0, 3400.0)
    assert records["emory_0004.png"].window == (1100.5, 3900.25)
    assert records["emory_0003.png"].window is None
    assert records["emory_0003.png"].split == "train"
    assert records["emory_0004.png"].labels == (("cardiomegaly", 0), ("edema", 1), ("lung_lesion", 1))
    assert records["emory_0002.png"].view == "PA"
    assert records["emory_0002.png"].path == FIXTURES / "institutional" / "images" / "emory_0002.png"
    validate(cohort, check_readable=True)
    # Without the explicit mapping "val" stays as it is, and the reader names it.
    with pytest.raises(ManifestError, match=r"line 4 \(emory_0003\.png\): column 'partition': 'val' is not one"):
        _institutional()
    as_dataclass = InstitutionalColumns(
        path="image_path",
        patient_id="mrn",
        split="partition",
        labels=tuple(INSTITUTIONAL_COLUMNS["labels"].items()),
        view="view_position",
    )
    assert _institutional(columns=as_dataclass, split_map={"val": "train"}) == cohort


def test_institutional_bad_rows_are_named(tmp_path: Path) -> None:
    csv = tmp_path / "cohort.csv"
    csv.write_text((FIXTURES / "institutional" / "cohort.csv").read_text())
    _rewrite(csv, "MRN001,train,1,1,0,1000,3000", "MRN001,train,1,yes,0,1000,")
    _rewrite(csv, "MRN003,test,0,1,1,1100.5,3900.25", "MRN003,test,0,1,1,3900.25,1100.5")
    with pytest.raises(ManifestError) as info:
        _institutional(csv)
    text = str(info.value)
    assert "line 3 (emory_0002.png): column 'edema_label': 'yes' is not 0 or 1" in text
    assert "line 5 (emory_0004.png): columns 'voi_min', 'voi_max': need finite min < max" in text
    with pytest.raises(ValueError, match="unknown column mapping key"):
        _institutional(columns={**INSTITUTIONAL_COLUMNS, "sex": "gender"})


# ---------------------------------------------------------------- ChestX-Det10


def test_chestxdet10_labels_boxes_and_split() -> None:
    det = read_chestxdet10(DET / "train.json", DET / "test.json", DET_DIRS)
    assert det.label_names == ("Calcification", "Nodule", "Mass")
    labels = _labels(det)
    assert labels["00000091_005.png"] == (1, 1, 0)
    assert labels["00000155_000.png"] == (0, 1, 1)
    assert labels["00000042_006.png"] == (0, 0, 0)  # Fibrosis only
    assert labels["00000091_006.png"] == (0, 0, 0)  # no findings
    records = {r.image_id: r for r in det.records}
    # [200, 250, 320, 380] in the file: inclusive corners, so the half-open Box ends one pixel further
    assert records["00000155_000.png"].boxes[0] == LesionBox("Mass", Box(200, 250, 321, 381))
    assert records["00000091_005.png"].patient_id == records["00000091_006.png"].patient_id == "00000091"
    assert records["00000201_001.png"].split == "test"
    assert records["00000201_001.png"].path == DET / "test_data" / "00000201_001.png"
    boxes = det.boxes_frame()
    # Boxes of the other classes stay, flagged as not a target.
    assert sorted(boxes.loc[~boxes["is_target"], "label"]) == ["Effusion", "Fibrosis", "Fibrosis"]
    assert len(boxes) == 8
    validate(det, known_classes=set(CHESTXDET10_CLASSES), check_readable=True)
    nodule = read_chestxdet10(DET / "train.json", DET / "test.json", DET_DIRS, classes=("Nodule",))
    assert nodule.label_names == ("Nodule",)
    with pytest.raises(ValueError, match="ChestX-Det10 classes"):
        read_chestxdet10(DET / "train.json", DET / "test.json", DET_DIRS, classes=("Lesion",))


def test_chestxdet10_bad_records_are_named(tmp_path: Path) -> None:
    items = json.loads((DET / "train.json").read_text())
    items[1]["boxes"] = items[1]["boxes"][:1]
    items[3]["syms"][1] = "Pleural Thickening"
    items[2]["boxes"] = [[1, 2, 3.5, 4]]
    items[2]["syms"] = ["Nodule"]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(items))
    with pytest.raises(ManifestError) as info:
        read_chestxdet10(train, DET / "test.json", DET_DIRS)
    text = str(info.value)
    assert "train.json[1] (00000091_005.png): 2 syms but 1 boxes" in text
    assert "train.json[3] (00000155_000.png): syms[1] 'Pleural Thickening' is not a ChestX-Det10 class" in text
    assert "train.json[2] (00000091_006.png): boxes[0] corner 3.5 is not a whole pixel" in text


def test_chestxdet10_file_in_both_splits(tmp_path: Path) -> None:
    test = tmp_path / "test.json"
    items = json.loads((DET / "test.json").read_text())
    test.write_text(json.dumps([*items, {"file_name": "00000042_006.png", "syms": [], "boxes": []}]))
    with pytest.raises(ManifestError, match=r"test\.json\[2\] \(00000042_006\.png\): listed 2 times"):
        read_chestxdet10(DET / "train.json", test, DET_DIRS)


# ---------------------------------------------------------------- demo cohort and real films


def test_demo_cohort() -> None:
    demo = read_demo(FIXTURES / "demo")
    assert demo.label_names == (*DISEASES, "Calcification", "Nodule", "Mass")
    records = {r.image_id: r for r in demo.records}
    assert records["demo_0003.png"].labels == (
        ("cardiomegaly", 1),
        ("edema", 1),
        ("lung_lesion", 1),
        ("Calcification", 1),
        ("Nodule", 0),
        ("Mass", 1),
    )
    # The demo's train.json says [400, 380, 412, 392]: its generator writes half-open corners, read as they are.
    assert records["demo_0000.png"].boxes == (LesionBox("Nodule", Box(400, 380, 412, 392)),)
    assert records["demo_0001.png"].patient_id == "drr_p000"
    assert records["demo_0001.png"].path == FIXTURES / "demo" / "images" / "demo_0001.png"
    validate(demo, known_classes=set(CHESTXDET10_CLASSES), check_readable=True)


def test_demo_cohort_mismatches_are_named(tmp_path: Path) -> None:
    demo = _copy(FIXTURES / "demo", tmp_path)
    _rewrite(demo / "labels.csv", "demo_0002,drr_p001,train", "demo_0002,drr_p001,test")
    _rewrite(demo / "labels.csv", "demo_0004,drr_p003,test,PA,0,0,0,0.45\n", "")
    with pytest.raises(ManifestError) as info:
        read_demo(demo)
    text = str(info.value)
    assert "line 4 (demo_0002): split 'test' but listed in train.json[2]" in text
    assert "test.json[1] (demo_0004): not in labels.csv" in text
    _rewrite(demo / "labels.csv", ",ctr", ",cardiothoracic_ratio")
    with pytest.raises(ManifestError, match="missing column"):
        read_demo(demo)


def test_real_films() -> None:
    films = [
        ("RG1_UNCR", "/data/RG1_UNCR.dcm", "adult", "unknown"),
        ("NORMAL2-IM-1427-0001", "/data/NORMAL2-IM-1427-0001.jpeg", "paediatric", "normal"),
        ("person1_virus_6", "/data/person1_virus_6.jpeg", "paediatric", "pneumonia"),
    ]
    manifest = read_real_films(films)
    assert manifest.label_names == ("normal", "pneumonia", "unknown")
    records = {r.patient_id: r for r in manifest.records}
    assert records["RG1_UNCR"].image_id == "RG1_UNCR.dcm"
    assert records["RG1_UNCR"].group == "adult"
    assert records["person1_virus_6"].labels == (("normal", 0), ("pneumonia", 1), ("unknown", 0))
    assert set(manifest.splits) == {"test"}
    validate(manifest, check_files=False)


# ---------------------------------------------------------------- summaries


def test_describe_counts() -> None:
    table = describe(read_nih(NIH_CSV, NIH_DIRS, split_lists=NIH_LISTS))
    row = table[(table["split"] == "train") & (table["label"] == "cardiomegaly")].iloc[0]
    assert (row["images"], row["patients"], row["positives"]) == (7, 5, 3)
    total = table[(table["split"] == "all") & (table["label"] == "lung_lesion")].iloc[0]
    assert (total["images"], total["positives"]) == (10, 4)
    assert total["prevalence"] == pytest.approx(0.4)
    assert table["split"].unique().tolist() == ["train", "test", "all"]


def test_box_size_summary() -> None:
    table = box_size_summary(read_chestxdet10(DET / "train.json", DET / "test.json", DET_DIRS))
    calcification = table[(table["split"] == "all") & (table["label"] == "Calcification")].iloc[0]
    assert (calcification["boxes"], calcification["images"]) == (2, 2)
    assert calcification["area_median"] == pytest.approx((13 * 15 + 17 * 12) / 2)  # inclusive corners: +1 px
    nodule = table[(table["split"] == "train") & (table["label"] == "Nodule")].iloc[0]
    assert nodule["area_median"] == pytest.approx((31 * 29 + 27 * 31) / 2)
    assert nodule["side_median"] == pytest.approx((np.sqrt(31 * 29) + np.sqrt(27 * 31)) / 2)
    assert bool(nodule["is_target"])
    fibrosis = table[(table["split"] == "all") & (table["label"] == "Fibrosis")].iloc[0]
    assert not bool(fibrosis["is_target"])
    assert (fibrosis["boxes"], fibrosis["images"]) == (2, 1)
