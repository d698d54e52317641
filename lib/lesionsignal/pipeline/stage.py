"""Stages: named steps of a run that hand their results on as files, each run exactly once per input.

A stage writes its outputs into its own folder (``Catalog.stage``) and, last, a ``done.json`` recording its key:
the run's result-deciding parameters, the digest of the stage module's import closure, and the keys of the stages
it reads. A later stage, or a notebook, reads those files; when they are missing or were made from other inputs,
the stage runs (with a message naming it and the section whose notebook shows it) through the very code that
``make section`` runs, never a second copy of it. A stage killed half-way leaves no ``done.json``, so the next
call starts it again; the content-addressed caches under it make that resume cheap.
"""

from __future__ import annotations

import enum
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lesionsignal.config.params import Params, load_params, project_root
from lesionsignal.core.digests import code_digest, stable_digest
from lesionsignal.core.errors import UserError, show_user_errors_briefly
from lesionsignal.core.files import atomic_write_text, read_table, write_table
from lesionsignal.pipeline.catalog import Catalog

DONE = "done.json"


class StageName(enum.StrEnum):
    DEMO_COHORT = "demo_cohort"  # the rendered demo cohort (only when the run has a demo cohort)
    COHORTS = "cohorts"  # every cohort read by its adapter, validated, saved as a manifest
    EMBEDDINGS = "embeddings"  # pooled vectors of every source over the panel, clean and perturbed
    PROBES = "probes"  # detection probes, the fine-tuned CNN ceiling, disease probes and protocol
    LESIONS = "lesions"  # natural lesions: design, box-level extraction, probes, paired tests
    DEPTH = "depth"  # every block of a subset, model-chosen ROIs, learned readouts, native resolution


class StageIncomplete(UserError, RuntimeError):
    """A stage could not finish (another shard's units are missing, say); the message says what to run."""


@dataclass(frozen=True)
class Run:
    """One run: its parameters and every path it uses."""

    params: Params
    catalog: Catalog
    progress: bool = True

    @property
    def name(self) -> str:
        return self.params.name


def open_run(params_file: str | Path, root: Path | None = None, progress: bool = True) -> Run:
    """Load and validate a parameter file (every input file checked) and the run's catalogue of paths.

    A relative ``params_file`` is taken from the project root, wherever the kernel or process started. In a
    notebook, a user error (a wrong key, a missing file) from here on ends its cell with one message.
    """
    show_user_errors_briefly()
    root = root or project_root()
    path = Path(params_file)
    params = load_params(path if path.is_absolute() else root / path)
    params.check_files(root)
    return Run(params, Catalog(params, root), progress)


@dataclass(frozen=True)
class Stage:
    name: StageName
    section: str  # the numbered notebook that shows this stage
    upstream: tuple[StageName, ...]
    module: str  # where ``compute`` lives: its import closure is part of the stage's key
    compute: Callable[[Run], bool]  # writes the outputs into the stage folder; False: not complete yet


def write_output(run: Run, stage: StageName, name: str, frame: pd.DataFrame) -> None:
    """One output frame of a stage, as JSON that reads back exactly (values, column order, dtypes)."""
    write_table(run.catalog.stage(stage) / name, frame)


def output(run: Run, stage: StageName, name: str) -> pd.DataFrame:
    """One output frame of a stage (run the stage first: ``stages.ensure``)."""
    return read_table(run.catalog.stage(stage) / name)


def stage_key(run: Run, stage: Stage, upstream_keys: list[str]) -> str:
    return stable_digest(stage.name, run.params.results_digest(), code_digest(stage.module), upstream_keys)


def done_key(folder: Path) -> str | None:
    """The key a stage's outputs were made with, or None when they are not complete."""
    record = folder / DONE
    if not record.is_file():
        return None
    try:
        payload = json.loads(record.read_text())
    except ValueError:
        return None
    files = payload.get("files", [])
    if not all((folder / name).is_file() for name in files):
        return None
    return payload.get("key")


def execute(run: Run, stage: Stage, key: str, *, announce: bool) -> bool:
    """Clear the stage folder, compute the stage, and record it as done with ``key`` when it completes."""
    folder = run.catalog.stage(stage.name)
    if announce:
        print(
            f"[{run.name}] stage {stage.name}: no outputs for these parameters and code; running it now "
            f"(the code `make section S={stage.section}` runs)",
            flush=True,
        )
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if not stage.compute(run):
        return False
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    payload = {"stage": str(stage.name), "key": key, "files": files}
    atomic_write_text(folder / DONE, json.dumps(payload, indent=1) + "\n")
    return True
