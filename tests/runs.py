"""Parameter files for test runs: inside the checkout's ignored .cache/, with relative paths like a user's."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEST_RUNS = Path(".cache/test-runs")
OUTPUT_PATHS = ("work", "figures", "tables", "reports")


def run_folder(prefix: str, parent: Path | None = None) -> Path:
    """A new folder for one test run, under ``parent`` (default: the test runs' folder in .cache/)."""
    base = parent or ROOT / TEST_RUNS
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def run_params(folder: Path, source: str = "smoke.yaml", name: str = "params.yaml", **changes: object) -> Path:
    """``params/<source>`` with the run's outputs in ``folder`` (relative to the root) and top-level ``changes``."""
    data = yaml.safe_load((ROOT / "params" / source).read_text())
    relative = folder.relative_to(ROOT).as_posix()
    data.setdefault("paths", {})
    for key in OUTPUT_PATHS:
        data["paths"][key] = f"{relative}/{key}"
    data.update(changes)
    target = folder / name
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target
