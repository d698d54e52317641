"""Small runs for the executor tests: the smoke parameters on two real-format fixture cohorts (an NIH panel cohort and
a ChestX-Det10 lesion cohort), each run with its own cache, so every executor computes its units itself."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import yaml
from runs import ROOT, run_folder

from lesionsignal.features.extraction import unit_store
from lesionsignal.pipeline.embeddings import PANEL_UNITS
from lesionsignal.pipeline.lesions import LESION_UNITS
from lesionsignal.pipeline.stage import Run, StageName, open_run
from lesionsignal.pipeline.stages import ensure
from lesionsignal.pipeline.units import JobSet, Shard, UnitStep, unit_keys

FIXTURES = ROOT / "tests" / "fixtures" / "cohorts"
NIH = FIXTURES / "nih"
DET = FIXTURES / "chestxdet10"
CHUNK = 2  # images per unit: many small units, so every shard has some of every view


def executor_params(prefix: str, **extraction: object) -> Path:
    """params/smoke.yaml on the fixture cohorts, outputs and caches in a fresh folder, ``extraction`` set."""
    folder = run_folder(prefix)
    data = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    relative = folder.relative_to(ROOT).as_posix()
    data["paths"] = {"data_cache": data["paths"]["data_cache"]} | {
        key: f"{relative}/{key}" for key in ("cache", "work", "figures", "tables", "reports")
    }
    data["cohorts"] = [
        {
            "name": "nih",
            "kind": "nih",
            "uses": ["panel"],
            "csv": str(NIH / "Data_Entry_2017_v2020.csv"),
            "image_dirs": [str(NIH / "images_001" / "images"), str(NIH / "images_002" / "images")],
            "split_lists": [str(NIH / "train_val_list.txt"), str(NIH / "test_list.txt")],
        },
        {
            "name": "det",
            "kind": "chestxdet10",
            "uses": ["lesions"],
            "train_json": str(DET / "train.json"),
            "test_json": str(DET / "test.json"),
            "image_dirs": [str(DET / "train_data"), str(DET / "test_data")],
        },
    ]
    # the trained demo encoder alone (from its committed folder), beside the raw pixels: every task loads it, and
    # without its random-init twin the stage draws no token maps
    data["encoders"] = [e for e in data["encoders"] if e["id"] == "demo-dino-vit"]
    data["extraction"] = {"device": "cpu", "workers": 1, "chunk_size": CHUNK, **extraction}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def local_array(tasks: int = 3, **slurm: object) -> dict:
    """The slurm executor's block for submitit's local executor: each array task a subprocess here."""
    block = {"cluster": "local", "tasks": tasks, "gpus_per_task": 0, "cpus_per_task": 1, "memory": "1G"}
    return {"executor": "slurm", "slurm": {**block, "time": "20", "poll_s": 0.25, **slurm}}


def extracted(params_file: Path, lesions: bool = True) -> Run:
    """The run with its embeddings (and lesions) stages done; raises what the executor raises."""
    run = open_run(params_file, progress=False)
    for stage in (StageName.EMBEDDINGS, StageName.LESIONS) if lesions else (StageName.EMBEDDINGS,):
        assert ensure(run, stage), stage
    return run


def planned(run: Run, step: UnitStep) -> list[JobSet]:
    """The step's job sets as the submitting process plans them (weightless encoders; cohorts stage first)."""
    ensure(run, StageName.COHORTS)
    return step.plans(run, step.sources(run.params, "cpu", False))


def results(run: Run, lesions: bool = True) -> dict[str, bytes]:
    """Every assembled embedding file, the embeddings summary, and every lesion unit, by name or key."""
    folder = run.catalog.stage(StageName.EMBEDDINGS)
    found = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.npz"))}
    found["summary.json"] = (folder / "summary.json").read_bytes()
    if not lesions:
        return found
    store = unit_store(run.catalog.units)
    for key in unit_keys(planned(run, LESION_UNITS)):
        found[f"lesion unit {key}"] = store.path(key).read_bytes()
    return found


def shard_keys(run: Run, shard: Shard, step: UnitStep = PANEL_UNITS) -> list[str]:
    return unit_keys(planned(run, step), shard)


@contextlib.contextmanager
def executed_results(prefix: str, **extraction: object) -> Iterator[dict[str, bytes]]:
    """``results`` of a run extracted with ``extraction``; its folder removed afterwards."""
    params_file = executor_params(prefix, **extraction)
    try:
        yield results(extracted(params_file))
    finally:
        shutil.rmtree(params_file.parent, ignore_errors=True)
