"""The gpus executor: one worker process per device of this machine, each computing an interleaved share of the
units; this process only plans, shows the bar, and (afterwards) assembles, so the final files have one writer.

Worker k of n takes the units ``k`` of every ``n`` of the run's shard (``Shard.split``), so every worker gets some
of every view and the devices finish together. Each worker is a spawned process of its own pool: a worker that
dies (a CUDA fault, the out-of-memory killer) breaks only its own pool, and the others run on. The same code runs
with ``extraction.devices: [cpu, cpu]``, which is how the tests exercise it without a GPU.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from lesionsignal.config.execution import device_type
from lesionsignal.config.params import ExtractionParams
from lesionsignal.core.cache import Store
from lesionsignal.core.errors import UserError
from lesionsignal.pipeline.stage import Run
from lesionsignal.pipeline.units import (
    JobSet,
    Shard,
    Share,
    ShareFailure,
    ShareOutcome,
    UnitProgress,
    UnitStep,
    failure_of,
    plan_digest,
    run_share,
    unit_keys,
)

POLL_S = 1.0  # the bar counts files on this machine's disk: cheap


def visible_devices(settings: ExtractionParams) -> list[str]:
    """The devices listed in the parameters, else every CUDA device this process sees."""
    if settings.devices:
        return list(settings.devices)
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise UserError(
            "extraction.executor is gpus but no CUDA device is visible; list extraction.devices "
            "(for example [cpu, cpu]) to run the workers on other devices"
        )
    return [f"cuda:{i}" for i in range(count)]


def planning_device(settings: ExtractionParams) -> str:
    """The kind of device the workers extract on (it decides each encoder's precision, hence the unit keys)."""
    if settings.devices:
        return device_type(settings.devices[0])
    return "cpu" if settings.device == "cpu" else "cuda"


def _cpu_threads(devices: Sequence[str]) -> int | None:
    """CPU workers split this machine's cores between them; a GPU worker keeps torch's own count."""
    cpu_workers = sum(device_type(d) == "cpu" for d in devices)
    if not cpu_workers:
        return None
    return max(1, (os.cpu_count() or 1) // cpu_workers)


def device_worker(share: Share) -> ShareOutcome:
    """One worker's share; an error comes back as a record (an exception may not survive pickling)."""
    try:
        return ShareOutcome(share.shard, tuple(run_share(share)))
    except Exception as err:
        return ShareOutcome(share.shard, failure=failure_of(err, share.shard, f"device {share.device}"))


def run_on_devices(run: Run, step: UnitStep, sets: Sequence[JobSet], store: Store, base: Shard) -> list[ShareOutcome]:
    """Every unit of ``base`` computed by one worker per device; the outcome of each worker that ran."""
    settings = run.params.extraction
    devices = visible_devices(settings)
    threads = _cpu_threads(devices)
    expected = plan_digest(sets)
    shares = [
        Share(run.params, run.catalog.root, step, device, base.split(k, len(devices)), expected, threads)
        for k, device in enumerate(devices)
    ]
    todo = [s for s in shares if store.missing(unit_keys(sets, s.shard))]
    label = f"{step.stage} on {len(devices)} devices ({', '.join(devices)})"
    progress = UnitProgress(store, unit_keys(sets, base), label, run.progress)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked; spawning is also what the probes do
    pools = [ProcessPoolExecutor(max_workers=1, mp_context=context) for _ in todo]
    outcomes: list[ShareOutcome] = []
    try:
        futures: dict[Future, Share] = {pool.submit(device_worker, s): s for pool, s in zip(pools, todo, strict=True)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            progress.poll()
            for future in finished:
                outcome = _outcome(future, futures[future])
                if outcome.failure is not None:
                    progress.failed()
                    print(f"[{run.name}] {step.stage}: {outcome.failure.describe()}", flush=True)
                outcomes.append(outcome)
    finally:
        progress.close()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def _outcome(future: Future, share: Share) -> ShareOutcome:
    try:
        return future.result()
    except BrokenProcessPool as err:
        failure = ShareFailure(
            share.shard,
            f"device {share.device}",
            f"the worker process died ({err}): killed for memory, or a crash in native code",
            None,
        )
        return ShareOutcome(share.shard, failure=failure)
