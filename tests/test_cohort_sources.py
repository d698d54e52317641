"""Cohort readers against their sources: the real NIH metadata, and one test per kind of bad input.

Every bad-input message must name the file, the line a user sees in an editor (the header is line 1) and the
column, and every problem of a file must come in one message. The real public metadata lives outside the
repository (``../shared/realdata``); the tests that need it skip when it is absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cohort_fixtures import INSTITUTIONAL, INSTITUTIONAL_COLUMNS, MIMIC, NIH_CSV, NIH_DIRS, NIH_LISTS

from lesionsignal.data.institutional import read_institutional
from lesionsignal.data.manifest import DISEASES, MAX_SHOWN, Manifest, ManifestError
from lesionsignal.data.mimic import read_mimic
from lesionsignal.data.nih import read_nih
from lesionsignal.data.validation import Exclusion, validate
from lesionsignal.pipeline import cohorts
from lesionsignal.pipeline.stage import StageName, open_run
from lesionsignal.pipeline.stages import ensure

ROOT = Path(__file__).resolve().parents[1]
REAL_NIH = ROOT.parent / "shared" / "realdata" / "nih-cxr14"

needs_real_nih = pytest.mark.skipif(
    not (REAL_NIH / "Data_Entry_2017_v2020.csv").is_file(),
    reason=f"the public NIH metadata is not at {REAL_NIH} (only in the project's shared test data)",
)


def _edited(tmp_path: Path, source: Path, *edits: tuple[str, str]) -> Path:
    """A copy of ``source`` in tmp_path with each (old, new) replaced once; old must be there."""
    text = source.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    copy = tmp_path / source.name
    copy.write_text(text)
    return copy


def _message(err: pytest.ExceptionInfo[ManifestError]) -> str:
    return str(err.value)


# ---------------------------------------------------------------- NIH: the real metadata


def _real_lists() -> tuple[Path, Path]:
    return REAL_NIH / "train_val_list.txt", REAL_NIH / "test_list.txt"


def _recount(csv: Path, lists: tuple[Path, Path]) -> pd.DataFrame:
    """Positives per split and label, counted with plain pandas from the CSV and the lists."""
    table = pd.read_csv(csv)
    findings = table["Finding Labels"].str.split("|")
    table["cardiomegaly"] = findings.apply(lambda names: "Cardiomegaly" in names).astype(int)
    table["edema"] = findings.apply(lambda names: "Edema" in names).astype(int)
    table["lung_lesion"] = findings.apply(lambda names: "Mass" in names or "Nodule" in names).astype(int)
    test = set(pd.read_csv(lists[1], header=None)[0])
    table["split"] = ["test" if name in test else "train" for name in table["Image Index"]]
    return table.groupby("split")[list(DISEASES)].sum()


@needs_real_nih
def test_real_nih_metadata_loads_into_the_official_split() -> None:
    lists = _real_lists()
    nih = read_nih(REAL_NIH / "Data_Entry_2017_v2020.csv", None, split_lists=lists)
    frame = nih.frame()
    assert len(frame) == 112_120
    assert frame["patient_id"].nunique() == 30_805
    assert frame["split"].value_counts().to_dict() == {"train": 86_524, "test": 25_596}
    validate(nih, check_files=False)  # among other checks: no patient in both splits
    positives = frame.groupby("split")[list(DISEASES)].sum()
    assert positives.sort_index().equals(_recount(REAL_NIH / "Data_Entry_2017_v2020.csv", lists).sort_index())
    assert frame["view"].value_counts().to_dict() == {"PA": 67_310, "AP": 44_810}


@needs_real_nih
def test_real_nih_csv_cut_short_is_refused_naming_the_lists(tmp_path: Path) -> None:
    lines = (REAL_NIH / "Data_Entry_2017_v2020.csv").read_text().splitlines(keepends=True)
    csv = tmp_path / "Data_Entry_2017_v2020.csv"
    csv.write_text("".join(lines[: 1 + 58_194]))  # cut at a row boundary: every row left is whole
    kept = {line.split(",")[0] for line in lines[1 : 1 + 58_194]}
    listed = [path.read_text().split() for path in _real_lists()]
    missing = [[name for name in names if name not in kept] for names in listed]
    with pytest.raises(ManifestError) as err:
        read_nih(csv, None, split_lists=_real_lists())
    text = _message(err)
    assert text.startswith(f"{csv} against the split lists {REAL_NIH / 'train_val_list.txt'}")
    total = len(missing[0]) + len(missing[1])
    assert total == 53_926
    assert f"{total} problem(s)" in text and f"... and {total - MAX_SHOWN} more" in text
    assert f"train_val_list.txt: {len(missing[0]):,} of 86,524; test_list.txt: {len(missing[1]):,} of 25,596" in text
    assert "which has 58,194 data rows" in text
    first = missing[0][0]
    line = listed[0].index(first) + 1
    assert f"train_val_list.txt line {line} ({first}): not in Data_Entry_2017_v2020.csv" in text


# ---------------------------------------------------------------- NIH: bad input


def test_nih_csv_cut_short_at_a_row_boundary(tmp_path: Path) -> None:
    lines = NIH_CSV.read_text().splitlines(keepends=True)
    csv = tmp_path / NIH_CSV.name
    csv.write_text("".join(lines[:-2]))  # loses 00000006_001.png (train) and 00000007_000.png (test)
    with pytest.raises(ManifestError) as err:
        read_nih(csv, NIH_DIRS, split_lists=NIH_LISTS)
    text = _message(err)
    assert str(csv) in text and str(NIH_LISTS[0]) in text and str(NIH_LISTS[1]) in text
    assert "train_val_list.txt line 7 (00000006_001.png): not in Data_Entry_2017_v2020.csv" in text
    assert "test_list.txt line 3 (00000007_000.png): not in Data_Entry_2017_v2020.csv" in text
    assert "2 images of the split lists are missing" in text and "train_val_list.txt: 1 of 7" in text
    assert "leave out split_lists" in text


def test_nih_csv_cut_inside_a_row(tmp_path: Path) -> None:
    text = NIH_CSV.read_text()
    csv = tmp_path / NIH_CSV.name
    csv.write_text(text[: text.index("00000007_000.png") + len("00000007_000.png,Ede")])
    with pytest.raises(ManifestError) as err:
        read_nih(csv, NIH_DIRS, split_lists=NIH_LISTS)
    assert f"{csv}: 1 problem(s):\n  line 11: 2 cells, but the header (line 1) has 11" in _message(err)
    assert "cut short" in _message(err)


def test_nih_patient_id_must_match_the_image_name(tmp_path: Path) -> None:
    csv = _edited(tmp_path, NIH_CSV, ("00000004_000.png,Nodule,0,4,", "00000004_000.png,Nodule,0,5,"))
    with pytest.raises(ManifestError) as err:
        read_nih(csv, NIH_DIRS, split_lists=NIH_LISTS)
    expected = "line 7 (00000004_000.png): column 'Patient ID': 5 but the image name says 00000004"
    assert _message(err) == f"{csv}: 1 problem(s):\n  {expected}"


def test_nih_blank_and_unknown_views_are_named_together(tmp_path: Path) -> None:
    csv = _edited(
        tmp_path,
        NIH_CSV,
        ("00000002_000.png,No Finding,0,2,81,M,PA", "00000002_000.png,No Finding,0,2,81,M,"),
        ("00000005_000.png,Effusion|Infiltration,0,5,69,F,PA", "00000005_000.png,Effusion|Infiltration,0,5,69,F,LL"),
    )
    with pytest.raises(ManifestError) as err:
        read_nih(csv, NIH_DIRS, split_lists=NIH_LISTS)
    text = _message(err)
    assert text.startswith(f"{csv}: 2 problem(s):")
    assert "line 4 (00000002_000.png): column 'View Position': blank, but must be one of the NIH views PA, AP" in text
    assert "line 8 (00000005_000.png): column 'View Position': 'LL' is not one of the NIH views PA, AP" in text


def test_nih_non_numeric_patient_id_names_column_and_line(tmp_path: Path) -> None:
    csv = _edited(
        tmp_path,
        NIH_CSV,
        ("00000003_000.png,Edema|Nodule,0,3,", "00000003_000.png,Edema|Nodule,0,P3,"),
        ("00000006_001.png,No Finding,1,6,", "00000006_001.png,No Finding,1,,"),
        ("00000007_000.png,Edema,", "00000007_000.png,Oedema,"),
    )
    with pytest.raises(ManifestError) as err:
        read_nih(csv, NIH_DIRS, split_lists=NIH_LISTS)
    text = _message(err)
    assert text.startswith(f"{csv}: 3 problem(s):")  # every bad cell of the file in one message
    assert "line 5 (00000003_000.png): column 'Patient ID': 'P3' is not a whole number" in text
    assert "line 10 (00000006_001.png): column 'Patient ID': blank" in text
    assert "line 11 (00000007_000.png): column 'Finding Labels': unknown finding(s) ['Oedema']" in text


def test_nih_lines_are_the_editor_lines_across_blank_lines_and_quoted_cells(tmp_path: Path) -> None:
    csv = _edited(
        tmp_path,
        NIH_CSV,
        ("00000002_000.png,No Finding", "\n00000002_000.png,No Finding"),  # a blank line 4
        ("00000003_000.png,Edema|Nodule,0,3,74,F,AP", '00000003_000.png,Edema|Nodule,0,3,"74\n",F,AP'),
        ("00000004_000.png,Nodule,0,4,57,M,AP", "00000004_000.png,Nodule,0,4,57,M,PAA"),
    )
    with pytest.raises(ManifestError) as err:
        read_nih(csv, NIH_DIRS)
    # 00000004_000.png is the 6th data row, but the blank line and the cell spanning two lines push it to line 9
    assert "line 9 (00000004_000.png): column 'View Position': 'PAA' is not one" in _message(err)


def test_nih_repeated_image_names_are_named_with_their_lines(tmp_path: Path) -> None:
    csv = _edited(tmp_path, NIH_CSV, ("00000006_001.png,No Finding,1,6", "00000006_000.png,No Finding,1,6"))
    with pytest.raises(ManifestError) as err:
        read_nih(csv, NIH_DIRS)
    assert "line 10 (00000006_000.png): column 'Image Index': repeated on lines 9, 10" in _message(err)


# ---------------------------------------------------------------- MIMIC-CXR-JPG: a study without a CheXpert row


def _unlabelled_chexpert(tmp_path: Path) -> Path:
    """The fixture's CheXpert file without study 59999999, whose frontal image is 8d5f8cd2-... (test split)."""
    rows = (MIMIC / "mimic-cxr-2.0.0-chexpert.csv").read_text().splitlines(keepends=True)
    path = tmp_path / "mimic-cxr-2.0.0-chexpert.csv"
    path.write_text("".join(row for row in rows if ",59999999," not in row))
    return path


