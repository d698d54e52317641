"""Building the demo cohort: reuse a finished folder, else resume or start the build, render, and record provenance.

The cohort's digest covers everything that decides its bytes: the output parameters (configuration and canvas), the
CT's checksums, the versions of the packages that compute pixels, and the source of this module and of every package
module it imports (:func:`lesionsignal.core.digests.code_digest`), so a change to the generator is a new digest
without a version number to bump by hand. Files are written to a temporary name and renamed
(:mod:`lesionsignal.core.files`); see :mod:`lesionsignal.demo.folder` for the folder's lifecycle.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import nibabel
import numpy as np
import scipy

from lesionsignal.core.digests import code_digest, stable_digest
from lesionsignal.core.files import atomic_write_text
from lesionsignal.core.progress import progress_bar
from lesionsignal.demo.config import DemoCohortConfig, output_digest, output_parameters
from lesionsignal.demo.ct import CtSource, as_source
from lesionsignal.demo.folder import GENERATOR, completed_images, finished_records, output_paths, start_build
from lesionsignal.demo.jobs import RenderJob, run_jobs
from lesionsignal.demo.outputs import FilmRecord, box_json, labels_csv, summary
from lesionsignal.demo.prepare import PreparedCt, prepare_ct, prepared_store
from lesionsignal.demo.sampling import plan_cohort


@dataclass(frozen=True)
class DemoCohort:
    """Where a build left the cohort, and what the call did."""

    root: Path
    labels: Path
    train_json: Path
    test_json: Path
    provenance: Path
    n_images: int
    rendered: int  # films rendered by this call (0: the cached cohort was reused)
    complete: bool
    seconds: float


def package_versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "nibabel": nibabel.__version__,
        "scipy": scipy.__version__,
    }


def cohort_digest(config: DemoCohortConfig, canvas: int, checksums: dict[str, str]) -> str:
    """What decides every byte of the cohort (see the module's docstring)."""
    return stable_digest(output_digest(config, canvas), checksums, package_versions(), code_digest(__name__))[:16]


def _result(root: Path, n: int, rendered: int, complete: bool, start: float) -> DemoCohort:
    return DemoCohort(
        root=root,
        n_images=n,
        rendered=rendered,
        complete=complete,
        seconds=time.perf_counter() - start,
        **output_paths(root),
    )


def build_demo_cohort(
    config: DemoCohortConfig,
    ct: CtSource | Sequence[Path | str] | object,
    out_dir: Path,
    progress: bool = True,
    *,
    canvas: int = 1024,
    cache_dir: Path | None = None,
    limit: int | None = None,
) -> DemoCohort:
    """Build (or reuse, or resume) the demo cohort of ``canvas``-pixel square films in ``out_dir``.

    ``ct``: a CtSource, (volume, mask, structures) paths, or an object with those three attributes (for example
    ``registry.ct_paths(cache)``). ``out_dir`` is usually ``cohort_folder_name(config, canvas)`` in a cohorts folder.

    ``cache_dir`` holds the prepared CT (default: ``out_dir.parent / "drr_prepared"``); ``limit`` renders at most
    that many missing films and returns an incomplete cohort (a later call resumes).
    """
    start = time.perf_counter()
    root = Path(out_dir)
    source = as_source(ct)
    checksums = source.checksums()
    digest = cohort_digest(config, canvas, checksums)
    cached = completed_images(root, digest)
    if cached is not None:
        return _result(root, cached, 0, True, start)
    start_build(root, digest)
    cache = Path(cache_dir) if cache_dir else root.parent / "drr_prepared"
    prepared = prepare_ct(source, config.prep, cache, checksums)
    plans = plan_cohort(config, prepared, canvas)
    records = finished_records(root, plans)
    todo = [p for p in plans if p.image_id not in records]
    if limit is not None:
        todo = todo[: max(0, limit)]
    folder = prepared_store(cache).path(prepared.key)
    jobs = [RenderJob(p, folder, root, config.ctr_threshold, config.png_compression) for p in todo]
    bar = progress_bar(len(jobs), "demo cohort films rendered", "film", progress)
    for record in run_jobs(jobs, config.workers):
        records[record.image_id] = record
        bar.update(1)
    bar.close()
    if len(records) < len(plans):
        return _result(root, len(records), len(jobs), False, start)
    ordered = [records[p.image_id] for p in plans]
    # The records stay: a later call with a film deleted re-renders that film only.
    _write_outputs(root, ordered, output_parameters(config, canvas), source, checksums, prepared, digest)
    return _result(root, len(ordered), len(jobs), True, start)


def _write_outputs(
    root: Path,
    records: Sequence[FilmRecord],
    parameters: dict,
    source: CtSource,
    checksums: dict[str, str],
    prepared: PreparedCt,
    digest: str,
) -> None:
    out = output_paths(root)
    atomic_write_text(out["labels"], labels_csv(records))
    atomic_write_text(out["train_json"], box_json(records, "train"))
    atomic_write_text(out["test_json"], box_json(records, "test"))
    images = hashlib.sha256("".join(f"{r.image_id}:{r.sha256}\n" for r in records).encode()).hexdigest()
    provenance = {
        "generator": GENERATOR,
        "code": code_digest(__name__),
        "digest": digest,
        "ct_source": {
            role: {"file": path.name, "sha256": checksums[role], "bytes": path.stat().st_size}
            for role, path in source.files().items()
        },
        "prepared_ct": {
            "key": prepared.key,
            "shape": prepared.geometry.shape,
            "spacing_mm": prepared.geometry.spacing,
            "erased_source_nodules": prepared.geometry.erased,
        },
        "packages": package_versions(),
        "parameters": parameters,
        "summary": summary(records),
        "images_sha256": images,
        "images": [r.image_id for r in records],
    }
    # Written last: its presence with a matching digest is what marks the build complete.
    atomic_write_text(out["provenance"], json.dumps(provenance, indent=1, sort_keys=True, default=str))
