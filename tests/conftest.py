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
    """params/smoke.yaml with every output path moved to one temporary folder for the whole session, so the
    notebooks, executed in order, hand their caches on as under `make paper`; the data cache stays the project's."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    data = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    for key in ("work", "figures", "tables", "reports"):
        data["paths"][key] = str(tmp_path / key)
    data["paths"]["data_cache"] = str(ROOT / data["paths"]["data_cache"])
    target = tmp_path / "smoke.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target
