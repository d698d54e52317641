"""Rendering films to disk: one job per film, run in this process or in a pool of worker processes.

A job writes its PNG, then its record; a record on disk therefore means its PNG is complete, which is what lets an
interrupted build resume.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lesionsignal.core.files import atomic_write_bytes, atomic_write_text
from lesionsignal.demo.folder import image_path, record_path
from lesionsignal.demo.outputs import FilmRecord, film_record
from lesionsignal.demo.prepare import PreparedCt, load_prepared
from lesionsignal.demo.render import render_film
from lesionsignal.demo.sampling import FilmPlan


@dataclass(frozen=True)
class RenderJob:
    """One film to render, and where its inputs and outputs are; picklable, for worker processes."""

    plan: FilmPlan
    prepared_dir: Path
    root: Path
    ctr_threshold: float
    png_compression: int


@functools.lru_cache(maxsize=1)
def _prepared(folder: Path) -> PreparedCt:
    """Per-process cache of the memory-mapped prepared CT (loading it for every film would dominate)."""
    return load_prepared(folder)


def encode_png(image: np.ndarray, compression: int) -> bytes:
    """PNG bytes of an 8-bit image (the same image and level always give the same bytes)."""
    ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return data.tobytes()


def render_job(job: RenderJob) -> FilmRecord:
    """Render, write the PNG, then the record."""
    plan = job.plan
    film = render_film(_prepared(job.prepared_dir), plan.spec)
    png = encode_png(film.image, job.png_compression)
    atomic_write_bytes(image_path(job.root, plan.image_id), png)
    record = film_record(plan, film, png, job.ctr_threshold)
    atomic_write_text(record_path(job.root, plan.image_id), record.to_json())
    return record


def _init_worker() -> None:
    # Each worker owns one core: OpenCV's own thread pool would only oversubscribe it. (Results do not depend on
    # it: OpenCV splits images by rows.)
    cv2.setNumThreads(1)


def run_jobs(jobs: Sequence[RenderJob], workers: int) -> Iterator[FilmRecord]:
    """The records of the films as they finish: in order in this process, in any order from a pool."""
    if workers == 1 or len(jobs) <= 1:
        yield from (render_job(job) for job in jobs)
        return
    context = multiprocessing.get_context("spawn")  # fork after OpenCV has started threads can deadlock
    with context.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(render_job, jobs, chunksize=1)