def _read_mimic(chexpert: Path, **kw) -> tuple[Manifest, list[Exclusion]]:
    files = {"metadata_csv": MIMIC / "mimic-cxr-2.0.0-metadata.csv", "split_csv": MIMIC / "mimic-cxr-2.0.0-split.csv"}
    return read_mimic(MIMIC, chexpert_csv=chexpert, **{**files, **kw})


def test_mimic_study_without_labels_is_an_error_naming_file_study_and_option(tmp_path: Path) -> None:
    chexpert = _unlabelled_chexpert(tmp_path)
    with pytest.raises(ManifestError) as err:
        _read_mimic(chexpert)
    text = _message(err)
    assert text.startswith(f"{chexpert}: 1 problem(s):")
    assert "mimic-cxr-2.0.0-metadata.csv line 10 (8d5f8cd2-60719eaf-e2d3c4b5-f6071829-3a4b5c6d): study 59999999" in text
    assert "Set exclude_invalid: true" in text


def test_mimic_study_without_labels_is_excluded_when_asked(tmp_path: Path) -> None:
    chexpert = _unlabelled_chexpert(tmp_path)
    manifest, exclusions = _read_mimic(chexpert, exclude_unlabelled=True)
    image = "8d5f8cd2-60719eaf-e2d3c4b5-f6071829-3a4b5c6d.jpg"
    reason = "study 59999999 (subject 19999287) has no row in mimic-cxr-2.0.0-chexpert.csv"
    assert exclusions == [Exclusion(image, reason)]
    assert image not in {r.image_id for r in manifest.records}
    assert len(manifest) == 5  # the fixture's six frontal images less the unlabelled one
    everything, none = _read_mimic(MIMIC / "mimic-cxr-2.0.0-chexpert.csv", exclude_unlabelled=True)
    assert none == [] and len(everything) == 6


