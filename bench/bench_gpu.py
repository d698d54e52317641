"""The prepared GPU benchmark: every study encoder at its real size (random weights), model alone and end to end.

One invocation, a few minutes, nothing to install but the project and its wheels, no weights, no hub:

    python bench/bench_gpu.py --out bench/results/gpu.json

For each encoder (RAD-DINO's ViT-B/14 at 518, DINOv2-B/14 at 224, MedSigLIP's So400m/14 at 448, BiomedCLIP's
ViT-B/16 at 224, ResNet-50 at 224, DINOv3 ViT-7B/16 at 224; ``lesionsignal.features.study_shapes``), built on the
GPU in its precision:
- model forward only: images/s over batches prepared beforehand, timed between CUDA synchronisations; peak memory;
- end to end: ``run_extraction`` over synthetic 1024 px films, each seen clean and under all 29 conditions (decode,
  perturb, resize and normalise on the GPU, forward, pool on the GPU, write), images/s at the same batch size;
- pipeline efficiency: end to end over model only.
Then torch.compile of the first encoder (model only; compile time and images/s), and the probe benchmark on the
GPU (bench/bench_probe.py --device cuda). The JSON is rewritten after every measurement, so a run cut short keeps
what it measured. ``--device cpu --tiny`` runs the same code on the demo encoders in seconds (the test suite does,
so the script is known to run before a GPU is at hand).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bench_extract import make_images  # this folder is on the path of a script run from it

from lesionsignal.core.machine import describe_machine
from lesionsignal.features.encoder import load_encoder
from lesionsignal.features.extraction import panel_plan, run_extraction, unit_store
from lesionsignal.features.pools import EncoderFeatures
from lesionsignal.features.registry import PRECISIONS
from lesionsignal.features.study_shapes import real_size
from lesionsignal.stimuli.panel import panel
from lesionsignal.stimuli.placement import Placement

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    encoder: str  # a study encoder id (real size, random weights) or, with --tiny, a demo encoder id
    batch: int
    precision: str


# Batches large enough to fill an H100/H200-class GPU; half precision where the registry allows it.
CASES = (
    Case("rad-dino", 128, "bfloat16"),
    Case("rad-dino", 128, "float32"),
    Case("dinov2-b14", 256, "bfloat16"),
    Case("medsiglip-448", 64, "bfloat16"),
    Case("biomedclip", 256, "bfloat16"),
    Case("dino-resnet50", 256, "bfloat16"),
    Case("dinov3-vit7b16", 64, "bfloat16"),
)
TINY_CASES = (
    Case("demo-dino-vit-random", 4, "float32"),
    Case("demo-siglip", 4, "float32"),
    Case("demo-resnet", 4, "float32"),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(source: EncoderFeatures, seconds: float, module: torch.nn.Module | None = None) -> float:
    """Images/s of the forward pass alone over two prepared batches, repeated for about ``seconds``."""
    encoder = source.encoder
    canvases = np.random.default_rng(1).integers(0, 256, (source.batch_size, 1024, 1024), dtype=np.uint8)
    pixels = encoder.preprocess(canvases).to(encoder.dtype)
    original = encoder.module
    if module is not None:
        encoder.module = module
    try:
        for _ in range(3):  # warm-up: kernels chosen, allocator grown, compiled graphs built
            encoder.tokens(pixels)
        _sync(encoder.device)
        started, passes = time.perf_counter(), 0
        while time.perf_counter() - started < seconds or passes < 3:
            encoder.tokens(pixels)
            passes += 1
        _sync(encoder.device)
        return passes * source.batch_size / (time.perf_counter() - started)
    finally:
        encoder.module = original


def end_to_end(source: EncoderFeatures, films: list, work: Path, workers: int) -> tuple[float, int]:
    """Images/s of the whole extraction of ``films`` under the full panel; (rate, forward passes)."""
    store = unit_store(work)
    plan = panel_plan(store, source, "bench", films, list(panel()), Placement(), chunk_size=source.batch_size)
    started = time.perf_counter()
    (report,) = run_extraction([(source, plan)], store, progress=False, workers=workers)
    _sync(source.encoder.device)
    return report.images_encoded / (time.perf_counter() - started), report.images_encoded


def build(case: Case, device: torch.device, tiny: bool) -> EncoderFeatures:
    spec = case.encoder if tiny else real_size(case.encoder)
    encoder = load_encoder(spec, device=device, dtype=PRECISIONS[case.precision], seed=0, build_on_device=True)
    return EncoderFeatures(encoder, batch_size=case.batch)


def measure(case: Case, args: argparse.Namespace, films: list, work: Path) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    source = build(case, device, args.tiny)
    built_s = time.perf_counter() - started
    model_rate = model_only(source, args.seconds)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    n_films = case.batch if args.tiny else 2 * case.batch
    rate, passes = end_to_end(source, films[:n_films], work / f"{case.encoder}-{case.precision}", args.workers)
    spec = source.encoder.spec
    row = {
        "encoder": case.encoder,
        "label": spec.label,
        "parameters_millions": round(sum(p.numel() for p in source.encoder.module.parameters()) / 1e6, 1),
        "input_size": spec.geometry.input_size,
        "tokens": spec.geometry.grid**2,
        "precision": case.precision,
        "batch_size": case.batch,
        "attention": getattr(getattr(source.encoder.module, "config", None), "_attn_implementation", None),
        "build_seconds": round(built_s, 1),
        "model_only_images_per_second": round(model_rate, 1),
        "end_to_end_images_per_second": round(rate, 1),
        "pipeline_efficiency": round(rate / model_rate, 3),
        "end_to_end_forward_passes": passes,
        "peak_gpu_memory_gib": None if memory is None else round(memory, 2),
    }
    del source
    gc.collect()
    return row


def compiled(case: Case, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    source = build(case, device, args.tiny)
    eager = model_only(source, args.seconds)
    started = time.perf_counter()
    module = torch.compile(source.encoder.module)
    model_only(source, 0.0, module)  # the first passes compile
    compile_s = time.perf_counter() - started
    rate = model_only(source, args.seconds, module)
    return {
        "encoder": case.encoder,
        "precision": case.precision,
        "batch_size": case.batch,
        "eager_images_per_second": round(eager, 1),
        "compiled_images_per_second": round(rate, 1),
        "compile_seconds": round(compile_s, 1),
        "speedup": round(rate / eager, 3),
    }


def probe_on_device(args: argparse.Namespace, out: Path) -> dict:
    command = [sys.executable, str(HERE / "bench_probe.py"), "--device", args.device, "--out", str(out)]
    if args.tiny:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(out.read_text())


def headline(report: dict) -> list[dict]:
    rows = []
    for row in report["encoders"]:
        name = f"{row['encoder']} {row['precision']} b{row['batch_size']}"
        rows.append({"what": f"{name}: model only, images/s", "value": row["model_only_images_per_second"]})
        rows.append({"what": f"{name}: end to end, images/s", "value": row["end_to_end_images_per_second"]})
        rows.append({"what": f"{name}: pipeline efficiency", "value": row["pipeline_efficiency"], "target": ">= 0.9"})
    for row in report["encoders"]:
        if row["encoder"] == "rad-dino" and row["precision"] != "float32":
            rows.append(
                {
                    "what": "ViT-B/14 at 518 end to end, images/s (target on an H100/H200-class GPU)",
                    "value": row["end_to_end_images_per_second"],
                    "target": ">= 1300",
                }
            )
    compiled = report.get("compiled")
    if compiled:
        what = f"{compiled['encoder']} torch.compile speed-up (model only)"
        rows.append({"what": what, "value": compiled["speedup"]})
    probe = report.get("probe") or {}
    rows += [{**row, "what": f"probe on the device, {row['what']}"} for row in probe.get("headline", [])]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds of each model-only measurement")
    parser.add_argument("--workers", type=int, default=8, help="threads decoding and perturbing")
    parser.add_argument("--tiny", action="store_true", help="demo encoders, few films: a smoke run of this script")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-probe", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --device cpu --tiny for a smoke run")
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 rows as PyTorch users run them on Ampere and later
    torch.backends.cudnn.allow_tf32 = True
    cases = TINY_CASES if args.tiny else CASES
    report: dict = {"benchmark": "study encoders on a GPU (real sizes, random weights)", "machine": describe_machine()}
    report.update({"device": args.device, "encoders": [], "compiled": None, "probe": None, "failures": []})
    started = time.perf_counter()

    def write() -> None:
        report["seconds"] = round(time.perf_counter() - started, 1)
        report["headline"] = headline(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        films = make_images(Path(tmp) / "films", 2 * max(c.batch for c in cases))
        for case in cases:
            try:
                row = measure(case, args, films, Path(tmp))
            except Exception as err:  # one model that fails (memory, a kernel) must not lose the others
                report["failures"].append({"encoder": case.encoder, "precision": case.precision, "error": repr(err)})
            else:
                report["encoders"].append(row)
                print(json.dumps(row), flush=True)
            write()
    if not args.no_compile:
        try:
            report["compiled"] = compiled(cases[0], args)
        except Exception as err:
            report["failures"].append({"encoder": cases[0].encoder, "step": "torch.compile", "error": repr(err)})
        write()
    if not args.no_probe:
        report["probe"] = probe_on_device(args, args.out.with_name(args.out.stem + "_probe.json"))
        write()
    print(json.dumps(report["headline"], indent=2))
    return 0 if not report["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
