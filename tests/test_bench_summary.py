"""The benchmark summary puts each headline row of this run beside the same row of every recorded reference run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _summary_module():
    spec = importlib.util.spec_from_file_location("bench_summary", ROOT / "bench" / "summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(value: float, cpu: str) -> dict:
    machine = {"cpu": cpu, "cpu_count": 2, "memory_gib": 8.0, "gpus": []}
    rows = [{"what": "max |AUC difference|", "value": value, "target": "<= 0.002"}]
    return {"benchmark": "probe", "machine": machine, "headline": rows}


def test_summary_sets_this_run_beside_the_reference(tmp_path: Path) -> None:
    results, reference = tmp_path / "results", tmp_path / "reference"
    (reference / "laptop").mkdir(parents=True)
    results.mkdir()
    (results / "probe.json").write_text(json.dumps(_result(0.0004, "this CPU")))
    (reference / "laptop" / "probe.json").write_text(json.dumps(_result(0.0009, "laptop CPU")))
    text = _summary_module().summary(results, reference)
    row = next(line for line in text.splitlines() if line.startswith("| max"))
    assert row == "| max \\|AUC difference\\| | 0.0004 | <= 0.002 | 0.0009 |"
    assert "This run: this CPU, 2 cores" in text and "Reference `laptop` ran on laptop CPU" in text


def test_summary_without_results_or_references_says_what_to_run(tmp_path: Path) -> None:
    text = _summary_module().summary(tmp_path / "results", tmp_path / "none")
    assert "run `make bench`" in text