def _mimic_params(tmp_path: Path, chexpert: Path, exclude: bool) -> Path:
    cohort = {
        "name": "mimic",
        "kind": "mimic",
        "root": str(MIMIC),
        "metadata_csv": str(MIMIC / "mimic-cxr-2.0.0-metadata.csv"),
        "chexpert_csv": str(chexpert),
        "split_csv": str(MIMIC / "mimic-cxr-2.0.0-split.csv"),
        "exclude_invalid": exclude,
    }
    data = {"name": "t", "run": "study", "paths": {"work": str(tmp_path / "work")}, "cohorts": [cohort]}
    path = tmp_path / f"exclude-{exclude}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_mimic_exclusions_reach_the_cohorts_stage(tmp_path: Path) -> None:
    chexpert = _unlabelled_chexpert(tmp_path)
    with pytest.raises(ManifestError, match="exclude_invalid: true"):
        ensure(open_run(_mimic_params(tmp_path, chexpert, exclude=False)), StageName.COHORTS)
    run = open_run(_mimic_params(tmp_path, chexpert, exclude=True))
    ensure(run, StageName.COHORTS)
    folder = cohorts.manifest_folder(run, "mimic")
    listed = pd.read_csv(folder / "exclusions.csv", dtype=str)
    assert listed["image_id"].tolist() == ["8d5f8cd2-60719eaf-e2d3c4b5-f6071829-3a4b5c6d.jpg"]
    assert "has no row in mimic-cxr-2.0.0-chexpert.csv" in listed["reason"][0]
    assert len(cohorts.manifest(run, "mimic")) == 5


