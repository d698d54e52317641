"""Executors of the extraction units (``extraction.executor``): the gpus executor with its workers on CPU devices, and
the slurm executor's array tasks through submitit's local executor (real subprocesses: the code path of a cluster
but for sbatch). Each gives the very bytes of one local run; a task signalled for its time limit is requeued and
resumes; a failed task is reported with its log and its unit, the others finish, and a rerun runs only its shard.
The same array on a real one-node Slurm cluster is in test_slurm_cluster.py."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from executor_runs import (
    executed_results,
    extracted,
    local_array,
    planned,
    results,
    shard_keys,
)

from lesionsignal.config.execution import slurm_minutes
from lesionsignal.config.params import load_params
from lesionsignal.core.validate import ParamsError
from lesionsignal.data.images import ImageError, ImageItem
from lesionsignal.features.extraction import failed_unit, panel_plan, run_extraction, unit_store
from lesionsignal.features.pools import RawPixels
from lesionsignal.pipeline import slurm
from lesionsignal.pipeline.embeddings import PANEL_UNITS
from lesionsignal.pipeline.stage import StageName, open_run
from lesionsignal.pipeline.units import ExtractionFailed, Shard, unit_keys
from lesionsignal.stimuli.panel import get_condition
from lesionsignal.stimuli.placement import Placement

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- parameters


def _extraction_error(tmp_path: Path, extraction: dict) -> ParamsError:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "run": "demo", "extraction": extraction}))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    return info.value


@pytest.mark.parametrize(
    ("extraction", "key", "words"),
    [
        ({"executor": "kubernetes"}, "extraction.executor", "kubernetes"),
        ({"executor": "slurm", "slurm": {"time": "4h"}}, "extraction.slurm.time", "not a Slurm time"),
        ({"executor": "slurm", "slurm": {"memory": "lots"}}, "extraction.slurm.memory", "sbatch memory"),
        ({"executor": "slurm", "slurm": {"time": 14400}}, "extraction.slurm.time", "in quotes"),
        ({"executor": "slurm", "slurm": {"tasks": 0}}, "extraction.slurm.tasks", "at least one"),
        ({"executor": "slurm", "slurm": {"gpus_per_task": 2}}, "extraction.slurm.gpus_per_task", "more tasks"),
        ({"executor": "slurm", "slurm": {"partition": "gpu nodes"}}, "extraction.slurm.partition", "Slurm name"),
        ({"executor": "slurm", "slurm": {"time": "10", "signal_delay_s": 600}}, "extraction.slurm.signal_delay_s", ""),
        ({"executor": "slurm", "slurm": {"extra": {"time": "1:00:00"}}}, "extraction.slurm.extra.time", "set it there"),
        ({"executor": "slurm", "slurm": {"cluster": "pbs"}}, "extraction.slurm.cluster", "pbs"),
        ({"executor": "slurm", "slurm": {"partiton": "gpu"}}, "extraction.slurm.partiton", "partition"),
        ({"executor": "slurm", "shard_count": 2}, "extraction.shard_count", "slurm.tasks"),
        ({"executor": "slurm", "device": "cuda", "slurm": {"gpus_per_task": 0}}, "extraction.slurm.gpus_per_task", ""),
        ({"executor": "gpus", "devices": ["gpu0"]}, "extraction.devices[0]", "not a device"),
        ({"executor": "gpus", "devices": ["cpu", "cuda:1"]}, "extraction.devices", "same precision"),
        ({"executor": "gpus", "device": "cuda", "devices": ["cpu"]}, "extraction.devices", "cuda"),
        ({"devices": ["cpu", "cpu"]}, "extraction.devices", "only the gpus executor"),
    ],
)
def test_execution_settings_are_checked_before_any_compute_naming_the_field(
    tmp_path: Path, extraction: dict, key: str, words: str
) -> None:
    err = _extraction_error(tmp_path, extraction)
    assert err.key == key, str(err)
    assert words in err.reason and str(tmp_path / "p.yaml") in str(err)


def test_slurm_times_read_as_sbatch_reads_them() -> None:
    assert [slurm_minutes(t) for t in ("90", "4:00:00", "1-12", "1-0:30", "0-0:0:30", "10:30")] == [
        90,
        240,
        2160,
        1470,
        1,
        11,
    ]


def test_the_executor_changes_no_result_key(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    digests = []
    for extraction in ({}, {"executor": "gpus", "devices": ["cpu", "cpu"]}, local_array(tasks=5)):
        data["extraction"] = {"device": "cpu", **extraction}
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
        params = load_params(tmp_path / "p.yaml")
        digests.append((params.digest(), params.results_digest()))
    assert len({d for d, _ in digests}) == 3 and len({r for _, r in digests}) == 1


# ---------------------------------------------------------------- the engine names the unit it stopped at


def _toy(folder: Path, count: int = 6) -> list[ImageItem]:
    rng = np.random.default_rng(1)
    items = []
    for i in range(count):
        path = folder / f"toy_{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (128, 128), dtype=np.uint8))
        items.append(ImageItem(path.name, path))
    return items


def test_a_failed_write_names_its_unit_and_keeps_its_type(tmp_path: Path) -> None:
    images = _toy(tmp_path)
    store = unit_store(tmp_path / "units")
    placement = Placement(canvas_size=128, margin=0.15, base_seed=42)
    plan = panel_plan(store, RawPixels(), "toy", images, [get_condition("S8")], placement, chunk_size=2)
    target = plan.units[3]
    (store.folder / target.key[:2]).parent.mkdir(parents=True)
    (store.folder / target.key[:2]).write_text("a file where the unit's folder goes")
    with pytest.raises(FileExistsError) as info:
        run_extraction([(RawPixels(), plan)], store, progress=False, workers=1)
    unit = failed_unit(info.value)
    assert unit is not None and unit.key == target.key and unit.index == 3 and unit.view == "S8"
    assert (unit.first_image, unit.last_image) == ("toy_2.png", "toy_3.png")
    assert any(str(unit) in note for note in info.value.__notes__)


def test_an_unreadable_image_stays_a_user_error_naming_the_first_unit_of_its_chunk(tmp_path: Path) -> None:
    images = _toy(tmp_path)
    images[4].path.write_bytes(images[4].path.read_bytes()[:60])
    store = unit_store(tmp_path / "units")
    placement = Placement(canvas_size=128, margin=0.15, base_seed=42)
    plan = panel_plan(store, RawPixels(), "toy", images, [get_condition("S8")], placement, chunk_size=2)
    with pytest.raises(ImageError, match="toy_4") as info:
        run_extraction([(RawPixels(), plan)], store, progress=False, workers=1)
    unit = failed_unit(info.value)
    assert unit is not None and (unit.chunk, unit.view, unit.index) == (2, "clean", 4)
    assert store.missing(u.key for u in plan.units) == [u.key for u in plan.units[4:]]


# ---------------------------------------------------------------- the gpus executor


@pytest.mark.slow  # spawns two worker processes that load the demo encoders
def test_workers_on_two_cpu_devices_give_the_local_bytes(executor_reference: dict[str, bytes]) -> None:
    with executed_results("gpus-", executor="gpus", devices=["cpu", "cpu"]) as found:
        assert found.keys() == executor_reference.keys()
        assert [k for k in found if found[k] != executor_reference[k]] == []


def _block_a_folder_of(run, shard: Shard) -> tuple[Path, set[str], set[str]]:
    """A file where a folder of ``shard``'s units (and no other shard's) must go: that shard fails writing a unit.
    Returns the file, the shard's keys and every other key."""
    keys = set(shard_keys(run, shard))
    others = set(unit_keys(planned(run, PANEL_UNITS))) - keys
    prefix = next(k[:2] for k in sorted(keys) if not any(o.startswith(k[:2]) for o in others))
    blocker = unit_store(run.catalog.units).folder / prefix
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    return blocker, keys, others


