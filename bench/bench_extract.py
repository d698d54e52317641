"""Extraction benchmark: pipeline efficiency of a demo encoder, and a real kill-and-resume check.

In one run, on the same synthetic 1024 x 1024 films:
- end-to-end images per second of `run_extraction` (decode, perturb, resize, normalise, forward, pool, write), and
- model-forward-only images per second of the same encoder, at the same batch size on the same device, on input
  tensors prepared beforehand,
whose ratio is the pipeline efficiency (1.0: the model is the only cost). The two are measured in turns (model only,
then end to end over the same number of images), `--repeats` times; the efficiency is the median of the turns'
ratios, so a burst of other work on the machine moves one turn, not the result. Then an
extraction is started in a child process, killed with SIGKILL once some units are on disk, resumed in this process,
and its assembled files are compared byte for byte with an uninterrupted run.

    python bench/bench_extract.py --out bench/results/extract.json [--images 96] [--encoder demo-dino-vit]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from lesionsignal.core.machine import describe_machine


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
    from lesionsignal.stimuli.panel import panel
    from lesionsignal.stimuli.placement import Placement

    source = EncoderFeatures(load_encoder(encoder_id, seed=0), batch_size=32)
    store = unit_store(work)
    conditions = list(panel())  # the study's workload: every image seen clean and under each of the 29 conditions
    return source, store, panel_plan(store, source, "bench", items, conditions, Placement(), chunk_size=chunk)


def extract(source, store, plan, folder: Path):
    """One extraction through the engine, assembled when complete: (report, assembled files)."""
    from lesionsignal.features.extraction import assemble_panel, run_extraction

    (report,) = run_extraction([(source, plan)], store, progress=False, workers=2)
    return report, assemble_panel(source, plan, store, folder) if report.complete else {}


def prepared_batches(source, n_images: int) -> list:
    """Model input for ``n_images`` canvases in the source's batches, in the form the pipeline hands the model."""
    canvases = np.random.default_rng(1).integers(0, 256, (n_images, 1024, 1024), dtype=np.uint8)
    size = source.batch_size
    return [source.encoder.preprocess(canvases[i : i + size]) for i in range(0, n_images, size)]


def forward_only(source, batches: list, n_images: int) -> float:
    """Seconds of the model's forward passes alone over ``n_images`` images, cycling the prepared batches, so that
    it runs as long as the end-to-end turn it is compared with and meets the same disturbances (synchronised on a
    GPU)."""
    import torch

    started, done = time.perf_counter(), 0
    with torch.inference_mode():
        while done < n_images:
            pixels = batches[(done // source.batch_size) % len(batches)]
            source.encoder.tokens(pixels)
            done += len(pixels)
    if source.encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / done


def child(args: argparse.Namespace) -> int:
    from lesionsignal.data.images import ImageItem

    items = [ImageItem(p.name, p) for p in sorted(Path(args.images_dir).glob("*.png"))]
    source, store, plan = build(args.encoder, items, args.chunk, Path(args.work))
    extract(source, store, plan, Path(args.work) / "assembled")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/extract.json"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument(
        "--chunk", type=int, default=32, help="images per unit: the batch size, so both sides run the same batches"
    )
    parser.add_argument("--encoder", default="demo-dino-vit")
    parser.add_argument("--repeats", type=int, default=5, help="turns, each model only then end to end")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        items = make_images(tmp_path / "images", args.images)
        source, store, plan = build(args.encoder, items, args.chunk, tmp_path / "whole")
        batches = prepared_batches(source, 2 * source.batch_size)
        forward_only(source, batches, source.batch_size)  # warm-up: thread pools, allocator
        passes = sum(len(plan.chunks[u.chunk]) for u in plan.units)
        model_seconds, pipeline_seconds = [], []
        for turn in range(args.repeats):
            model_seconds.append(forward_only(source, batches, passes))
            source, store, plan = build(args.encoder, items, args.chunk, tmp_path / f"whole{turn}")
            started = time.perf_counter()
            reference, reference_files = extract(source, store, plan, tmp_path / f"whole{turn}" / "assembled")
            pipeline_seconds.append((time.perf_counter() - started) / reference.images_encoded)
        model_rate = 1 / min(model_seconds)
        end_to_end = 1 / min(pipeline_seconds)
        # Each turn's end-to-end run is paired with the model-only run just before it (same length, same moment
        # of the machine); the median of those ratios resists the bursts a shared machine has.
        turn_ratios = [m / p for m, p in zip(model_seconds, pipeline_seconds, strict=True)]
        efficiency = float(np.median(turn_ratios))

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
        "benchmark": f"extraction pipeline ({args.encoder})",
        "encoder": args.encoder,
        "images": args.images,
        "conditions": [u.name for u in plan.units if u.chunk == 0],
        "forward_passes": reference.images_encoded,
        "batch_size": source.batch_size,
        "device": str(source.encoder.device),
        "repeats": args.repeats,
        "end_to_end_images_per_second": round(end_to_end, 2),
        "model_forward_only_images_per_second": round(model_rate, 2),
        "end_to_end_images_per_second_each_turn": [round(1 / s, 2) for s in pipeline_seconds],
        "model_forward_only_images_per_second_each_turn": [round(1 / s, 2) for s in model_seconds],
        "pipeline_efficiency": round(efficiency, 3),
        "pipeline_efficiency_each_turn": [round(r, 3) for r in turn_ratios],
        "pipeline_efficiency_best_over_best": round(end_to_end / model_rate, 3),
        "kill_and_resume": {
            "killed_midway": killed_midway,
            "units_on_disk_after_kill": units_before,
            "units_total": len(plan.units),
            "units_recomputed_on_resume": resumed.units_computed,
            "assembled_files_identical": identical,
            "temporary_files_left": leftovers,
        },
        "machine": describe_machine(),
    }
    result["headline"] = [
        {"what": "pipeline efficiency (end-to-end / model forward only, median of turns)",
         "value": result["pipeline_efficiency"], "target": ">= 0.9"},
        {"what": "end-to-end images/s", "value": result["end_to_end_images_per_second"], "target": None},
        {"what": "model forward only, images/s", "value": result["model_forward_only_images_per_second"],
         "target": None},
        {"what": "killed run resumed to identical files", "value": identical, "target": "True"},
    ]  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
