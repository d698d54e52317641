"""Shared fixtures: the project root, smoke parameters whose outputs go to a folder of their own, and the smoke run."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from runs import run_folder, run_params

from lesionsignal.config.params import load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def smoke_params_file() -> Iterator[Path]:
    """params/smoke.yaml with the run's outputs (stage outputs, tables, figures, reports) in one folder of its own
    for the whole test session, so the notebooks hand their stages on as under `make paper`. The folder is inside
    the checkout (under the ignored .cache/) and every path in the file is relative, as in a user's parameter
    file, so a test can check that no output carries the machine's folders. The data cache and the
    content-addressed caches stay the project's: the prepared CT and the smoke cohort are made once and reused by
    every notebook of the session (and by later sessions and `make paper`; their keys hold their code)."""
    folder = run_folder("run-")
    yield run_params(folder, name="smoke.yaml")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_reports(smoke_params_file: Path) -> Path:
    """The reports folder of a whole smoke run: every notebook executed once, through the runner as `make paper`
    runs them (executed .ipynb and .html, the output logs, the report site index.html), with its tables and figures
    beside it in the session's run folder.

    Executing the notebooks takes about two minutes, once per session: use it from tests marked ``notebook`` and
    treat the folder as read-only, since other tests share it."""
    from lesionsignal.pipeline.catalog import Catalog
    from lesionsignal.pipeline.runner import main

    assert main(["--params", str(smoke_params_file)]) == 0
    return Catalog(load_params(smoke_params_file), ROOT).reports


@pytest.fixture(scope="session")
def executor_reference() -> Iterator[dict[str, bytes]]:
    """The executor tests' run (tests/executor_runs.py) extracted in this process, as before executors existed:
    the bytes every executor must reproduce."""
    from executor_runs import executed_results

    with executed_results("reference-") as found:
        yield found


@pytest.fixture
def executor_run() -> Iterator[Callable[..., Path]]:
    """Makes the executor tests' parameter files (tests/executor_runs.py); their folders go when the test ends."""
    from executor_runs import executor_params

    made: list[Path] = []

    def make(prefix: str, **extraction: object) -> Path:
        made.append(executor_params(prefix, **extraction))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path.parent, ignore_errors=True)