def test_mimic_metadata_problems_name_line_and_column(tmp_path: Path) -> None:
    metadata = _edited(
        tmp_path,
        MIMIC / "mimic-cxr-2.0.0-metadata.csv",
        (
            "3e0a3d87-1b2c4f5a-9d8e7f60-a1b2c3d4-e5f60718,10000764,",
            "3e0a3d87-1b2c4f5a-9d8e7f60-a1b2c3d4-e5f60718,p10000764,",
        ),
        (
            "5a2c5fa9-3d4e6b7c-bfa09182-c3d4e5f6-0718293a,11000183,51967845",
            "5a2c5fa9-3d4e6b7c-bfa09182-c3d4e5f6-0718293a,11000183,",
        ),
    )
    with pytest.raises(ManifestError) as err:
        _read_mimic(MIMIC / "mimic-cxr-2.0.0-chexpert.csv", metadata_csv=metadata)
    text = _message(err)
    assert text.startswith(f"{metadata}: 2 problem(s):")
    assert (
        "line 5 (3e0a3d87-1b2c4f5a-9d8e7f60-a1b2c3d4-e5f60718): column 'subject_id': 'p10000764' is not a whole" in text
    )
    assert "line 7 (5a2c5fa9-3d4e6b7c-bfa09182-c3d4e5f6-0718293a): column 'study_id': blank" in text


