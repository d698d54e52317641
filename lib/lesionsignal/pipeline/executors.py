"""Running a step's extraction units where the parameters say (``extraction.executor``), with one result shape.

- ``local``: this process computes its shard (``shard_index`` of ``shard_count``; all units by default), exactly
  as before executors existed.
- ``gpus``: one worker process per device of this machine (``pipeline.device_workers``); the run's shard is split
  among them.
- ``slurm``: one array task per shard (``pipeline.slurm``).
With ``gpus`` and ``slurm`` this process loads no model: it plans with weightless sources (``PlannedEncoder``),
waits with one bar of finished units, and the stage then assembles from the units on disk as after a local run,
so the assembled files are the same bytes. A failed worker or task raises ``ExtractionFailed`` naming each one, its
unit and its log, after the others have finished.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from lesionsignal.config.execution import ExecutorKind
from lesionsignal.config.params import Params
from lesionsignal.core.cache import Store
from lesionsignal.data.canvas_store import canvas_store
from lesionsignal.features.extraction import ExtractionReport, run_extraction, unit_store
from lesionsignal.features.pools import FeatureSource
from lesionsignal.pipeline import device_workers, slurm
from lesionsignal.pipeline.sources import device_for
from lesionsignal.pipeline.stage import Run
from lesionsignal.pipeline.units import ExtractionFailed, JobSet, Shard, ShareOutcome, UnitStep, unit_keys


@dataclass(frozen=True)
class StepUnits:
    """A step's extraction as the stage sees it, whatever executed it."""

    sources: list[FeatureSource]  # loaded (local) or planned (gpus, slurm)
    sets: list[JobSet]
    reports: list[list[ExtractionReport]]  # per job set, per source
    store: Store

    @property
    def complete(self) -> bool:
        return all(r.complete for per_set in self.reports for r in per_set)


def run_step(run: Run, step: UnitStep) -> StepUnits:
    settings = run.params.extraction
    store = unit_store(run.catalog.units)
    base = Shard(settings.shard_index, settings.shard_count)
    if settings.executor is ExecutorKind.LOCAL:
        sources = step.sources(run.params, device_for(run.params), True)
        sets = step.plans(run, sources)
        canvases = canvas_store(run.catalog.canvases) if settings.canvas_store else None
        reports = [
            run_extraction(
                list(s.jobs), store, shard=base.pair, workers=settings.workers, progress=run.progress, canvases=canvases
            )
            for s in sets
        ]
        return StepUnits(sources, sets, reports, store)
    gpus = settings.executor is ExecutorKind.GPUS
    device = device_workers.planning_device(settings) if gpus else settings.task_device
    sources = step.sources(run.params, device, False)
    sets = step.plans(run, sources)
    started = time.perf_counter()
    workers = "device workers" if gpus else "array tasks"
    if not store.missing(unit_keys(sets, base)):
        outcomes: list[ShareOutcome] = []  # nothing to compute: no worker starts, nothing is submitted
    elif gpus:
        outcomes = device_workers.run_on_devices(run, step, sets, store, base)
    else:
        outcomes = slurm.run_array(run, step, sets, store)
    failures = [o.failure for o in outcomes if o.failure is not None]
    if failures:
        raise ExtractionFailed.of(run.name, step.stage, failures, workers)
    seconds = time.perf_counter() - started
    units = StepUnits(sources, sets, merged_reports(sets, outcomes, store, seconds, base), store)
    missing = store.missing(unit_keys(sets, base))
    if missing:  # every worker ended well: the units they were given are there, or something is badly wrong
        raise ExtractionFailed(
            f"[{run.name}] stage {step.stage}: every one of the {workers} ended without an error, yet "
            f"{len(missing)} units are missing (did something delete files under {run.catalog.units}?)"
        )
    return units


def merged_reports(
    sets: Sequence[JobSet], outcomes: Sequence[ShareOutcome], store: Store, seconds: float, base: Shard
) -> list[list[ExtractionReport]]:
    """One report per (job set, source) over the workers of shard ``base``, as one local run of that shard would
    report it: the units the workers computed this time, the rest cached."""
    computed: dict[tuple[str, str], list[ExtractionReport]] = {}
    for outcome in outcomes:
        for report in outcome.reports:
            computed.setdefault((report.source_id, report.cohort), []).append(report)
    merged = []
    for job_set in sets:
        row = []
        for source, plan in job_set.jobs:
            parts = computed.get((source.source_id, plan.cohort), [])
            done = sum(r.units_computed for r in parts)
            mine = sum(1 for u in plan.units if u.index % base.count == base.index)
            row.append(
                ExtractionReport(
                    plan.source_id,
                    plan.cohort,
                    units_total=mine,
                    units_cached=mine - done,
                    units_computed=done,
                    images_encoded=sum(r.images_encoded for r in parts),
                    seconds=seconds,
                    shard=base.pair,
                    complete=not store.missing(u.key for u in plan.units),
                )
            )
        merged.append(row)
    return merged


def describe_execution(params: Params) -> str:
    """Where the run's extraction goes, in words for a notebook's first lines (no device is touched for a
    cluster: the submitting machine may have none)."""
    settings = params.extraction
    if settings.executor is ExecutorKind.LOCAL:
        shard = f", shard {settings.shard_index} of {settings.shard_count}" if settings.shard_count > 1 else ""
        return f"device {device_for(params)}{shard}"
    if settings.executor is ExecutorKind.GPUS:
        listed = ", ".join(settings.devices) if settings.devices else "every visible CUDA device"
        return f"one worker per device ({listed})"
    block = settings.slurm
    where = f"partition {block.partition}" if block.partition else "the default partition"
    return (
        f"Slurm array of {block.tasks} tasks on {where} ({block.gpus_per_task} GPU, {block.cpus_per_task} CPUs, "
        f"{block.memory}, {block.time} each; {block.cluster.value})"
    )
