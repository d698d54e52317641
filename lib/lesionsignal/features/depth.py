"""Every block of one forward pass: the global vector and the patch-token grid after each block, and the model's own
attention over the patches (the last block's global-to-patch attention, and its rollout through every block).

A block's tokens get the model's final normalisation before they are read, as DINOv2's ``get_intermediate_layers``
does, so the last block's pools are exactly the final-layer pools of ``features.encoder`` and every block is read on
the scale the probe sees at the end. What "global" means per family:
- CLS models (DINOv2, DINOv3, the open_clip/timm trunk): the normalised CLS token of that block;
- SigLIP (no CLS): the attention-pooling head applied to that block's normalised tokens; its attention weights over
  the patches stand in for the CLS row of the attention;
- ResNets: each stage's global average pool over that stage's map (grids of 56, 28, 14, 7 at 224 px); a ResNet has no
  attention, so its attention maps are None.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

import torch

from lesionsignal.features.encoder import Encoder
from lesionsignal.features.registry import EncoderKind, EncoderSpec

# Abnar and Zuidema's rollout adds the residual stream as an identity half of each block's attention.
ROLLOUT_RESIDUAL = 0.5


@dataclass(frozen=True)
class DepthOutput:
    """One batch through every block. ``global_vecs[k]`` is (B, D_k) and ``tokens[k]`` (B, g_k, g_k, D_k) after
    block k + 1 (prefix tokens removed); ``attention`` and ``rollout`` are (B, g, g) maps over the last grid that
    sum to 1 per image, or None for a model without attention."""

    global_vecs: tuple[torch.Tensor, ...]
    tokens: tuple[torch.Tensor, ...]
    attention: torch.Tensor | None
    rollout: torch.Tensor | None

    @property
    def depth(self) -> int:
        return len(self.tokens)


def attention_rollout(attentions: list[torch.Tensor], residual: float = ROLLOUT_RESIDUAL) -> torch.Tensor:
    """(B, N, N): the product of every block's head-averaged attention with the residual mixed in, first block
    rightmost, so row i says how much each input token reaches output token i through all blocks."""
    if not attentions:
        raise ValueError("attention rollout needs at least one block's attention")
    batch, _, n, _ = attentions[0].shape
    eye = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device).expand(batch, n, n)
    rolled = eye
    for layer in attentions:
        mixed = residual * eye + (1 - residual) * layer.mean(dim=1)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rolled = mixed @ rolled
    return rolled


def patch_map(weights: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, N) non-negative weights over the patches -> (B, grid, grid) summing to 1 per image."""
    total = weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return (weights / total).reshape(weights.shape[0], grid, grid)


@contextmanager
def _eager_attention(module: torch.nn.Module) -> Iterator[None]:
    # The fused kernels return no attention weights; the eager path computes the same outputs and keeps them.
    previous = getattr(module.config, "_attn_implementation", None)
    module.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous is not None:
            module.set_attn_implementation(previous)


