"""Make torchvision importable next to a CPU-only torch build.

The torchvision wheel on PyPI is built against CUDA; with the CPU torch its compiled operators fail to load and
``import torchvision`` dies on the missing ``torchvision::nms`` schema, taking timm, open_clip and transformers'
vision models with it. Declaring the two schemas it registers fake kernels for lets the import finish. The C++
operators themselves (nms, roi_align, video/image decoding) stay unusable: this project decodes with OpenCV and
pydicom and never calls them. On a machine where the real operators load, nothing is changed.
"""

from __future__ import annotations

import importlib.util
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_held: list[object] = []  # the torch.library.Library handle must outlive this call or its schemas vanish


def ensure_torchvision() -> bool:
    """Import torchvision, declaring placeholder schemas first only if its operators cannot load.

    Returns True when the placeholders were needed. Call before importing torchvision, timm or open_clip.
    """
    if "torchvision" in sys.modules:
        return bool(_held)
    import torch

    if importlib.util.find_spec("torchvision") is None:
        raise ImportError("torchvision is not installed; run `make setup`")
    if _operators_load():
        import torchvision

        return False
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        lib.define(schema)
    _held.append(lib)
    import torchvision  # noqa: F401

    return True


def _operators_load() -> bool:
    """Whether torchvision's compiled extension loads against this torch (a CUDA/CPU mismatch makes it fail)."""
    import torch

    try:
        spec = importlib.util.find_spec("torchvision")
        assert spec is not None and spec.submodule_search_locations
        from pathlib import Path

        folder = Path(next(iter(spec.submodule_search_locations)))
        candidates = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
        if not candidates:
            return False
        torch.ops.load_library(str(candidates[0]))
    except (OSError, RuntimeError, AssertionError, StopIteration):
        return False
    return hasattr(torch.ops.torchvision, "nms") and _has_kernel()


def _has_kernel() -> bool:
    import torch

    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CPU")
    except RuntimeError:
        return False
