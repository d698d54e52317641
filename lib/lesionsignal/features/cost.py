"""What running an encoder costs: operations per image, weight memory, and how fast the device multiplies.

The operations are counted, not looked up: the encoder is built from the configuration the run would load, on
PyTorch's meta device (shapes only: no weights, no memory, no time), and one forward pass of one input at the
model's resolution runs under ``FlopCounterMode``. The device's speed is measured with a square matrix product in
the run's precision. Operations over that speed is a lower bound on the time a forward pass takes (a real pass
also waits on memory, attention and the input pipeline); the preflight states it as such.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lesionsignal.features.encoder import forward_tokens
from lesionsignal.features.loaders import skeleton
from lesionsignal.features.registry import PRECISIONS, EncoderSpec

# Long enough for a steady rate, short enough that a preflight stays within seconds.
MATMUL_SECONDS = 0.3
MATMUL_SIDE = {"cpu": 512, "cuda": 4096}


@dataclass(frozen=True)
class EncoderCost:
    """Operations of one forward pass of one image, and the encoder's size."""

    encoder: str
    flops_per_image: float
    parameters: int

    def weight_bytes(self, dtype: str) -> int:
        return self.parameters * PRECISIONS[dtype].itemsize


@dataclass(frozen=True)
class DeviceSpeed:
    """The device the run extracts on, its memory, and its measured matrix-product rate."""

    device: str
    name: str
    dtype: str
    flops_per_second: float
    total_bytes: int | None = None
    free_bytes: int | None = None


def encoder_cost(spec: EncoderSpec) -> EncoderCost | None:
    """Counted operations per image, or None when the encoder's configuration is not available offline."""
    from torch.utils.flop_counter import FlopCounterMode

    module = skeleton(spec)
    if module is None:
        return None
    size = spec.geometry.input_size
    pixels = torch.empty(1, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        forward_tokens(spec, module, pixels)  # the very pass extraction makes, heads it never runs left out
    return EncoderCost(spec.id, float(counter.get_total_flops()), sum(p.numel() for p in module.parameters()))


def device_speed(device: str, dtype: str) -> DeviceSpeed:
    """Measure the device's rate on a square matrix product in ``dtype`` (float32 on a CPU, as the run does)."""
    precision = PRECISIONS[dtype] if device == "cuda" else torch.float32
    side = MATMUL_SIDE["cuda" if device == "cuda" else "cpu"]
    a = torch.randn(side, side, device=device).to(precision)
    b = torch.randn(side, side, device=device).to(precision)
    _sync(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < MATMUL_SECONDS:
        a @ b
        _sync(device)
        count += 1
    rate = count * 2.0 * side**3 / (time.perf_counter() - started)
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        return DeviceSpeed(device, torch.cuda.get_device_name(), str(precision).split(".")[-1], rate, total, free)
    return DeviceSpeed(device, "cpu", "float32", rate)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