def _grid_of(tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    batch, count, width = tokens.shape
    grid = math.isqrt(count)
    if grid * grid != count:
        raise ValueError(f"{count} patch tokens do not form a square grid")
    return tokens.reshape(batch, grid, grid, width), grid


def _hf_cls_depth(spec: EncoderSpec, module: torch.nn.Module, pixels: torch.Tensor) -> DepthOutput:
    norm = module.layernorm if spec.kind is EncoderKind.DINOV2 else module.norm
    prefix = spec.prefix_tokens
    with _eager_attention(module):
        out = module(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    normed = [norm(h) for h in out.hidden_states[1:]]
    grids = [_grid_of(h[:, prefix:]) for h in normed]
    grid = grids[-1][1]
    attention = patch_map(out.attentions[-1].mean(dim=1)[:, 0, prefix:], grid)
    rollout = patch_map(attention_rollout(list(out.attentions))[:, 0, prefix:], grid)
    return DepthOutput(tuple(h[:, 0] for h in normed), tuple(g for g, _ in grids), attention, rollout)


def _siglip_depth(spec: EncoderSpec, module: torch.nn.Module, pixels: torch.Tensor) -> DepthOutput:
    head = module.head
    with _eager_attention(module):
        out = module(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    normed = [module.post_layernorm(h) for h in out.hidden_states[1:]]
    grids = [_grid_of(h) for h in normed]
    grid = grids[-1][1]
    probe = head.probe.repeat(pixels.shape[0], 1, 1)
    _, weights = head.attention(probe, normed[-1], normed[-1], need_weights=True, average_attn_weights=True)
    pooled = weights[:, 0]  # (B, N): the head's one query over the patches
    rolled = torch.einsum("bn,bnm->bm", pooled, attention_rollout(list(out.attentions)))
    globals_ = tuple(head(h) for h in normed)
    return DepthOutput(globals_, tuple(g for g, _ in grids), patch_map(pooled, grid), patch_map(rolled, grid))


def _open_clip_depth(spec: EncoderSpec, module: torch.nn.Module, pixels: torch.Tensor) -> DepthOutput:
    trunk = module.trunk
    prefix = spec.prefix_tokens
    outputs: list[torch.Tensor] = []
    attentions: list[torch.Tensor] = []
    hooks, fused = [], []
    for block in trunk.blocks:
        hooks.append(block.register_forward_hook(lambda _m, _i, out: outputs.append(out)))
        # timm's unfused path passes the attention probabilities through attn_drop: its input is the map.
        hooks.append(block.attn.attn_drop.register_forward_hook(lambda _m, inp, _o: attentions.append(inp[0])))
        fused.append(block.attn.fused_attn)
        block.attn.fused_attn = False
    try:
        trunk.forward_features(pixels)
    finally:
        for hook in hooks:
            hook.remove()
        for block, was in zip(trunk.blocks, fused, strict=True):
            block.attn.fused_attn = was
    normed = [trunk.norm(h) for h in outputs]
    grids = [_grid_of(h[:, prefix:]) for h in normed]
    grid = grids[-1][1]
    attention = patch_map(attentions[-1].mean(dim=1)[:, 0, prefix:], grid)
    rollout = patch_map(attention_rollout(attentions)[:, 0, prefix:], grid)
    return DepthOutput(tuple(h[:, 0] for h in normed), tuple(g for g, _ in grids), attention, rollout)


def _resnet_depth(spec: EncoderSpec, module: torch.nn.Module, pixels: torch.Tensor) -> DepthOutput:
    x = module.maxpool(module.relu(module.bn1(module.conv1(pixels))))
    maps = []
    for stage in (module.layer1, module.layer2, module.layer3, module.layer4):
        x = stage(x)
        maps.append(x)
    globals_ = tuple(torch.flatten(module.avgpool(m), 1) for m in maps)
    return DepthOutput(globals_, tuple(m.permute(0, 2, 3, 1) for m in maps), None, None)


_DepthFn = Callable[[EncoderSpec, torch.nn.Module, torch.Tensor], DepthOutput]
_DEPTH_FNS: Mapping[EncoderKind, _DepthFn] = MappingProxyType(
    {
        EncoderKind.DINOV2: _hf_cls_depth,
        EncoderKind.DINOV3: _hf_cls_depth,
        EncoderKind.SIGLIP: _siglip_depth,
        EncoderKind.OPEN_CLIP: _open_clip_depth,
        EncoderKind.RESNET: _resnet_depth,
    }
)


def has_attention(spec: EncoderSpec) -> bool:
    """Whether the model gives attention maps (every ViT family here; a ResNet does not)."""
    return spec.kind is not EncoderKind.RESNET


def forward_depth(encoder: Encoder, pixels: torch.Tensor) -> DepthOutput:
    """One forward pass over preprocessed pixels (B, 3, S, S), read at every block; float32 on the CPU."""
    spec = encoder.spec
    size = spec.geometry.input_size
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
        raise ValueError(f"{spec.id}: pixels must be (B, 3, {size}, {size}), got {tuple(pixels.shape)}")
    with torch.inference_mode():
        out = _DEPTH_FNS[spec.kind](spec, encoder.module, pixels.to(encoder.device, encoder.dtype))

    def host(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.float().cpu()

    return DepthOutput(
        tuple(host(g) for g in out.global_vecs),  # type: ignore[misc]
        tuple(host(t) for t in out.tokens),  # type: ignore[misc]
        host(out.attention),
        host(out.rollout),
    )
