"""The slurm executor: one array task per shard of a step's units, submitted through submitit and watched until
every unit is on disk.

- Each task (``ShardTask``) rebuilds the step's plans from the run's parameters on its node and computes the units
  of its shard, exactly as a local shard would; the submitting process assembles afterwards, once.
- Time limits and preemption: Slurm signals a task ``signal_delay_s`` before its limit (and submitit on
  preemption); ``ShardTask`` is checkpointable, so submitit requeues the same call, and the new attempt skips the
  units already on disk. Each attempt appends a line (job, host, units already done) to ``attempts/shard-<i>.jsonl``.
- A task that fails for a real error writes ``failures/shard-<i>.json`` (the error, the unit it stopped at); the
  others run on. The report names the task's log (submitit's stderr file) and the unit.
- A rerun submits only the shards with missing units, and waits on the tasks of an earlier submission that are
  still queued or running (``submitted.json``; a process that stopped waiting left them on the cluster).
The job state comes from ``squeue``, not ``sacct``: many clusters (and a one-node test cluster) keep no accounting.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError
from submitit.helpers import Checkpointable

from lesionsignal.config.execution import ClusterKind, SlurmParams
from lesionsignal.config.params import resolve
from lesionsignal.core.cache import Store
from lesionsignal.core.errors import UserError
from lesionsignal.core.files import atomic_write_text
from lesionsignal.features.extraction import ExtractionReport, UnitRef
from lesionsignal.pipeline.stage import Run
from lesionsignal.pipeline.units import (
    JobSet,
    Shard,
    Share,
    ShareFailure,
    ShareOutcome,
    UnitProgress,
    UnitStep,
    error_text,
    failure_of,
    plan_digest,
    run_share,
    unit_keys,
)

RECORD = "submitted.json"
FAILURES = "failures"
ATTEMPTS = "attempts"
GONE_POLLS = 3  # polls a task may be missing from squeue without a result file before it counts as ended (NFS lag)


def task_folder(run: Run, step: UnitStep) -> Path:
    """submitit's scripts, pickles and logs of one step of one run, and this executor's own records; beside the
    stage folders, not in one (a stage's folder is emptied each time it runs)."""
    chosen = run.params.extraction.slurm.log_folder
    base = resolve(chosen, run.catalog.root) / run.name if chosen else run.catalog.stage("slurm")
    return base / str(step.stage)


def _shard_file(folder: Path, kind: str, shard: Shard, suffix: str) -> Path:
    return folder / kind / f"shard-{shard.index}{suffix}"


class ShardTask(Checkpointable):
    """What one array task runs. Checkpointable: on a time-out or preemption submitit resubmits this same call
    (``checkpoint`` keeps the arguments), and the new attempt skips the units already on disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, share: Share) -> list[ExtractionReport]:
        job = _job_id()

        def started(done: int, total: int) -> None:
            line = {
                "job": job,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "units_done": done,
                "units": total,
            }
            path = _shard_file(self.folder, ATTEMPTS, share.shard, ".jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
            print(f"{share.step.stage} {share.shard} on {line['host']}: {done} of {total} units on disk", flush=True)

        try:
            reports = run_share(share, on_start=started)
            for r in reports:  # the task's log says what it did and how fast
                rate = f"{r.images_per_second:.1f} images/s" if r.images_encoded else "nothing to encode"
                done = f"{r.units_computed} units computed, {r.units_cached} on disk"
                print(f"{r.source_id} / {r.cohort}: {done}; {rate}", flush=True)
            return reports
        except Exception as err:
            failure = failure_of(err, share.shard, f"array task {job}")
            record = {"job": job, **asdict(failure)}
            atomic_write_text(_shard_file(self.folder, FAILURES, share.shard, ".json"), json.dumps(record, indent=1))
            raise


def _job_id() -> str:
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # called outside a submitit job (a test calling the task directly)
        return f"pid {os.getpid()}"


def attempts(run: Run, step: UnitStep, shard: Shard) -> list[dict]:
    """The attempts a shard's task has made, oldest first (a requeued task has more than one)."""
    path = _shard_file(task_folder(run, step), ATTEMPTS, shard, ".jsonl")
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_executor(folder: Path, settings: SlurmParams, name: str) -> submitit.AutoExecutor:
    """submitit's executor for the block: sbatch on a cluster, or local subprocesses (the same code otherwise)."""
    if settings.cluster is ClusterKind.SLURM and shutil.which("sbatch") is None:
        raise UserError(
            "extraction.executor is slurm but sbatch is not on this machine's PATH: run from a Slurm login node "
            "(or set extraction.slurm.cluster: local to run the array tasks as subprocesses here)"
        )
    python = {"slurm_python": settings.python, "local_python": settings.python} if settings.python else {}
    executor = submitit.AutoExecutor(
        folder=folder,
        cluster=settings.cluster.value,
        slurm_max_num_timeout=settings.max_requeues,
        local_max_num_timeout=settings.max_requeues,
        **python,
    )
    optional = {
        "gpus_per_node": settings.gpus_per_task or None,  # no GPU option at all for CPU tasks: a cluster without
        "slurm_partition": settings.partition,  # GPUs refuses even a zero count
        "slurm_account": settings.account,
        "slurm_qos": settings.qos,
        "slurm_constraint": settings.constraint,
    }
    executor.update_parameters(
        name=name,
        timeout_min=settings.minutes,
        cpus_per_task=settings.cpus_per_task,
        nodes=1,
        tasks_per_node=1,
        slurm_mem=settings.memory,
        slurm_array_parallelism=settings.max_parallel or settings.tasks,
        slurm_signal_delay_s=settings.signal_delay_s,
        slurm_setup=list(settings.setup),
        slurm_additional_parameters=dict(settings.extra),
        **{k: v for k, v in optional.items() if v is not None},
    )
    return executor


@dataclass(frozen=True)
class _Record:
    """The tasks of the last submission, so a rerun waits on the ones still in the queue instead of resubmitting."""

    digest: str
    cluster: str
    jobs: dict[int, str]  # shard index -> job id

    @classmethod
    def load(cls, folder: Path) -> _Record | None:
        try:
            data = json.loads((folder / RECORD).read_text())
            return cls(data["digest"], data["cluster"], {int(k): str(v) for k, v in data["jobs"].items()})
        except (OSError, ValueError, KeyError):
            return None

    def save(self, folder: Path) -> None:
        payload = {"digest": self.digest, "cluster": self.cluster, "jobs": {str(k): v for k, v in self.jobs.items()}}
        atomic_write_text(folder / RECORD, json.dumps(payload, indent=1) + "\n")


def queued(cluster: ClusterKind) -> dict[str, str] | None:
    """Job id -> state of this user's jobs in the queue (array tasks one by one); None when there is no queue."""
    if cluster is not ClusterKind.SLURM:
        return None
    command = ["squeue", "--noheader", "--array", "--format=%i|%T", f"--user={getpass.getuser()}"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise UserError(f"cannot read the Slurm queue ({' '.join(command)}): {err}") from None
    pairs = (line.strip().split("|", 1) for line in out.splitlines() if "|" in line)
    return {job: state for job, state in pairs}


class _Task:
    """One submitted (or re-attached) array task and how to tell that it has ended."""

    def __init__(self, shard: Shard, job: submitit.Job, cluster: ClusterKind) -> None:
        self.shard = shard
        self.job = job
        self.cluster = cluster
        self._gone = 0

    def ended(self, queue: dict[str, str] | None) -> bool:
        if self.job.paths.result_pickle.exists():
            return True
        if queue is None:
            return self.job.done()  # a local task: its controller process has exited
        self._gone = 0 if self.job.job_id in queue else self._gone + 1
        return self._gone >= GONE_POLLS

    def outcome(self, folder: Path) -> ShareOutcome:
        where = f"array task {self.job.job_id}"
        log = str(self.job.paths.stderr)
        if not self.job.paths.result_pickle.exists():
            reason = "ended without a result: killed (past its requeues, for memory, a node failure or scancel)"
            return ShareOutcome(self.shard, failure=ShareFailure(self.shard, where, reason, None, log))
        try:
            return ShareOutcome(self.shard, tuple(self.job.result()))
        except FailedJobError as err:
            failure = self._recorded(folder, where, log) or failure_of(err, self.shard, where, log)
            return ShareOutcome(self.shard, failure=failure)
        except Exception as err:  # a result that cannot be read back
            return ShareOutcome(self.shard, failure=ShareFailure(self.shard, where, error_text(err), None, log))

    def _recorded(self, folder: Path, where: str, log: str) -> ShareFailure | None:
        """The failure the task wrote itself: its error and the unit it stopped at."""
        try:
            data = json.loads(_shard_file(folder, FAILURES, self.shard, ".json").read_text())
        except (OSError, ValueError):
            return None
        if data.get("job") != self.job.job_id:
            return None
        unit = UnitRef(**data["unit"]) if data.get("unit") else None
        return ShareFailure(self.shard, where, data["error"], unit, log, data.get("detail", ""))


def run_array(run: Run, step: UnitStep, sets: Sequence[JobSet], store: Store) -> list[ShareOutcome]:
    """Every unit of the step computed by the array tasks of the shards that miss some; returns their outcomes."""
    settings = run.params.extraction.slurm
    folder = task_folder(run, step)
    expected = plan_digest(sets)
    shards = [Shard(k, settings.tasks) for k in range(settings.tasks)]
    missing = [s for s in shards if store.missing(unit_keys(sets, s))]
    if not missing:
        return []
    queue = queued(settings.cluster)
    record = _Record.load(folder)
    tasks: list[_Task] = []
    if queue is not None and record is not None and record.digest == expected:
        for shard in missing:
            job_id = record.jobs.get(shard.index)
            if job_id is not None and job_id in queue:
                job = submitit.SlurmJob(folder=folder, job_id=job_id)
                tasks.append(_Task(shard, job, settings.cluster))
    waiting = {t.shard.index for t in tasks}
    new = [s for s in missing if s.index not in waiting]
    if tasks:
        print(f"[{run.name}] {step.stage}: waiting on {len(tasks)} array tasks still in the queue", flush=True)
    if new:
        tasks += _submit(run, step, folder, new, expected)
        jobs = {t.shard.index: t.job.job_id for t in tasks}
        _Record(expected, settings.cluster.value, jobs).save(folder)
    return _wait(run, step, sets, store, folder, tasks)


def _submit(run: Run, step: UnitStep, folder: Path, shards: Sequence[Shard], expected: str) -> list[_Task]:
    settings = run.params.extraction.slurm
    for shard in shards:  # a failure record belongs to the attempt that wrote it
        _shard_file(folder, FAILURES, shard, ".json").unlink(missing_ok=True)
    executor = make_executor(folder, settings, f"lesionsignal-{run.name}-{step.stage}")
    device = run.params.extraction.task_device
    shares = [Share(run.params, run.catalog.root, step, device, shard, expected) for shard in shards]
    jobs = executor.map_array(ShardTask(folder), shares)
    array = jobs[0].job_id.split("_")[0]
    print(
        f"[{run.name}] {step.stage}: submitted {len(jobs)} array tasks ({', '.join(str(s.index) for s in shards)} "
        f"of {settings.tasks}; job {array}, {settings.cluster.value}); logs in {folder}",
        flush=True,
    )
    return [_Task(shard, job, settings.cluster) for shard, job in zip(shards, jobs, strict=True)]


def _wait(
    run: Run, step: UnitStep, sets: Sequence[JobSet], store: Store, folder: Path, tasks: list[_Task]
) -> list[ShareOutcome]:
    settings = run.params.extraction.slurm
    label = f"{step.stage} on {settings.tasks} array tasks"
    progress = UnitProgress(store, unit_keys(sets), label, run.progress)
    outcomes: list[ShareOutcome] = []
    running = list(tasks)
    try:
        while running:
            time.sleep(settings.poll_s)
            progress.poll()
            queue = queued(settings.cluster)
            for task in [t for t in running if t.ended(queue)]:
                running.remove(task)
                outcome = task.outcome(folder)
                if outcome.failure is not None:
                    progress.failed()
                    print(f"[{run.name}] {step.stage}: {outcome.failure.describe()}", flush=True)
                outcomes.append(outcome)
    except KeyboardInterrupt:
        if settings.cluster is ClusterKind.SLURM and running:
            ids = sorted({t.job.job_id.split("_")[0] for t in running})
            print(
                f"\n[{run.name}] {step.stage}: stopped waiting; the array tasks keep running on the cluster (job "
                f"{', '.join(ids)}). Run again to wait for them (nothing is submitted twice); scancel to stop them.",
                flush=True,
            )
        raise
    finally:
        progress.close()
    return outcomes