@pytest.mark.slow  # two worker processes, then one again
def test_a_failed_device_worker_is_reported_with_its_unit_and_the_other_finishes(
    executor_reference: dict[str, bytes], executor_run
) -> None:
    params_file = executor_run("gpus-failing-", executor="gpus", devices=["cpu", "cpu"])
    run = open_run(params_file, progress=False)
    blocker, keys, others = _block_a_folder_of(run, Shard(1, 2))
    with pytest.raises(ExtractionFailed) as info:
        extracted(params_file, lesions=False)
    (failure,) = info.value.failures
    assert failure.where == "device cpu" and failure.shard == Shard(1, 2) and "FileExistsError" in failure.error
    assert failure.unit is not None and failure.unit.key in keys and str(failure.unit) in str(info.value)
    assert "while extracting unit" in failure.detail
    assert not unit_store(run.catalog.units).missing(others)  # the other worker ran to the end
    blocker.unlink()
    assert results(extracted(params_file, lesions=False), lesions=False) == _panel(executor_reference)


# ---------------------------------------------------------------- the slurm executor, tasks as local subprocesses


def _panel(found: dict[str, bytes]) -> dict[str, bytes]:
    """The embeddings stage's part of ``results``."""
    return {k: v for k, v in found.items() if not k.startswith("lesion unit")}


def _attempts(run, shard: int) -> list[dict]:
    return slurm.attempts(run, PANEL_UNITS, Shard(shard, 3))


