"""What a measurement ran on: the machine, its accelerator, and the versions that set the speed.

Every benchmark result carries this record, so a number is never read without the machine that gave it, and a run
can be compared with a recorded reference run (bench/reference/) knowing whether the machines match.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

_PACKAGES = ("torch", "torchvision", "transformers", "numpy", "scikit-learn", "opencv-python-headless", "submitit")


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _gpus() -> list[dict[str, object]]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        out.append(
            {
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
            }
        )
    return out


def describe_machine() -> dict[str, object]:
    """CPU, memory, GPUs, threads and library versions of this process's machine."""
    import torch

    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "gpus": _gpus(),
        "versions": _versions(),
    }


def machine_line(machine: dict[str, object]) -> str:
    """One line for a summary table: CPU and cores, or the GPU."""
    gpus = machine.get("gpus") or []
    if gpus:
        first = gpus[0]  # type: ignore[index]
        return f"{len(gpus)} x {first['name']} ({first['memory_gib']} GiB), {machine['cpu_count']} CPU cores"
    return f"{machine['cpu']}, {machine['cpu_count']} cores, {machine['memory_gib']} GiB"
