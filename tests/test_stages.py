"""Stages: the cohorts stage on the fixture files of the real formats, detection sets, and how stages hand results
on (run once per input, re-run when a parameter or the code they import changes, upstream stages run first)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lesionsignal.core.box import Box
from lesionsignal.data.manifest import Manifest, ManifestError, SplitPolicy
from lesionsignal.pipeline import cohorts
from lesionsignal.pipeline.cohorts import detection_items, splits_of
from lesionsignal.pipeline.stage import Run, StageName, open_run, output
from lesionsignal.pipeline.stages import ensure

FIXTURES = Path(__file__).parent / "fixtures" / "cohorts"


def _params(tmp_path: Path, cohort: dict, **extra) -> Path:
    data = {"name": "t", "run": "study", "paths": {"work": str(tmp_path / "work")}, "cohorts": [cohort], **extra}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def read_cohort(run: Run, name: str) -> Manifest:
    """The validated cohort, through the cohorts stage."""
    ensure(run, StageName.COHORTS)
    return cohorts.manifest(run, name)


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
    run = open_run(_params(tmp_path, _nih()))
    manifest = read_cohort(run, "nih")
    saved = Manifest.load(tmp_path / "work" / "runs" / "t" / "cohorts" / "manifests" / "nih")
    assert saved.digest() == manifest.digest()
    assert set(splits_of(manifest).values()) <= {"train", "test"}


def test_detection_set_is_a_seeded_subsample(tmp_path: Path) -> None:
    run = open_run(_params(tmp_path, _nih(n_images=4, seed=3)))
    manifest = read_cohort(run, "nih")
    first = detection_items(manifest, run.params.cohorts[0])
    again = detection_items(manifest, run.params.cohorts[0])
    assert [i.image_id for i in first] == [i.image_id for i in again]
    assert len(first) == 4 and [i.image_id for i in first] == sorted(i.image_id for i in first)
    assert {i.image_id for i in first} <= {r.image_id for r in manifest.records}
    everything = open_run(_params(tmp_path, _nih())).params
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
    run = open_run(_params(tmp_path, cohort))
    with pytest.raises((ManifestError, ValueError), match=victim.name):
        read_cohort(run, "nih")
    assert not (tmp_path / "work" / "runs" / "t" / "cohorts" / "done.json").exists()


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
    manifest = read_cohort(open_run(path), "films")
    assert len(manifest.records) == 17
    assert {r.split for r in manifest.records} == {"test"}
    assert "RG1_UNCR.dcm" in {r.image_id for r in manifest.records}


def _chestxdet10(tmp_path: Path, **extra) -> dict:
    """A tiny ChestX-Det10 in both releases: numeric names in train/test.json, NIH names in the first release,
    patient 00000001 on both sides of the split; the images under their NIH names in two folders."""
    nih = [["00000001_000.png", "00000002_000.png", "00000003_000.png"], ["00000001_001.png", "00000004_000.png"]]
    boxes = (
        [[["Nodule"], [[10, 20, 30, 40]]], [[], []], [["Mass"], [[100, 100, 300, 300]]]],
        [[["Nodule"], [[5, 5, 9, 9]]], [[], []]],
    )
    folders = [tmp_path / "images_001", tmp_path / "images_002"]
    paths: dict[str, list[str]] = {"json": [], "map": []}
    for side, (split, names) in enumerate(zip(("train", "test"), nih, strict=True)):
        for key, file_names, suffix in (
            ("json", [f"{side}{k}.png" for k in range(len(names))], ""),
            ("map", names, "_v20200617"),
        ):
            records = [
                {"file_name": n, "syms": b[0], "boxes": b[1]} for n, b in zip(file_names, boxes[side], strict=True)
            ]
            target = tmp_path / f"{split}{suffix}.json"
            target.write_text(json.dumps(records))
            paths[key].append(str(target))
        for k, name in enumerate(names):
            folders[k % 2].mkdir(exist_ok=True)
            (folders[k % 2] / name).touch()
    return {
        "name": "det",
        "kind": "chestxdet10",
        "uses": ["lesions"],
        "train_json": paths["json"][0],
        "test_json": paths["json"][1],
        "name_map_jsons": paths["map"],
        "image_dirs": [str(f) for f in folders],
        **extra,
    }


def test_chestxdet10_official_split_is_kept_and_its_overlap_recorded(tmp_path: Path) -> None:
    run = open_run(_params(tmp_path, _chestxdet10(tmp_path)))
    manifest = read_cohort(run, "det")
    assert manifest.split_policy is SplitPolicy.OVERLAP_REPORTED
    assert {r.image_id: r.patient_id for r in manifest.records}["00000001_001.png"] == "00000001"
    record = json.loads((cohorts.manifest_folder(run, "det") / "manifest.json").read_text())
    assert record["split_policy"] == "overlap_reported" and record["patient_ids"] == "source"
    shared = output(run, StageName.COHORTS, cohorts.SPLITS).set_index("split")
    assert shared.loc["train", ["cohort", "images", "shared_patients", "shared_images"]].tolist() == ["det", 3, 1, 1]
    assert shared.loc["test", ["images", "shared_patients", "shared_images"]].tolist() == [2, 1, 1]
    boxes = {r.image_id: r.boxes for r in manifest.records}
    assert boxes["00000001_000.png"][0].box == Box(10, 20, 31, 41)  # inclusive corners by default


def test_chestxdet10_patient_disjoint_resplit_through_the_parameters(tmp_path: Path) -> None:
    cohort = _chestxdet10(tmp_path, split="patient_disjoint", seed=3, box_corners="half_open")
    run = open_run(_params(tmp_path, cohort))
    manifest = read_cohort(run, "det")
    assert manifest.split_policy is SplitPolicy.PATIENT_DISJOINT
    splits = splits_of(manifest)
    # Patient 00000001 (2 images) would double the official test size of 2: it joins train, whole.
    assert splits["00000001_000.png"] == splits["00000001_001.png"] == "train"
    assert output(run, StageName.COHORTS, cohorts.SPLITS)["shared_patients"].tolist() == [0, 0, 0]
    assert {r.image_id: r.boxes for r in manifest.records}["00000001_000.png"][0].box == Box(10, 20, 30, 40)


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
    manifest = read_cohort(open_run(_params(tmp_path, cohort)), "emory")
    first = next(r for r in manifest.records if r.image_id == "emory_0001.png")
    assert first.window == (1200.0, 3400.0) and first.patient_id == "MRN001"
    assert dict(first.labels)["cardiomegaly"] == 1


# ------------------------------------------------------------------------ how stages hand their results on


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The stage registry with every compute counted."""
    from dataclasses import replace

    from lesionsignal.pipeline import stages

    calls: dict[str, int] = {}

    def counting(stage):
        def compute(run: Run) -> bool:
            calls[stage.name] = calls.get(stage.name, 0) + 1
            return stage.compute(run)

        return replace(stage, compute=compute)

    monkeypatch.setattr(stages, "STAGES", {name: counting(stage) for name, stage in stages.STAGES.items()})
    return calls


