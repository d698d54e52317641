"""Demo-cohort benchmark: cold build wall time, cache-hit time, and a real kill-and-resume check.

1. Cold build of the cohort from the real CT (the prepared-CT cache is emptied first, so CT preparation counts),
   with the machine's load average before and after (other work on the machine slows the build).
2. The same call again: a cache hit that must render nothing.
3. A smaller build started in a child process, killed with SIGKILL once some films are on disk, then resumed in
   this process; its files are compared byte for byte with an uninterrupted build of the same parameters.

    python bench/bench_demo_cohort.py --out bench/results/demo_cohort.json [--images 400] [--root /tmp/demo_cohort]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lesionsignal.demo.build import build_demo_cohort, package_versions
from lesionsignal.demo.config import DemoCohortConfig
from lesionsignal.demo.ct import CtSource

ROOT = Path(__file__).resolve().parents[1]


def _source(ct_dir: Path) -> CtSource:
    return CtSource(ct_dir / "cxr.nii.gz", ct_dir / "mask.nii.gz", ct_dir / "structures.csv")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cold_build(source: CtSource, config: DemoCohortConfig, root: Path) -> dict:
    prep = root.parent / f"{root.name}_prepared"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(prep, ignore_errors=True)
    load_before = os.getloadavg()
    cpu_start = time.process_time()
    start = time.perf_counter()
    cohort = build_demo_cohort(config, source, root, True, cache_dir=prep)
    wall = time.perf_counter() - start
    again_start = time.perf_counter()
    again = build_demo_cohort(config, source, root, False, cache_dir=prep)
    summary = json.loads(cohort.provenance.read_text())["summary"]
    return {
        "images": cohort.n_images,
        "wall_s": round(wall, 1),
        "films_per_s": round(cohort.n_images / wall, 2),
        "main_process_cpu_s": round(time.process_time() - cpu_start, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cache_hit_wall_s": round(time.perf_counter() - again_start, 2),
        "cache_hit_rendered": again.rendered,
        "summary": summary,
    }


_CHILD = """
import sys
from pathlib import Path
from lesionsignal.demo.build import build_demo_cohort
from lesionsignal.demo.config import DemoCohortConfig
from lesionsignal.demo.ct import CtSource
if __name__ == "__main__":
    ct, root, prep, n = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    source = CtSource(ct / "cxr.nii.gz", ct / "mask.nii.gz", ct / "structures.csv")
    build_demo_cohort(DemoCohortConfig(n_images=n), source, root, False, cache_dir=prep)
"""


def kill_and_resume(ct_dir: Path, n_images: int, work: Path) -> dict:
    source = _source(ct_dir)
    config = DemoCohortConfig(n_images=n_images)
    prep = work / "prepared"
    reference = build_demo_cohort(config, source, work / "reference", False, cache_dir=prep)
    script = work / "child.py"
    script.write_text(_CHILD)
    root = work / "killed"
    child = subprocess.Popen(
        [sys.executable, str(script), str(ct_dir), str(root), str(prep), str(n_images)], start_new_session=True
    )
    records = root / ".build" / "records"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(records.glob("*.json"))) < n_images // 3:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)  # the child and its workers, mid-write if they happen to be
    child.wait()
    on_disk = len(list(records.glob("*.json")))
    resumed = build_demo_cohort(config, source, root, False, cache_dir=prep)
    return {
        "images": n_images,
        "finished_before_kill": on_disk,
        "rendered_on_resume": resumed.rendered,
        "identical_to_uninterrupted": _snapshot(root) == _snapshot(reference.root),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct-dir", type=Path, default=ROOT / ".cache" / "data" / "ct")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", type=Path, default=None, help="where the cold build goes (default: a temp dir)")
    parser.add_argument("--resume-images", type=int, default=24)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    source = _source(args.ct_dir)
    config = DemoCohortConfig(n_images=args.images, workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "demo_cohort"
        result = {
            "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "packages": package_versions(),
            "workers": args.workers,
            "cold_build": cold_build(source, config, root),
            "kill_and_resume": kill_and_resume(args.ct_dir, args.resume_images, Path(tmp) / "resume"),
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
