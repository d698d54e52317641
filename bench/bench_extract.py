"""Extraction benchmark: pipeline efficiency of a demo encoder, and a real kill-and-resume check.

In one run, on the same synthetic 1024 x 1024 films:
- end-to-end images per second of `run_extraction` (decode, perturb, preprocess, forward, pool, write), and
- model-forward-only images per second of the same encoder on already prepared input tensors,
whose ratio is the pipeline efficiency (1.0: the model is the only cost). Then an extraction is started in a child
process, killed with SIGKILL once some units are on disk, resumed in this process, and its assembled files are
compared byte for byte with an uninterrupted run.

    python bench/bench_extract.py --out bench/results/extract.json [--images 96] [--encoder demo-dinov2-vit]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

CONDITIONS = ("S8", "iso_blur_8", "dir_cranio_L21_P64", "reticular_fine_32")


def make_images(folder: Path, n: int, size: int = 1024) -> list:
    from lesionsignal.data.images import ImageItem

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    items = []
    for i in range(n):
        image = 90 + 60 * np.sin(xx / (40 + i % 7)) ** 2 + 50 * yy / size + rng.normal(0, 5, (size, size))
        path = folder / f"bench_{i:04d}.png"
        cv2.imwrite(str(path), image.clip(0, 255).astype(np.uint8))
        items.append(ImageItem(path.name, path))
    return items


def build(encoder_id: str, items: list, chunk: int, work: Path):
    from lesionsignal.features.encoder import load_encoder
    from lesionsignal.features.extraction import panel_plan, unit_store
    from lesionsignal.features.pools import EncoderFeatures
    from lesionsignal.stimuli.panel import get_condition
    from lesionsignal.stimuli.placement import Placement

    source = EncoderFeatures(load_encoder(encoder_id, seed=0), batch_size=32)
    store = unit_store(work)
    conditions = [get_condition(c) for c in CONDITIONS]
    return source, store, panel_plan(store, source, "bench", items, conditions, Placement(), chunk_size=chunk)


def extract(source, store, plan, folder: Path):
    """One extraction through the engine, assembled when complete: (report, assembled files)."""
    from lesionsignal.features.extraction import assemble_panel, run_extraction

    (report,) = run_extraction([(source, plan)], store, progress=False, workers=2)
    return report, assemble_panel(source, plan, store, folder) if report.complete else {}


def forward_only(source, n_images: int, repeats: int = 2) -> float:
    import torch

    canvases = np.random.default_rng(1).integers(0, 256, (32, 1024, 1024), dtype=np.uint8)
    pixels = source.encoder.preprocess(canvases)
    source.encoder.forward(pixels[:4])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.inference_mode():
            source.encoder.forward(pixels)
        best = min(best, time.perf_counter() - started)
    return 32 / best


def child(args: argparse.Namespace) -> int:
    from lesionsignal.data.images import ImageItem

    items = [ImageItem(p.name, p) for p in sorted(Path(args.images_dir).glob("*.png"))]
    source, store, plan = build(args.encoder, items, args.chunk, Path(args.work))
    extract(source, store, plan, Path(args.work) / "assembled")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/extract.json"))
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--encoder", default="demo-dinov2-vit")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        items = make_images(tmp_path / "images", args.images)
        source, store, plan = build(args.encoder, items, args.chunk, tmp_path / "whole")
        model_rate = forward_only(source, args.images)
        started = time.perf_counter()
        reference, reference_files = extract(source, store, plan, tmp_path / "whole" / "assembled")
        seconds = time.perf_counter() - started
        end_to_end = reference.images_encoded / seconds

        resumed_dir = tmp_path / "killed"
        command = [sys.executable, __file__, "--child", "--images-dir", str(tmp_path / "images"),
                   "--work", str(resumed_dir), "--encoder", args.encoder, "--chunk", str(args.chunk)]  # fmt: skip
        process = subprocess.Popen(command, start_new_session=True)
        deadline = time.time() + 600
        while time.time() < deadline and len(list(resumed_dir.glob("??/*.npz"))) < max(2, len(plan.units) // 3):
            if process.poll() is not None:
                break
            time.sleep(0.05)
        killed_midway = process.poll() is None
        if killed_midway:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        units_before = len(list(resumed_dir.glob("??/*.npz")))
        source, store, plan = build(args.encoder, items, args.chunk, resumed_dir)
        resumed, resumed_files = extract(source, store, plan, resumed_dir / "assembled")
        identical = all(resumed_files[name].read_bytes() == path.read_bytes() for name, path in reference_files.items())
        leftovers = [p.name for p in resumed_dir.rglob("*.tmp")]
    result = {
        "encoder": args.encoder,
        "images": args.images,
        "conditions": list(CONDITIONS),
        "forward_passes": reference.images_encoded,
        "end_to_end_images_per_second": round(end_to_end, 2),
        "model_forward_only_images_per_second": round(model_rate, 2),
        "pipeline_efficiency": round(end_to_end / model_rate, 3),
        "kill_and_resume": {
            "killed_midway": killed_midway,
            "units_on_disk_after_kill": units_before,
            "units_total": len(plan.units),
            "units_recomputed_on_resume": resumed.units_computed,
            "assembled_files_identical": identical,
            "temporary_files_left": leftovers,
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