def test_a_stage_runs_once_per_input_and_again_when_a_result_setting_changes(tmp_path: Path, counted) -> None:
    path = _params(tmp_path, _nih(n_images=4))
    assert ensure(open_run(path), StageName.COHORTS)
    assert counted == {"demo_cohort": 1, "cohorts": 1}
    assert ensure(open_run(path), StageName.COHORTS)  # same parameters, same code: read, not run
    assert counted == {"demo_cohort": 1, "cohorts": 1}
    faster = _params(tmp_path, _nih(n_images=4), extraction={"workers": 1})  # speed only: nothing to redo
    assert ensure(open_run(faster), StageName.COHORTS)
    assert counted == {"demo_cohort": 1, "cohorts": 1}
    other = _params(tmp_path, _nih(n_images=4), panel={"margin": 0.2})  # a result setting: every stage again
    assert ensure(open_run(other), StageName.COHORTS)
    assert counted == {"demo_cohort": 2, "cohorts": 2}


def test_upstream_stages_run_first_and_say_so(tmp_path: Path, counted, capsys: pytest.CaptureFixture) -> None:
    run = open_run(_params(tmp_path, _nih(n_images=4)))
    assert ensure(run, StageName.COHORTS)
    out = capsys.readouterr().out
    assert "stage demo_cohort: no outputs for these parameters and code; running it now" in out
    assert "`make section S=01`" in out
    assert "stage cohorts: no outputs" not in out  # the stage asked for runs without an announcement


def test_a_stage_that_fails_leaves_no_record_and_runs_again(tmp_path: Path, counted, monkeypatch) -> None:
    from dataclasses import replace

    from lesionsignal.pipeline import stages

    run = open_run(_params(tmp_path, _nih(n_images=4)))
    original = stages.STAGES[StageName.COHORTS]

    def crash(run: Run) -> bool:
        (run.catalog.stage(StageName.COHORTS) / "half-written.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setitem(stages.STAGES, StageName.COHORTS, replace(original, compute=crash))
    with pytest.raises(KeyboardInterrupt):
        ensure(run, StageName.COHORTS)
    assert not (run.catalog.stage(StageName.COHORTS) / "done.json").exists()
    monkeypatch.setitem(stages.STAGES, StageName.COHORTS, original)
    assert ensure(run, StageName.COHORTS)
    assert not (run.catalog.stage(StageName.COHORTS) / "half-written.json").exists()  # a fresh folder
    assert cohorts.manifest(run, "nih").records


def test_editing_a_module_a_stage_imports_runs_it_again(tmp_path: Path, counted, monkeypatch) -> None:
    import shutil

    from lesionsignal.core import digests

    package = tmp_path / "lesionsignal"
    shutil.copytree(digests.PACKAGE_ROOT, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(digests, "PACKAGE_ROOT", package)
    path = _params(tmp_path, _nih(n_images=4))
    assert ensure(open_run(path), StageName.COHORTS) and counted["cohorts"] == 1
    with (package / "paper" / "figures.py").open("a") as handle:
        handle.write("\n# not imported by the cohorts stage\n")
    assert ensure(open_run(path), StageName.COHORTS) and counted["cohorts"] == 1
    with (package / "data" / "validation.py").open("a") as handle:
        handle.write("\n# imported by the cohorts stage\n")
    assert ensure(open_run(path), StageName.COHORTS) and counted["cohorts"] == 2


def test_a_shard_leaves_later_stages_waiting_with_a_message_saying_why(tmp_path: Path) -> None:
    from lesionsignal.pipeline.stage import StageIncomplete
    from lesionsignal.pipeline.stages import require

    shard = {"shard_index": 0, "shard_count": 2, "chunk_size": 1, "workers": 1}
    path = _params(tmp_path, _nih(n_images=4), panel={"conditions": ["C1"]}, extraction=shard)
    run = open_run(path, progress=False)
    assert not ensure(run, StageName.EMBEDDINGS)  # this shard's units are done, the other shard's are not
    assert not (run.catalog.stage(StageName.EMBEDDINGS) / "done.json").exists()
    with pytest.raises(StageIncomplete, match="other shards are missing"):
        require(run, StageName.PROBES)
