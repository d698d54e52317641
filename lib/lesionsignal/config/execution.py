"""Where a run's extraction executes: this process, one worker per device of this machine, or a Slurm job array.

None of these settings changes a number (the tests prove the bytes equal), so none enters ``results_digest``. The
``slurm:`` block is validated whenever it is present, so a cluster's settings can stay in a parameter file while a
run goes local for a while; every problem names its field.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

from lesionsignal.core.validate import FieldError


class ExecutorKind(enum.Enum):
    LOCAL = "local"  # this process (today's behaviour; manual shards with shard_index / shard_count)
    GPUS = "gpus"  # one worker process per device of this machine, units interleaved
    SLURM = "slurm"  # one Slurm array task per shard, through submitit


class ClusterKind(enum.Enum):
    SLURM = "slurm"  # sbatch on a Slurm cluster
    LOCAL = "local"  # submitit's local executor: each array task a subprocess here (tests, a workstation)


# Options the executor sets itself from the block's own fields; given again in ``extra`` they would fight.
_MANAGED = {
    "array",
    "account",
    "constraint",
    "cpus-per-task",
    "error",
    "gpus",
    "gpus-per-node",
    "gpus-per-task",
    "gres",
    "job-name",
    "mem",
    "nodes",
    "ntasks-per-node",
    "output",
    "partition",
    "qos",
    "signal",
    "time",
}
_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")
_MEMORY = re.compile(r"^\d+[KMGT]?$")
_NAME = re.compile(r"^[A-Za-z0-9_.,:|&!-]+$")  # sbatch's partition, account, qos and constraint words


def slurm_minutes(text: str) -> int:
    """Slurm's time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) as whole minutes, rounded up."""
    found = _TIME.match(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a Slurm time (e.g. 90, 4:00:00, 1-12:00:00)")
    days = int(found["days"] or 0)
    parts = [int(p) for p in (found["a"], found["b"], found["c"]) if p is not None]
    if found["days"] is not None:
        hours, minutes, seconds = [*parts, 0, 0][:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = 0, parts[0], 0
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return -(-total // 60)


@dataclass(frozen=True)
class SlurmParams:
    """One Slurm array over the units of a step: each task computes the units of its shard (unit i of every
    ``tasks``), exactly as a local shard would; the submitting process assembles once every unit exists."""

    tasks: int = 8  # array tasks, one per shard; fixed for a study (a shard's units depend on it)
    max_parallel: int | None = None  # array tasks running at once (sbatch --array=...%N); None: no cap of ours
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None  # e.g. a GPU model: "h100"
    time: str | int = "4:00:00"  # per task, in quotes; a task reaching it is signalled, checkpointed and requeued
    gpus_per_task: int = 1  # 0 for CPU tasks; one model process per task, so at most 1
    cpus_per_task: int = 8  # decoding and perturbing feed the GPU: extraction.workers threads run here
    memory: str = "64G"  # per task, sbatch's --mem (K, M, G or T)
    # submitit's scripts, pickles and logs, and the tasks' records: <log_folder>/<run name>/<stage>/; None: in the
    # run's work folder, <paths.work>/runs/<run name>/slurm/<stage>/ (on a file system the nodes share)
    log_folder: Path | None = None
    max_requeues: int = 3  # time-outs a task may be requeued after (preemptions are not counted)
    signal_delay_s: int = 120  # Slurm signals a task this long before its time limit, to requeue it cleanly
    setup: tuple[str, ...] = ()  # shell lines run before each task (module load ..., source .venv/bin/activate)
    extra: dict[str, str] = field(default_factory=dict)  # further sbatch options, e.g. {mail-type: FAIL}
    python: str | None = None  # the interpreter on the nodes; None: this one (the project on a shared file system)
    cluster: ClusterKind = ClusterKind.SLURM
    poll_s: float = 15.0  # how often the waiting process looks at the units on disk and the queue

    @property
    def minutes(self) -> int:
        return slurm_minutes(str(self.time))

    def __post_init__(self) -> None:
        if self.tasks < 1:
            raise FieldError("tasks", f"need at least one array task, got {self.tasks}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise FieldError("max_parallel", f"must be positive (or left out), got {self.max_parallel}")
        for name in ("partition", "account", "qos", "constraint"):
            value = getattr(self, name)
            if value is not None and not _NAME.match(value):
                raise FieldError(name, f"{value!r} is not a Slurm name (letters, digits and _ . , : | & ! -)")
        if isinstance(self.time, int):  # YAML reads an unquoted 4:00:00 as 14400 (base 60), and 1:30 as 90
            raise FieldError("time", f'write it in quotes ("4:00:00", "90"): unquoted, YAML made it {self.time}')
        try:
            minutes = self.minutes
        except ValueError as err:
            raise FieldError("time", str(err)) from None
        if minutes < 1:
            raise FieldError("time", f"must be at least one minute, got {self.time!r}")
        if not 0 <= self.gpus_per_task <= 1:
            raise FieldError(
                "gpus_per_task",
                f"each array task runs one model process on one device, got {self.gpus_per_task}: "
                "ask for more tasks (slurm.tasks) instead of more GPUs per task",
            )
        if self.cpus_per_task < 1:
            raise FieldError("cpus_per_task", f"must be positive, got {self.cpus_per_task}")
        if not _MEMORY.match(self.memory):
            raise FieldError("memory", f"{self.memory!r} is not sbatch memory (a number with K, M, G or T: 64G)")
        if self.max_requeues < 0:
            raise FieldError("max_requeues", f"must be 0 or more, got {self.max_requeues}")
        if not 0 < self.signal_delay_s < minutes * 60:
            raise FieldError(
                "signal_delay_s",
                f"must be positive and shorter than the time limit ({minutes} min), got {self.signal_delay_s}",
            )
        for key in self.extra:
            if key.lstrip("-") in _MANAGED:
                raise FieldError(f"extra.{key}", "set by the executor from this block's own fields; set it there")
            if not re.match(r"^[a-z][a-z0-9-]*$", key):
                raise FieldError(f"extra.{key}", "an sbatch long option without dashes, e.g. mail-type")
        if not self.poll_s > 0:
            raise FieldError("poll_s", f"must be positive, got {self.poll_s}")


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def device_type(device: str) -> str:
    """``cuda:1`` -> ``cuda``: the kind of device decides the precision, so every worker of a run shares it."""
    return device.split(":", 1)[0]


def check_devices(devices: tuple[str, ...], device: str) -> None:
    """The ``gpus`` executor's device list: known names, one kind of device, agreeing with ``device``."""
    for i, name in enumerate(devices):
        if not _DEVICE.match(name):
            raise FieldError(f"devices[{i}]", f"{name!r} is not a device (cpu, cuda or cuda:<index>)")
    kinds = {device_type(d) for d in devices}
    if len(kinds) > 1:
        raise FieldError("devices", f"mixes {sorted(kinds)}: every worker must compute in the same precision")
    if kinds and device != "auto" and kinds != {device}:
        raise FieldError("devices", f"lists {kinds.pop()} devices but extraction.device is {device}")
