"""Shared fixtures: the project root, and smoke parameters whose outputs go to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def smoke_params_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params/smoke.yaml with the run's outputs (stage outputs, tables, figures, reports) in one temporary folder
    for the whole test session, so the notebooks hand their stages on as under `make paper`. The data cache and the
    content-addressed caches stay the project's: the prepared CT and the smoke cohort are made once and reused by
    every notebook of the session (and by later sessions and `make paper`; their keys hold their code)."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    data = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    for key in ("work", "figures", "tables", "reports"):
        data["paths"][key] = str(tmp_path / key)
    for key in ("data_cache", "cache"):
        data["paths"][key] = str(ROOT / data["paths"][key])
    target = tmp_path / "smoke.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@pytest.fixture(scope="session")
def smoke_reports(smoke_params_file: Path) -> Path:
    """The reports folder of a whole smoke run: every notebook executed once, through the runner as `make paper`
    runs them (executed .ipynb and .html, the output logs, the report site index.html), with its tables and figures
    beside it in the session's temporary folder.

    Executing the notebooks takes about two minutes, once per session: use it from tests marked ``notebook`` and
    treat the folder as read-only, since other tests share it."""
    from lesionsignal.config.params import load_params
    from lesionsignal.pipeline.catalog import Catalog
    from lesionsignal.pipeline.runner import main

    assert main(["--params", str(smoke_params_file)]) == 0
    return Catalog(load_params(smoke_params_file), ROOT).reports