@pytest.mark.slow  # three array tasks, each a process that loads the demo encoders
def test_an_array_of_three_tasks_gives_the_local_bytes_and_a_rerun_submits_nothing(
    executor_reference: dict[str, bytes], executor_run
) -> None:
    params_file = executor_run("array-", **local_array(tasks=3))
    run = extracted(params_file, lesions=False)  # the lesions stage's array: test_slurm_cluster.py
    found = results(run, lesions=False)
    reference = _panel(executor_reference)
    assert found.keys() == reference.keys()
    assert [k for k in found if found[k] != reference[k]] == []
    for shard in range(3):
        (attempt,) = _attempts(run, shard)
        assert attempt["units_done"] == 0 and attempt["units"] == len(shard_keys(run, Shard(shard, 3)))
    record = slurm.task_folder(run, PANEL_UNITS) / slurm.RECORD
    submitted = record.read_bytes()
    # a rerun of the stage (its outputs gone): every unit is on disk, so nothing is submitted and nothing recomputed
    (run.catalog.stage(StageName.EMBEDDINGS) / "done.json").unlink()
    assert results(extracted(params_file, lesions=False), lesions=False) == found
    assert record.read_bytes() == submitted and all(len(_attempts(run, s)) == 1 for s in range(3))


class _SignalMidway(threading.Thread):
    """Plays Slurm before a time limit: once the shard's task has written some but not all of its units, it is
    paused (so the count is exact), sent submitit's signal (SIGUSR2), and let go."""

    def __init__(self, run, shard: Shard) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.shard = shard
        self.keys = shard_keys(run, shard)
        self.store = unit_store(run.catalog.units)
        self.done_when_signalled: int | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and self.done_when_signalled is None:
            first = slurm.attempts(self.run_, PANEL_UNITS, self.shard)[:1]
            if first and len(self.store.missing(self.keys)) < len(self.keys):
                pid = first[0]["pid"]
                os.kill(pid, signal.SIGSTOP)
                self.done_when_signalled = len(self.keys) - len(self.store.missing(self.keys))
                os.kill(pid, signal.SIGUSR2)
                os.kill(pid, signal.SIGCONT)
            time.sleep(0.01)


@pytest.mark.slow  # three array tasks, one of them twice
def test_a_task_signalled_before_its_time_limit_is_requeued_and_resumes_from_its_units(
    executor_reference: dict[str, bytes], executor_run
) -> None:
    params_file = executor_run("requeue-", **local_array(tasks=3))
    run = open_run(params_file, progress=False)
    interrupt = _SignalMidway(run, Shard(1, 3))
    interrupt.start()
    found = results(extracted(params_file, lesions=False), lesions=False)
    interrupt.join(timeout=5)
    assert found == _panel(executor_reference)
    first, second = _attempts(run, 1)  # requeued once, by submitit's checkpoint, as the same job
    assert first["job"] == second["job"] and first["units_done"] == 0
    total = len(interrupt.keys)
    assert interrupt.done_when_signalled is not None and 0 < interrupt.done_when_signalled < total
    assert interrupt.done_when_signalled <= second["units_done"] < total == second["units"]
    assert [len(_attempts(run, s)) for s in (0, 2)] == [1, 1]


@pytest.mark.slow  # three array tasks, then one again
def test_a_failed_task_is_reported_with_its_log_and_unit_and_a_rerun_submits_only_its_shard(
    executor_reference: dict[str, bytes], executor_run
) -> None:
    params_file = executor_run("failing-", **local_array(tasks=3))
    run = open_run(params_file, progress=False)
    blocker, keys, others = _block_a_folder_of(run, Shard(1, 3))
    with pytest.raises(ExtractionFailed) as info:
        extracted(params_file, lesions=False)
    (failure,) = info.value.failures
    assert failure.shard == Shard(1, 3) and "FileExistsError" in failure.error
    assert failure.unit is not None and failure.unit.key in keys and failure.unit.key.startswith(blocker.name)
    assert failure.log is not None and failure.log in str(info.value) and str(failure.unit) in str(info.value)
    assert "while extracting unit" in Path(failure.log).read_text()  # the task's own log has the traceback
    assert not unit_store(run.catalog.units).missing(others)  # the other tasks ran to the end
    blocker.unlink()
    found = results(extracted(params_file, lesions=False), lesions=False)
    assert found == _panel(executor_reference)
    assert [len(_attempts(run, s)) for s in range(3)] == [1, 2, 1]
    jobs = json.loads((slurm.task_folder(run, PANEL_UNITS) / slurm.RECORD).read_text())["jobs"]
    assert list(jobs) == ["1"]  # the rerun submitted shard 1 alone
