"""Throughput of the perturbation panel on 1024 canvases, and what patch-only blurring saves.

    python bench/bench_panel.py --out bench/results/panel.json [--images N] [--repeats R]

Part 1 applies all 29 conditions to N synthetic 1024 x 1024 canvases (one basename each) and reports images/s
(an image = the whole panel) plus the time per family. Part 2 times, for a few blur conditions, the patch-only
computation `apply` uses against blurring the whole canvas and pasting the patch (the naive route); both give
the same pixels (tests/test_perturb.py), so the ratio is pure saving.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from lesionsignal.core.box import Box
from lesionsignal.core.machine import describe_machine
from lesionsignal.stimuli import inject as ij
from lesionsignal.stimuli import panel as pn
from lesionsignal.stimuli import placement as pl

BLUR_CASES = (
    "iso_blur_4",
    "iso_blur_8",
    "dir_cranio_L11_P16",
    "dir_cranio_L21_P64",
    "dir_lateral_L21_P64",
    "dir_cranio_L31_P64",
)


def synthetic_canvas(size: int, seed: int) -> np.ndarray:
    """A smooth gradient plus noise, so no condition can short-cut on a flat image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    smooth = 40 + 160 * (0.6 * yy + 0.4 * xx) / size
    return np.clip(np.rint(smooth + rng.normal(0, 8, (size, size))), 0, 255).astype(np.uint8)


def time_panel(canvases: list[np.ndarray], basenames: list[str]) -> dict:
    per_condition: dict[str, float] = defaultdict(float)
    conditions = pn.panel()
    start = time.perf_counter()
    for canvas, basename in zip(canvases, basenames, strict=True):
        for c in conditions:
            t0 = time.perf_counter()
            ij.apply(canvas, c, basename)
            per_condition[c.name] += time.perf_counter() - t0
    total = time.perf_counter() - start
    per_family: dict[str, float] = defaultdict(float)
    for c in conditions:
        per_family[c.family.value] += per_condition[c.name]
    n = len(canvases)
    return {
        "panel": {"seconds": total, "images_per_s": n / total, "ms_per_image": 1e3 * total / n},
        "per_family": {
            family: {
                "conditions": sum(c.family.value == family for c in conditions),
                "ms_per_image": 1e3 * seconds / n,
                "share_of_panel": seconds / sum(per_family.values()),
            }
            for family, seconds in per_family.items()
        },
        "per_condition_ms": {name: 1e3 * seconds / n for name, seconds in per_condition.items()},
    }


def whole_then_paste(canvas: np.ndarray, c: pn.Condition, box: Box) -> np.ndarray:
    blur = ij.iso_blur_image if c.family is pn.Family.ISO_BLUR else ij.directional_blur_image
    blurred = blur(canvas, c)
    out = canvas.copy()
    out[box.slices()] = blurred[box.slices()]
    return out


def best_of(fn, repeats: int) -> float:
    """Shortest of `repeats` timings: the least disturbed by other load on a shared machine."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def time_blur_routes(canvas: np.ndarray, basename: str, repeats: int) -> dict:
    results = {}
    for name in BLUR_CASES:
        c = pn.get_condition(name)
        box = pl.patch_box(basename, c.patch, canvas.shape[0])
        patch_s = best_of(lambda c=c: ij.apply(canvas, c, basename), repeats)
        whole_s = best_of(lambda c=c, box=box: whole_then_paste(canvas, c, box), repeats)
        results[name] = {
            "patch_only_ms": 1e3 * patch_s,
            "whole_image_ms": 1e3 * whole_s,
            "whole_over_patch": whole_s / patch_s,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/panel.json"))
    parser.add_argument("--images", type=int, default=200, help="canvases, each given all 29")
    parser.add_argument("--repeats", type=int, default=15, help="timings per blur route, best kept")
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be >= 1")

    canvases = [synthetic_canvas(args.size, seed) for seed in range(args.images)]
    basenames = [f"bench_{i:05d}.png" for i in range(args.images)]
    ij.apply(canvases[0], "C1", basenames[0])  # first call pays imports and OpenCV set-up
    report = {
        "benchmark": "perturbation panel",
        "canvas_size": args.size,
        "images": args.images,
        "conditions": len(pn.condition_names()),
        **time_panel(canvases, basenames),
        "patch_vs_whole_blur": time_blur_routes(canvases[0], basenames[0], args.repeats),
        "machine": {**describe_machine(), "opencv_threads": cv2.getNumThreads()},
    }
    blur = report["patch_vs_whole_blur"]
    report["headline"] = [
        {"what": "panel images/s (all 29 conditions per image)", "value": report["panel"]["images_per_s"],
         "target": None},
        *({"what": f"{name}: whole-image blur / patch-only", "value": row["whole_over_patch"], "target": None}
          for name, row in blur.items()),
    ]  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    panel = report["panel"]
    print(
        f"panel: {panel['images_per_s']:.1f} images/s ({panel['ms_per_image']:.1f} ms per image, "
        f"{report['conditions']} conditions, {args.images} canvases of {args.size} px)"
    )
    for family, row in report["per_family"].items():
        print(f"  {family:<17} {row['ms_per_image']:7.2f} ms/image  ({row['share_of_panel']:.0%})")
    print("patch-only vs whole-image blur:")
    for name, row in report["patch_vs_whole_blur"].items():
        print(
            f"  {name:<20} patch {row['patch_only_ms']:6.2f} ms  whole {row['whole_image_ms']:7.2f} ms  "
            f"x{row['whole_over_patch']:.1f}"
        )
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
