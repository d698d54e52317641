"""The prepared GPU benchmark runs before a GPU is at hand: its tiny mode takes the same code path on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--device", "cpu", "--tiny", "--no-compile"]
    done = subprocess.run(
        [*command, "--seconds", "0.1", "--workers", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failures"] == []
    assert [row["encoder"] for row in report["encoders"]] == ["demo-dino-vit-random", "demo-siglip", "demo-resnet"]
    for row in report["encoders"]:
        assert row["model_only_images_per_second"] > 0 and row["end_to_end_images_per_second"] > 0
        assert row["end_to_end_forward_passes"] == 4 * 30  # one chunk, clean and the 29 conditions
        ratio = row["end_to_end_images_per_second"] / row["model_only_images_per_second"]
        assert abs(row["pipeline_efficiency"] - ratio) <= 0.01 * ratio  # both rounded for the JSON
    assert [case["max_abs_auc_difference"] <= 0.002 for case in report["probe"]["cases"]] == [True, True]
    assert report["machine"]["cpu_count"] >= 1 and "torch" in report["machine"]["versions"]
    assert any(row["what"].endswith("pipeline efficiency") for row in report["headline"])
