"""Benchmark: the FAST batched probe against the scikit-learn protocol on the same synthetic embeddings.

    python bench/bench_probe.py --out bench/results/probe.json [--cases 16000x768 600x4096] [--quick] [--device cuda]

Two cases by default: the embedding probe (16,000 rows x 768 features, rows >> features) and the raw-pixel
global baseline of notebook 03 (600 rows x 4,096 features, fewer rows than features). In each, both solvers run
the whole protocol section 4 protocol (4 C values x 5 grouped folds + refit, threshold on out-of-fold scores) on
identical data and folds; the JSON holds, per case, both wall times, their ratio, the largest |AUC difference|
seen in the same run (test AUC and every C's CV AUC), and the machine it ran on. FAST runs `--repeats` times
(its time is the median; the repeats must give bit-identical results) and scikit-learn once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lesionsignal.analysis.probe import Precision, ProbeConfig, ProbeResult, Solver, fit_probe
from lesionsignal.core.machine import describe_machine


def paired_embeddings(n_rows: int, dim: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clean / perturbed twins (one group per source image) with an embedding-like decaying spectrum.

    A random rotation of a 1/sqrt(k) spectrum makes the features correlated and the problems ill-conditioned,
    as real encoder outputs are; the perturbation adds a small shift along one fixed direction.
    """
    rng = np.random.default_rng(seed)
    n_images = n_rows // 2
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    spectrum = 1.0 / np.sqrt(np.arange(1, dim + 1))
    base = (rng.normal(size=(n_images, dim)) * spectrum) @ rotation.T
    direction = rotation[:, dim // 4]
    jitter = 0.05 * spectrum[0]
    clean = base + jitter * rng.normal(size=base.shape)
    perturbed = base + jitter * rng.normal(size=base.shape) + signal * spectrum[dim // 4] * direction
    x = np.concatenate([clean, perturbed])
    y = np.repeat(np.array([0, 1], dtype=np.int8), n_images)
    groups = np.tile(np.arange(n_images), 2)
    return x, y, groups


def split_by_group(groups: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(groups)
    test_ids = np.random.default_rng(seed).choice(ids, size=round(test_fraction * ids.size), replace=False)
    is_test = np.isin(groups, test_ids)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def timed_fit(config: ProbeConfig, data: tuple[np.ndarray, ...]) -> tuple[ProbeResult, float]:
    start = time.perf_counter()
    result = fit_probe(*data, config=config)
    if config.device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def parse_case(text: str) -> tuple[int, int]:
    rows, _, dim = text.partition("x")
    if not (rows.isdigit() and dim.isdigit()):
        raise argparse.ArgumentTypeError(f"a case is ROWSxFEATURES, e.g. 600x4096; got {text!r}")
    return int(rows), int(dim)


def same_result(a: ProbeResult, b: ProbeResult) -> bool:
    return a.test_scores.tobytes() == b.test_scores.tobytes() and (a.cv_auc, a.threshold) == (b.cv_auc, b.threshold)


def run_case(rows: int, dim: int, args: argparse.Namespace) -> dict[str, object]:
    x, y, groups = paired_embeddings(rows, dim, args.signal, args.seed)
    train, test = split_by_group(groups, 0.2, args.seed)
    data = (x[train], y[train], groups[train], x[test], y[test])
    fast_config = ProbeConfig(solver=Solver.FAST, device=args.device, precision=Precision(args.precision))
    # Warm-up on a slice, so one-off torch start-up (thread pools, CUDA context) is not billed to the solver.
    warm = np.flatnonzero(np.isin(groups[train], np.unique(groups[train])[: min(200, rows // 4)]))
    fit_probe(x[train][warm], y[train][warm], groups[train][warm], x[test], y[test], config=fast_config)
    runs = [timed_fit(fast_config, data) for _ in range(args.repeats)]
    fast, fast_s = runs[0][0], statistics.median(t for _, t in runs)
    reference, sklearn_s = timed_fit(replace(fast_config, solver=Solver.SKLEARN, device="cpu"), data)
    cv_diffs = [abs(fast.cv_auc[c] - reference.cv_auc[c]) for c in fast_config.c_grid]
    return {
        "rows": rows,
        "dim": dim,
        "n_train": fast.n_train,
        "n_test": fast.n_test,
        "protocol": f"{len(fast_config.c_grid)} C x {fast_config.folds} grouped folds + refit",
        "fast_seconds": fast_s,
        "fast_seconds_each": [t for _, t in runs],
        "fast_repeats_bit_identical": all(same_result(fast, r) for r, _ in runs[1:]),
        "sklearn_seconds": sklearn_s,
        "speedup_sklearn_over_fast": sklearn_s / fast_s,
        "test_auc_fast": fast.auc,
        "test_auc_sklearn": reference.auc,
        "max_abs_auc_difference": max([abs(fast.auc - reference.auc), *cv_diffs]),
        "best_c_fast": fast.best_c,
        "best_c_sklearn": reference.best_c,
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    cases = [(2000, 128), (300, 1024)] if args.quick else args.cases
    results = [run_case(rows, dim, args) for rows, dim in cases]
    headline = []
    for case in results:
        name = f"{case['rows']} x {case['dim']}"
        headline.append(
            {
                "what": f"{name}: speed-up over scikit-learn",
                "value": case["speedup_sklearn_over_fast"],
                "target": ">= 20",
            }
        )
        headline.append({"what": f"{name}: max |AUC difference|", "value": case["max_abs_auc_difference"],
                         "target": "<= 0.002"})  # fmt: skip
    return {
        "benchmark": f"linear probe, FAST against scikit-learn ({args.device}, {args.precision})",
        "cases": results,
        "precision": args.precision,
        "device": args.device,
        "machine": describe_machine(),
        "headline": headline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--cases",
        type=parse_case,
        nargs="+",
        default=[(16000, 768), (600, 4096)],
        help="ROWSxFEATURES per case; rows in all (clean + perturbed twins, a fifth of the images held out)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed FAST runs per case (median reported)")
    parser.add_argument("--signal", type=float, default=1.0, help="shift along the planted direction, in its SDs")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu", help="torch device of the FAST solver")
    parser.add_argument("--precision", choices=[p.value for p in Precision], default=Precision.FLOAT64.value)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="smoke run on 2000 x 128 and 300 x 1024")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
