"""The study encoders at their real sizes and geometries, with random weights: what a benchmark needs of them.

Throughput and memory depend on the architecture, the resolution and the precision, not on the weight values, so a
GPU benchmark can run every study encoder on a machine without the weights (or without hub access) by building
each one's class from the configuration its published config file states. Each entry is the study encoder's
registry entry with ``random_init_twin``: same class, geometry, width and precision; only the weights differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from lesionsignal.features.registry import STUDY_ENCODERS, EncoderSpec, random_init_twin

# From each model's published configuration (config.json, or open_clip_config.json for BiomedCLIP).
_VIT_B14 = (  # facebook/dinov2-base and microsoft/rad-dino: ViT-B/14, 86 M parameters
    ("hidden_size", 768),
    ("num_hidden_layers", 12),
    ("num_attention_heads", 12),
    ("intermediate_size", 3072),
    ("layerscale_value", 1.0),
)
_REAL_CONFIGS: Mapping[str, tuple[tuple[str, Any], ...]] = MappingProxyType(
    {
        "rad-dino": _VIT_B14,
        "dinov2-b14": _VIT_B14,
        # facebook/dinov3-vit7b16-pretrain-lvd1689m: 40 layers of width 4096, SwiGLU MLP, 4 registers, RoPE.
        "dinov3-vit7b16": (
            ("hidden_size", 4096),
            ("num_hidden_layers", 40),
            ("num_attention_heads", 32),
            ("intermediate_size", 8192),
            ("use_gated_mlp", True),
            ("num_register_tokens", 4),
            ("layerscale_value", 1e-5),
            ("key_bias", False),
        ),
        # google/medsiglip-448 vision tower: SigLIP So400m/14 at 448 px.
        "medsiglip-448": (
            ("hidden_size", 1152),
            ("num_hidden_layers", 27),
            ("num_attention_heads", 16),
            ("intermediate_size", 4304),
        ),
        # BiomedCLIP: open_clip with timm's vit_base_patch16_224 trunk and a 512-d linear projection.
        "biomedclip": (
            ("embed_dim", 512),
            ("timm_model_name", "vit_base_patch16_224"),
            ("timm_pool", ""),
            ("timm_proj", "linear"),
        ),
        "dino-resnet50": (("arch", "resnet50"),),
        "resnet50-finetuned": (("arch", "resnet50"),),
    }
)


def real_size(study_id: str) -> EncoderSpec:
    """The study encoder ``study_id`` as a random-init model of its real size, geometry and precision."""
    if study_id not in STUDY_ENCODERS:
        raise KeyError(f"{study_id!r} is not a study encoder; known: {', '.join(STUDY_ENCODERS)}")
    spec = STUDY_ENCODERS[study_id]
    return random_init_twin(spec, label=f"{spec.label} (random-init, real size)", config=_REAL_CONFIGS[study_id])


def real_size_ids() -> tuple[str, ...]:
    return tuple(_REAL_CONFIGS)
