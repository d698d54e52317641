"""A step's extraction units shared among processes: what one worker or array task computes, and how the process
that waits on them counts them and reports a failure.

A step that goes through the extraction engine (the embeddings stage's panel, the lesions stage's boxes) is a
``UnitStep``: how to make its feature sources on a device, and how to plan its job sets from a run. A worker, in
another process or on another machine, rebuilds the very same plans from the run's parameters (``Share``) and
computes the units of its shard with ``run_extraction``, exactly as a local shard would. The digest of every unit
key, taken by the submitting process, travels with the share, so a node that would plan other units (other code or
other data on it) stops at once instead of computing them.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lesionsignal.config.params import Params
from lesionsignal.core.cache import Store
from lesionsignal.core.digests import stable_digest
from lesionsignal.core.errors import UserError
from lesionsignal.core.progress import Progress, progress_bar
from lesionsignal.data.canvas_store import canvas_store
from lesionsignal.features.extraction import (
    ExtractionReport,
    Plan,
    UnitRef,
    failed_unit,
    run_extraction,
    unit_store,
)
from lesionsignal.features.pools import FeatureSource
from lesionsignal.pipeline.catalog import Catalog
from lesionsignal.pipeline.stage import Run, StageName

DETAIL_LINES = 12  # of a failure's traceback, shown in the report


@dataclass(frozen=True)
class JobSet:
    """The sources extracted together over one cohort (``run_extraction``'s jobs)."""

    cohort: str
    jobs: tuple[tuple[FeatureSource, Plan], ...]


SourcesFn = Callable[[Params, str, bool], list[FeatureSource]]  # (params, device, load): False plans without weights
PlansFn = Callable[[Run, Sequence[FeatureSource]], list[JobSet]]


@dataclass(frozen=True)
class UnitStep:
    """A step of units; both functions live at module level, so a worker process imports them by name."""

    stage: StageName
    sources: SourcesFn
    plans: PlansFn


@dataclass(frozen=True)
class Shard:
    """Units ``index`` of every ``count`` in the unsplit plan (``Unit.index % count == index``)."""

    index: int
    count: int

    def split(self, part: int, parts: int) -> Shard:
        """Part ``part`` of ``parts`` of this shard: its units interleaved, so each part gets every view."""
        return Shard(self.index + self.count * part, self.count * parts)

    @property
    def pair(self) -> tuple[int, int]:
        return (self.index, self.count)

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


def unit_keys(sets: Sequence[JobSet], shard: Shard | None = None) -> list[str]:
    """Keys of every unit of the job sets, or of one shard's."""
    return [
        unit.key
        for job_set in sets
        for _, plan in job_set.jobs
        for unit in plan.units
        if shard is None or unit.index % shard.count == shard.index
    ]


def plan_digest(sets: Sequence[JobSet]) -> str:
    return stable_digest(unit_keys(sets))


class PlanMismatch(UserError, RuntimeError):
    """A worker planned other units than the submitting process (other code or data where it runs)."""


@dataclass(frozen=True)
class Share:
    """What one worker computes: the units of ``shard`` of every job set of ``step``, on ``device``."""

    params: Params
    root: Path
    step: UnitStep
    device: str
    shard: Shard
    expected: str  # plan_digest of the submitting process's plans
    threads: int | None = None  # torch threads of a CPU worker (the workers share the cores); None: torch's own

    def run(self) -> Run:
        return Run(self.params, Catalog(self.params, self.root), progress=False)


def run_share(share: Share, on_start: Callable[[int, int], None] | None = None) -> list[ExtractionReport]:
    """Load the step's sources on the share's device, plan, check the plan against the submitter's, and compute
    the shard's missing units. ``on_start(done, total)`` hears how many of its units were on disk already."""
    if share.threads is not None:
        import torch

        torch.set_num_threads(share.threads)
    run = share.run()
    sets = share.step.plans(run, share.step.sources(run.params, share.device, True))
    if plan_digest(sets) != share.expected:
        raise PlanMismatch(
            f"[{run.name}] {share.step.stage} {share.shard} on {share.device}: this process plans other units than "
            "the one that submitted it (another version of the code, or other data, where it runs)"
        )
    store = unit_store(run.catalog.units)
    if on_start is not None:
        keys = unit_keys(sets, share.shard)
        on_start(len(keys) - len(store.missing(keys)), len(keys))
    settings = run.params.extraction
    canvases = canvas_store(run.catalog.canvases) if settings.canvas_store else None
    reports = []
    for job_set in sets:
        reports += run_extraction(
            list(job_set.jobs),
            store,
            shard=share.shard.pair,
            workers=settings.workers,
            progress=False,
            canvases=canvases,
        )
    return reports


@dataclass(frozen=True)
class ShareFailure:
    """A worker or array task that stopped for an error: where it ran, the error, the unit, its log."""

    shard: Shard
    where: str  # "device cuda:1", "array task 1234_5"
    error: str  # the exception's type and message
    unit: UnitRef | None  # None: it stopped before any unit (loading a model, planning) or was killed
    log: str | None = None  # the task's stderr
    detail: str = ""  # the traceback's last lines

    def describe(self) -> str:
        lines = [f"{self.where} ({self.shard}): {self.error}"]
        if self.unit is not None:
            lines.append(f"  at {self.unit}")
        if self.log is not None:
            lines.append(f"  log: {self.log}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ShareOutcome:
    shard: Shard
    reports: tuple[ExtractionReport, ...] = ()
    failure: ShareFailure | None = None


def error_text(error: BaseException) -> str:
    """The exception's type and the first line of its message."""
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else ''}".rstrip(": ")


def failure_of(error: BaseException, shard: Shard, where: str, log: str | None = None) -> ShareFailure:
    detail = "".join(traceback.format_exception(error)).strip().splitlines()[-DETAIL_LINES:]
    return ShareFailure(shard, where, error_text(error), failed_unit(error), log, "\n".join(detail))


class ExtractionFailed(UserError, RuntimeError):
    """Some workers or array tasks failed; the others' units are kept, so running again computes only the rest."""

    def __init__(self, message: str, failures: Sequence[ShareFailure] = ()) -> None:
        self.failures = tuple(failures)
        super().__init__(message)

    @classmethod
    def of(cls, run_name: str, stage: StageName, failures: Sequence[ShareFailure], workers: str) -> ExtractionFailed:
        listed = "\n".join(f.describe() for f in failures)
        return cls(
            f"[{run_name}] stage {stage}: {len(failures)} of the {workers} failed; the units every other one "
            f"computed are kept:\n{listed}\nFix the cause and run again: only the shards with missing units run again.",
            failures,
        )


class UnitProgress:
    """One bar of finished units over every worker or task, counted on disk (each unit is one file, written
    atomically), with the failures so far in its description."""

    def __init__(self, store: Store, keys: Sequence[str], label: str, enabled: bool) -> None:
        self._store = store
        self._missing = store.missing(keys)
        self._total = len(keys)
        self._done = self._total - len(self._missing)
        self._label = label
        self._enabled = enabled
        self._failed = 0
        self._bar = self._open()

    @property
    def done(self) -> int:
        return self._done

    def _open(self) -> Progress:
        failed = f" ({self._failed} failed)" if self._failed else ""
        bar = progress_bar(self._total, f"{self._label}{failed}", "units", self._enabled)
        bar.update(self._done)
        return bar

    def poll(self) -> None:
        still = self._store.missing(self._missing)
        found = len(self._missing) - len(still)
        self._missing = still
        if found:
            self._done += found
            self._bar.update(found)

    def failed(self) -> None:
        """Count one more failure (a new bar: the text of a bar is fixed when it opens)."""
        self._failed += 1
        self._bar.close()
        self._bar = self._open()

    def close(self) -> None:
        self.poll()
        self._bar.close()
