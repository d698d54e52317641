"""A loaded, frozen encoder: canvases in, one forward pass, the global vector and the patch-token grid out.

Every encoder is frozen and in eval mode. One forward pass gives the global vector (the model's own global token or
pooling head) and the final-layer patch-token grid with every prefix token (CLS, registers) removed; pooling happens
downstream (``lesionsignal.features.pools``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch

from lesionsignal.features.loaders import build_module, check_structure
from lesionsignal.features.model_input import normalise, resize
from lesionsignal.features.registry import PRECISIONS, EncoderKind, EncoderMismatch, EncoderSpec, resolve_spec


@dataclass(frozen=True)
class EncoderOutput:
    """global_vec (B, D) and patch_tokens (B, grid, grid, D), row-major, prefix tokens removed; float32 on CPU."""

    global_vec: torch.Tensor
    patch_tokens: torch.Tensor


class Encoder:
    """A loaded, frozen encoder: preprocess canvases, run one forward pass, return global and patch tokens."""

    def __init__(self, spec: EncoderSpec, module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.spec = spec
        self.module = module
        self.device = device
        self.dtype = dtype

    def preprocess(self, canvases: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W) uint8 square canvases -> (B, 3, S, S) float32 normalised model input on the device."""
        geometry = self.spec.geometry
        return normalise(resize(_checked_canvases(canvases).to(self.device), geometry), geometry)

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        """One forward pass over preprocessed pixels (B, 3, S, S)."""
        global_vec, tokens = self.tokens(pixels)
        # float32 on the CPU whatever the compute dtype: pooled vectors feed float64 probes downstream.
        return EncoderOutput(global_vec=global_vec.float().cpu(), patch_tokens=tokens.float().cpu())

    def tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass, its results left on the device in the compute dtype: global vectors (B, D) and the
        patch-token grid (B, grid, grid, D), for pooling where the model ran."""
        g, spec = self.spec.geometry, self.spec
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, g.input_size, g.input_size):
            raise ValueError(
                f"{spec.id}: pixels must be (B, 3, {g.input_size}, {g.input_size}), got {tuple(pixels.shape)}"
            )
        with torch.inference_mode():
            global_vec, tokens = forward_tokens(spec, self.module, pixels.to(self.device, self.dtype))
        batch, count, width = tokens.shape
        if count != g.grid * g.grid or width != spec.dim or tuple(global_vec.shape) != (batch, spec.dim):
            raise EncoderMismatch(
                f"{spec.id}: expected {g.grid}x{g.grid} patch tokens of width {spec.dim} after {spec.prefix_tokens} "
                f"prefix tokens, got {count} tokens of width {width} and a global vector {tuple(global_vec.shape)}"
            )
        return global_vec, tokens.reshape(batch, g.grid, g.grid, width)

    def encode(self, canvases: np.ndarray | torch.Tensor) -> EncoderOutput:
        return self.forward(self.preprocess(canvases))


def load_encoder(
    spec: str | EncoderSpec,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    build_on_device: bool = False,
) -> Encoder:
    """Load (or, for random-init specs, build with ``seed``) a frozen encoder on ``device`` in ``dtype``.

    The weights themselves are cast to ``dtype`` (a 7B model in float32 would not fit where the protocol runs it in
    bfloat16). Half precision is meant for CUDA; on CPU it runs, slowly, and agrees with float32 to its precision.
    ``build_on_device`` (benchmarks only) initialises random weights on ``device`` itself: other numbers than a CPU
    build with the same seed, in seconds instead of minutes for a 7B model.
    """
    spec = resolve_spec(spec)
    if dtype not in PRECISIONS.values():
        raise ValueError(f"{spec.id}: dtype must be float32, float16 or bfloat16, got {dtype}")
    device = torch.device(device)
    built = build_module(spec, dtype, seed, device if build_on_device else None)
    module = built.to(device=device, dtype=dtype).eval().requires_grad_(False)
    check_structure(spec, module)
    return Encoder(spec, module, device, dtype)


# ---- token extraction, one function per family: (module, pixels, prefix) -> (global (B, D), patches (B, N, D))


def _hf_cls(module: torch.nn.Module, pixels: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    # HF DINOv2/v3 apply the final LayerNorm to every token; the global vector is that normalised CLS (token 0),
    # which is also their pooler_output. Registers sit between CLS and the patches and are skipped with it.
    hidden = module(pixel_values=pixels).last_hidden_state
    return hidden[:, 0], hidden[:, prefix:]


def _siglip(module: torch.nn.Module, pixels: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    # No CLS: the global vector is the multi-head attention-pooling head over all (post-LayerNorm) patch tokens.
    out = module(pixel_values=pixels)
    return out.pooler_output, out.last_hidden_state[:, prefix:]


def _open_clip(module: torch.nn.Module, pixels: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    # The timm trunk's final-norm CLS, before open_clip's projection head into the joint text-image space.
    hidden = module.trunk.forward_features(pixels)
    return hidden[:, 0], hidden[:, prefix:]


def _resnet(module: torch.nn.Module, pixels: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = module.maxpool(module.relu(module.bn1(module.conv1(pixels))))
    fmap = module.layer4(module.layer3(module.layer2(module.layer1(x))))
    return torch.flatten(module.avgpool(fmap), 1), fmap.flatten(2).transpose(1, 2)


_TokenFn = Callable[[torch.nn.Module, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
_TOKEN_FNS: Mapping[EncoderKind, _TokenFn] = MappingProxyType(
    {
        EncoderKind.DINOV2: _hf_cls,
        EncoderKind.DINOV3: _hf_cls,
        EncoderKind.SIGLIP: _siglip,
        EncoderKind.OPEN_CLIP: _open_clip,
        EncoderKind.RESNET: _resnet,
    }
)


def _checked_canvases(canvases: np.ndarray | torch.Tensor) -> torch.Tensor:
    images = torch.from_numpy(np.ascontiguousarray(canvases)) if isinstance(canvases, np.ndarray) else canvases
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"canvases must be a numpy array or a torch tensor, got {type(canvases).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(
            f"canvases must be (B, H, W) uint8 squares, got shape {tuple(images.shape)} dtype {images.dtype}"
        )
    return images


def forward_tokens(
    spec: EncoderSpec, module: torch.nn.Module, pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pass extraction makes for ``spec``'s family: (global vectors (B, D), patch tokens (B, N, D))."""
    return _TOKEN_FNS[spec.kind](module, pixels, spec.prefix_tokens)
