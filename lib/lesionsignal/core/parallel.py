"""Worker processes and thread limits that keep numbers independent of how many cores a run uses.

A matrix product's summation order depends on its threads, so every probe and small network runs on ONE torch
and BLAS thread, whether in a worker process or here. One thread per worker also keeps small problems from
fighting over cores: on a busy two-core machine a 96-d probe with two torch threads was measured twenty times
slower than with one. Workers are spawned, not forked: forking a process whose OpenMP pool is running can deadlock.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def _one_thread() -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)  # BLAS too; the limit holds for this worker process's whole life


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch and BLAS on one thread inside the block, as in a ``worker_pool`` process; restored afterwards."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def background_priority() -> None:
    """Lower the calling thread to the lowest CPU priority: Linux's SCHED_IDLE (it runs only on a core nothing else
    wants), else nice 19, else nothing.

    Work that feeds a model (decoding, perturbing, resizing the next batch, writing the last) then runs in the
    cycles the model's threads leave, instead of preempting one of them and stalling the others at their next
    barrier; when it falls behind, the model waits on it, its threads sleep, and it gets the cores. Threads this one
    starts (an OpenMP team) inherit the policy. On two cores the demo encoder's pipeline efficiency was 0.91 to 1.0
    with SCHED_IDLE, 0.84 to 0.87 with nice 19 and 0.86 to 0.91 at normal priority (bench/bench_extract.py).
    """
    import os
    import threading

    tid = threading.get_native_id()
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or a container that refuses: try nice
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(AttributeError, OSError):  # the work is then merely not deprioritised
        os.setpriority(os.PRIO_PROCESS, tid, 19)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Fresh (spawned) worker processes with one torch thread each."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context, initializer=_one_thread)


def map_single_threaded(
    function: Callable[..., T], jobs: Sequence[tuple], workers: int, on_done: Callable[[int, T], None]
) -> None:
    """``function(*job)`` for every job on one thread each: here when ``workers`` is 1 (no process start, the
    same numbers), else in ``workers`` spawned processes. ``on_done(index, result)`` runs here as each finishes;
    the first failure cancels what has not started and is raised."""
    if workers <= 1 or len(jobs) <= 1:
        with one_thread():
            for index, job in enumerate(jobs):
                on_done(index, function(*job))
        return
    from concurrent.futures import as_completed

    with worker_pool(workers) as pool:
        futures: dict[Future, int] = {pool.submit(function, *job): index for index, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                on_done(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
