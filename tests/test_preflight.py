"""The preflight lists every problem of a setup at once, within seconds, and plans the run without computing it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from runs import run_folder, run_params

from lesionsignal.config.params import load_params
from lesionsignal.features.cost import encoder_cost
from lesionsignal.features.registry import DEMO_ENCODERS, resolve_spec
from lesionsignal.pipeline.preflight import Severity, check, main, write_report

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def case_folder() -> Iterator[Path]:
    folder = run_folder("preflight-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_study_params_on_a_machine_without_the_data_list_every_missing_path(case_folder: Path) -> None:
    params_file = run_params(case_folder, "paper.yaml")
    params = load_params(params_file)
    report = check(params_file, ROOT, measure=False)
    fatal = {(f.where, f.message) for f in report.fatal}
    for i, cohort in enumerate(params.cohorts):
        for key, path in cohort.required_files():
            if not (path if path.is_absolute() else ROOT / path).exists():
                assert (f"cohorts[{i}].{key}", f"{path} does not exist") in fatal
    planned = {plan.encoder: plan.forward_passes for plan in report.encoders}
    panel = [c for c in params.cohorts if "panel" in [u.value for u in c.uses]]
    assert set(planned.values()) == {sum(c.n_images or 0 for c in panel) * 30}  # 29 conditions and the clean pass


def test_a_detection_cap_limits_the_panel_passes_and_never_the_lesion_films(case_folder: Path) -> None:
    # The panel reads a cohort's detection set (n_images of it); the lesion analysis reads every film.
    cohort = {"name": "demo", "kind": "demo", "uses": ["panel", "disease", "lesions"], "n_images": 16}
    params_file = run_params(case_folder, cohorts=[cohort])
    params = load_params(params_file)
    report = check(params_file, ROOT, measure=False)
    assert report.fatal == []
    films = params.demo_cohort.n_images  # 24, of which 16 in the detection set
    lesion_passes = 2 if params.lesions.second_pass else 1
    for plan in report.encoders:
        assert plan.forward_passes == 16 * (1 + len(params.panel.chosen())) + films * lesion_passes


def test_the_command_exits_non_zero_and_writes_its_report(case_folder: Path, capsys: pytest.CaptureFixture) -> None:
    params_file = run_params(case_folder, cohorts=[{"name": "x", "kind": "nih", "csv": "no.csv", "image_dirs": ["no"]}])
    assert main(["--params", str(params_file)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "cohorts[0].csv: no.csv does not exist" in out
    assert "cohorts[0].image_dirs[0]: no does not exist" in out
    written = json.loads((case_folder / "reports" / "smoke" / "preflight.json").read_text())
    assert written["ok"] is False and len([f for f in written["findings"] if f["severity"] == "fatal"]) == 2


def test_the_smoke_params_pass_and_the_plan_counts_every_forward_pass(case_folder: Path) -> None:
    params_file = run_params(case_folder)
    params = load_params(params_file)
    report = check(params_file, ROOT, measure=False)
    assert report.fatal == []
    demo = params.demo_cohort.n_images
    assert [p.encoder for p in report.encoders] == [e.id for e in params.encoders]
    for plan in report.encoders:  # the trained folder (its config read locally) and its random-init twin
        lesion_passes = 2 if params.lesions.second_pass else 1  # the jittered and re-split boxes: a second pass
        clean = sum(params.demo_config(c).n_images for c in params.clean_only_cohorts())  # learning films: once
        assert (
            clean > 0 and plan.forward_passes == demo * (1 + len(params.panel.chosen())) + demo * lesion_passes + clean
        )
        assert plan.gflops_per_image and plan.gflops_per_image > 0 and plan.parameters
    trained, twin = report.encoders
    assert trained.gflops_per_image == twin.gflops_per_image and trained.parameters == twin.parameters
    assert trained.source == "models/demo-dino-vit"  # the report goes into pages: no machine path
    markdown = report.to_markdown()
    assert "passed" in markdown.splitlines()[0] and "## Encoders and the plan" in markdown
    json_path, md_path = write_report(report, case_folder / "out")
    assert json.loads(json_path.read_text())["ok"] is True and md_path.read_text() == markdown


def test_bad_cohort_rows_are_listed_with_their_file_and_row(case_folder: Path) -> None:
    images = case_folder / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    table = case_folder / "cohort.csv"
    table.write_text("path,patient_id,split,view,edema\na.png,p1,train,PA,0\nb.png,p2,test,PA,1\nc.png,p3,test,PA,0\n")
    cohort = {
        "name": "inst",
        "kind": "institutional",
        "csv": table.relative_to(ROOT).as_posix(),
        "root": images.relative_to(ROOT).as_posix(),
        "columns": {"path": "path", "patient_id": "patient_id", "split": "split", "view": "view"},
        "label_columns": {"edema": "edema"},
        "uses": ["disease"],
    }
    report = check(run_params(case_folder, cohorts=[cohort], encoders=[]), ROOT, measure=False)
    messages = " ".join(f"{f.where} {f.message}" for f in report.fatal)
    assert "b.png" in messages and "c.png" in messages, messages


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_gpu_run_on_a_machine_without_one_is_fatal(case_folder: Path) -> None:
    report = check(run_params(case_folder, extraction={"device": "cuda"}), ROOT, measure=False)
    assert [f.where for f in report.fatal] == ["extraction.device"]
    assert report.encoders, "the encoders are still checked"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_slurm_array_needs_sbatch_here_but_no_gpu_here(
    case_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slurm = {"tasks": 4, "max_parallel": 2, "partition": "gpu", "time": "2:00:00", "memory": "32G"}
    params_file = run_params(case_folder, extraction={"device": "cuda", "executor": "slurm", "slurm": slurm})
    monkeypatch.setenv("PATH", str(tmp_path))  # a login node without Slurm's commands
    report = check(params_file, ROOT, measure=False)
    assert [f.where for f in report.fatal] == ["extraction.slurm.cluster"]  # the GPUs are the cluster's, not ours
    notes = [f.message for f in report.findings if f.where == "extraction.slurm"]
    assert any("4 array tasks (at most 2 at once)" in n and "2:00:00" in n for n in notes), notes
    assert [plan.encoder for plan in report.encoders] == ["demo-dino-vit", "demo-dino-vit-random"]


def test_operations_are_counted_from_the_configuration_the_run_would_load(tmp_path: Path) -> None:
    """DINOv2-B/14 from a local folder holding only its config.json: about 2 x parameters x tokens."""
    config = {
        "model_type": "dinov2",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "mlp_ratio": 4,
        "patch_size": 14,
        "image_size": 518,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    cost = encoder_cost(resolve_spec("dinov2-b14", source=tmp_path))
    assert cost is not None and 86e6 < cost.parameters < 87.5e6
    tokens = (224 // 14) ** 2 + 1
    assert cost.flops_per_image == pytest.approx(2 * cost.parameters * tokens, rel=0.1)
    (tmp_path / "empty").mkdir()
    assert encoder_cost(resolve_spec("dinov2-b14", source=tmp_path / "empty")) is None  # no configuration there
    assert all(encoder_cost(spec) is not None for spec in DEMO_ENCODERS.values())


def test_findings_read_as_key_and_message() -> None:
    from lesionsignal.pipeline.preflight import Finding

    assert (
        str(Finding(Severity.FATAL, "cohorts[0].csv", "x does not exist")) == "fatal: cohorts[0].csv: x does not exist"
    )


def test_an_encoder_folder_that_disagrees_with_the_registry_and_a_refused_precision_are_fatal(
    case_folder: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "dinov2"
    folder.mkdir()
    config = {"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 1, "num_attention_heads": 12}
    (folder / "config.json").write_text(json.dumps({**config, "patch_size": 16, "image_size": 518}))
    (folder / "model.safetensors").write_bytes(b"")
    encoders = [
        {"id": "dinov2-b14", "source": str(folder)},
        {"id": "dinov3-vit7b16", "source": str(folder), "dtype": "float16"},
    ]
    report = check(run_params(case_folder, encoders=encoders), ROOT, measure=False)
    fatal = [str(f) for f in report.fatal]
    assert any("encoders[0] (dinov2-b14)" in f and "patch_size: registry 14 vs 16" in f for f in fatal), fatal
    assert any(f.startswith("fatal: encoders[1] (dinov3-vit7b16).dtype:") and "float16" in f for f in fatal), fatal


def test_a_clean_only_learning_cohort_is_planned_and_needs_a_twin_pair(case_folder: Path) -> None:
    cohorts = [
        {"name": "demo", "kind": "demo", "uses": ["panel", "disease"]},
        {"name": "own", "kind": "demo", "uses": ["learning"], "generator": {"n_images": 10, "seed": 7}},
    ]
    params_file = run_params(case_folder, cohorts=cohorts)
    params = load_params(params_file)
    report = check(params_file, ROOT, measure=False)
    assert report.fatal == []
    demo = params.demo_cohort.n_images
    for plan in report.encoders:  # the learning cohort's 10 films once each, clean
        assert plan.forward_passes == demo * (1 + len(params.panel.chosen())) + 10
    lonely = run_params(case_folder, cohorts=cohorts, encoders=[{"id": "demo-dino-vit"}])
    fatal = {(f.where, f.message) for f in check(lonely, ROOT, measure=False).fatal}
    assert any(where == "cohort own" and "random-init twin" in message for where, message in fatal)