def test_mimic_image_missing_from_the_split_file_names_its_metadata_line(tmp_path: Path) -> None:
    rows = (MIMIC / "mimic-cxr-2.0.0-split.csv").read_text().splitlines(keepends=True)
    split = tmp_path / "mimic-cxr-2.0.0-split.csv"
    split.write_text("".join(row for row in rows if not row.startswith("6b3d6ab0")))
    with pytest.raises(ManifestError) as err:
        _read_mimic(MIMIC / "mimic-cxr-2.0.0-chexpert.csv", split_csv=split)
    expected = (
        "line 8 (6b3d6ab0-4e5f7c8d-c0b1a293-d4e5f607-18293a4b): column 'dicom_id': not in mimic-cxr-2.0.0-split.csv"
    )
    assert _message(err).startswith(f"{MIMIC / 'mimic-cxr-2.0.0-metadata.csv'}: 1 problem(s):\n  {expected}")


# ---------------------------------------------------------------- institutional


def _institutional(csv: Path, **kw):
    return read_institutional(
        csv,
        root=INSTITUTIONAL,
        columns=INSTITUTIONAL_COLUMNS,
        window_columns=("voi_min", "voi_max"),
        split_map={"val": "train"},
        **kw,
    )


def test_institutional_problems_name_line_and_column_all_at_once(tmp_path: Path) -> None:
    csv = _edited(
        tmp_path,
        INSTITUTIONAL / "cohort.csv",
        ("images/emory_0001.png,MRN001,train,1,0,0,1200,3400,PA", "images/emory_0001.png,,train,1,0,0,1200,3400,"),
        (
            "images/emory_0002.png,MRN001,train,1,1,0,1000,3000,PA",
            "images/emory_0002.png,MRN001,training,1,1,0,1000,3000,LL",
        ),
        (
            "images/emory_0004.png,MRN003,test,0,1,1,1100.5,3900.25,AP",
            "images/emory_0004.png,MRN003,test,0,1,1,x,3900.25,AP",
        ),
    )
    with pytest.raises(ManifestError) as err:
        _institutional(csv)
    text = _message(err)
    assert text.startswith(f"{csv}: 5 problem(s):")
    assert "line 2 (emory_0001.png): column 'mrn': blank" in text  # patient id
    assert "line 2 (emory_0001.png): column 'view_position': blank, but must be one of the frontal views AP, PA" in text
    assert (
        "line 3 (emory_0002.png): column 'partition': 'training' is not one of the splits train, validate, test" in text
    )
    assert "line 3 (emory_0002.png): column 'view_position': 'LL' is not one of the frontal views AP, PA" in text
    assert "line 5 (emory_0004.png): columns 'voi_min', 'voi_max': 'x', '3900.25' are not numbers" in text


def test_institutional_cut_short_and_repeated_files(tmp_path: Path) -> None:
    text = (INSTITUTIONAL / "cohort.csv").read_text()
    csv = tmp_path / "cohort.csv"
    csv.write_text(text[: text.index("images/emory_0004.png") + len("images/emory_0004.png,MRN0")])
    with pytest.raises(ManifestError) as err:
        _institutional(csv)
    assert f"{csv}: 1 problem(s):\n  line 5: 2 cells, but the header (line 1) has 9" in _message(err)
    csv = _edited(
        tmp_path, INSTITUTIONAL / "cohort.csv", ("images/emory_0004.png,MRN003", "other/emory_0001.png,MRN003")
    )
    with pytest.raises(ManifestError) as err:
        _institutional(csv)
    assert "line 5 (emory_0001.png): column 'image_path' (its file name is the image id): repeated on lines 2, 5" in (
        _message(err)
    )


def test_institutional_split_map_to_an_unknown_split_is_named(tmp_path: Path) -> None:
    csv = shutil.copy(INSTITUTIONAL / "cohort.csv", tmp_path / "cohort.csv")
    with pytest.raises(ManifestError, match=r"line 4 \(emory_0003\.png\): column 'partition': 'val' becomes 'dev'"):
        read_institutional(csv, root=INSTITUTIONAL, columns=INSTITUTIONAL_COLUMNS, split_map={"val": "dev"})
