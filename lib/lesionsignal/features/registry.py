"""The encoder registry: every study encoder and demo encoder, with its source and exact token geometry.

One ``EncoderSpec`` per model: where its weights come from (a hub id or a local folder, optionally a pinned
revision), how its processor turns the canvas into model input, how many prefix tokens precede the patch grid and
what its global vector is. The demo encoders are randomly initialised models of the same classes with small configs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from lesionsignal.core.errors import UserError
from lesionsignal.features.geometry import Geometry

RANDOM_INIT = "random-init"
OPEN_CLIP_HUB = "hf-hub:"
TORCHVISION_WEIGHTS = "torchvision:"
PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderKind(enum.Enum):
    DINOV2 = "dinov2"
    DINOV3 = "dinov3"
    OPEN_CLIP = "open_clip"
    SIGLIP = "siglip"
    RESNET = "resnet"


class UnknownEncoder(UserError, ValueError):
    """An encoder id that is not in the registry."""


class EncoderMismatch(ValueError):
    """Loaded weights whose structure (patch, width, prefix tokens, grid) differs from the registry entry."""


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry.

    source: a hub id ("org/name"; "hf-hub:org/name" for open_clip), a local directory or checkpoint file, a URL
    (DINO ResNet-50), "torchvision:<weights enum>", or "random-init". prefix_tokens: tokens before the patch grid
    (CLS plus registers). dim: width of the global vector and of each patch token. config: constructor arguments
    of a random-init model as (name, value) pairs. precision: the compute dtype the protocol runs it in.
    """

    id: str
    kind: EncoderKind
    source: str
    revision: str | None
    geometry: Geometry
    prefix_tokens: int
    dim: int
    global_pool: str
    label: str
    random_init: bool = False
    config: tuple[tuple[str, Any], ...] = ()
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.prefix_tokens < 0 or self.dim < 1:
            raise ValueError(f"encoder {self.id!r}: prefix_tokens >= 0 and dim >= 1 required")
        if self.random_init != (self.source == RANDOM_INIT):
            raise ValueError(f"encoder {self.id!r}: random_init must be true exactly when source is {RANDOM_INIT!r}")
        if self.random_init and RANDOM_INIT not in self.label:
            raise ValueError(f"encoder {self.id!r}: a random-init encoder's label must say {RANDOM_INIT!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"encoder {self.id!r}: precision must be one of {sorted(PRECISIONS)}")

    @property
    def config_dict(self) -> dict[str, Any]:
        return dict(self.config)

    @property
    def torch_dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]


def _geometry(resize: int, crop: int | None, patch: int, mean, std, interpolation, uint8: bool = True) -> Geometry:
    return Geometry(resize, crop, patch, tuple(mean), tuple(std), interpolation, uint8)


# rad-dino's preprocessor_config.json: BitImageProcessor, shortest edge 518, centre crop 518, bicubic, mean 0.5307,
# std 0.2583 (a single gray level repeated). Loading checks any processor config it finds against these numbers.
_RAD_DINO = _geometry(518, None, 14, (0.5307,) * 3, (0.2583,) * 3, "bicubic")
# facebook/dinov2-base: BitImageProcessor defaults for DINOv2 (shortest edge 256, centre crop 224, bicubic).
_DINOV2_BASE = _geometry(256, 224, 14, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
# DINOv3ViTImageProcessor: 224 x 224 bilinear, rescaled to [0, 1] before the resize.
_DINOV3 = _geometry(224, None, 16, IMAGENET_MEAN, IMAGENET_STD, "bilinear", uint8=False)
# open_clip eval transform for BiomedCLIP: Resize(224, bicubic) + CenterCrop(224) (a no-op on a square canvas).
_BIOMEDCLIP = _geometry(224, None, 16, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic")
# google/medsiglip-448: SiglipImageProcessor 448 x 448, bicubic, mean = std = 0.5.
_MEDSIGLIP = _geometry(448, None, 14, (0.5,) * 3, (0.5,) * 3, "bicubic")
# ResNets: 224 x 224 bilinear with ImageNet statistics (the protocol's "224"); patch 32 is the layer4 stride (7 x 7).
_RESNET = _geometry(224, None, 32, IMAGENET_MEAN, IMAGENET_STD, "bilinear")


def _registry(*specs: EncoderSpec) -> Mapping[str, EncoderSpec]:
    return MappingProxyType({s.id: s for s in specs})


STUDY_ENCODERS: Mapping[str, EncoderSpec] = _registry(
    EncoderSpec(
        id="rad-dino",
        kind=EncoderKind.DINOV2,
        source="microsoft/rad-dino",
        revision=None,
        geometry=_RAD_DINO,
        prefix_tokens=1,
        dim=768,
        global_pool="cls",
        label="RAD-DINO",
    ),
    EncoderSpec(
        id="dinov2-b14",
        kind=EncoderKind.DINOV2,
        source="facebook/dinov2-base",
        revision=None,
        geometry=_DINOV2_BASE,
        prefix_tokens=1,
        dim=768,
        global_pool="cls",
        label="DINOv2-B/14",
    ),
    EncoderSpec(
        id="dinov3-vit7b16",
        kind=EncoderKind.DINOV3,
        source="facebook/dinov3-vit7b16-pretrain-lvd1689m",
        revision=None,
        geometry=_DINOV3,
        prefix_tokens=5,  # CLS + 4 registers
        dim=4096,
        global_pool="cls",
        label="DINOv3 ViT-7B/16",
        precision="bfloat16",
    ),
    EncoderSpec(
        id="biomedclip",
        kind=EncoderKind.OPEN_CLIP,
        source="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        revision=None,
        geometry=_BIOMEDCLIP,
        prefix_tokens=1,
        dim=768,
        global_pool="cls_before_projection",
        label="BiomedCLIP",
    ),
    EncoderSpec(
        id="medsiglip-448",
        kind=EncoderKind.SIGLIP,
        source="google/medsiglip-448",
        revision=None,
        geometry=_MEDSIGLIP,
        prefix_tokens=0,
        dim=1152,
        global_pool="attention_pool_head",
        label="MedSigLIP-448",
    ),
    EncoderSpec(
        id="dino-resnet50",
        kind=EncoderKind.RESNET,
        source="https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        revision=None,
        geometry=_RESNET,
        prefix_tokens=0,
        dim=2048,
        global_pool="global_average_pool",
        label="DINO ResNet-50 (frozen)",
        config=(("arch", "resnet50"),),
    ),
    EncoderSpec(
        id="resnet50-finetuned",
        kind=EncoderKind.RESNET,
        source="torchvision:IMAGENET1K_V2",  # the starting point; a fine-tuned checkpoint comes in as a source
        revision=None,
        geometry=_RESNET,
        prefix_tokens=0,
        dim=2048,
        global_pool="global_average_pool",
        label="ResNet-50 (ImageNet, fine-tuned)",
        config=(("arch", "resnet50"),),
    ),
)

# Demo towers are kept small so the whole demo panel (about 12,000 forward passes per encoder) runs in about a
# minute on two CPU cores; width 192 x 4 layers was 15 times slower there.
_DEMO_VIT = (("hidden_size", 96), ("num_hidden_layers", 3), ("num_attention_heads", 3), ("intermediate_size", 384))
# The demo ResNet sees 128 px (a 4 x 4 layer4 map): at 224 px a ResNet-18 alone took several CPU minutes.
_DEMO_RESNET = _geometry(128, None, 32, IMAGENET_MEAN, IMAGENET_STD, "bilinear")

DEMO_ENCODERS: Mapping[str, EncoderSpec] = _registry(
    EncoderSpec(
        id="demo-dinov2-vit",
        kind=EncoderKind.DINOV2,
        source=RANDOM_INIT,
        revision=None,
        geometry=_DINOV2_BASE,
        prefix_tokens=1,
        dim=96,
        global_pool="cls",
        label="demo ViT/14 (random-init Dinov2Model)",
        random_init=True,
        config=_DEMO_VIT,
    ),
    EncoderSpec(
        id="demo-siglip",
        kind=EncoderKind.SIGLIP,
        source=RANDOM_INIT,
        revision=None,
        geometry=_geometry(224, None, 16, (0.5,) * 3, (0.5,) * 3, "bicubic"),
        prefix_tokens=0,
        dim=96,
        global_pool="attention_pool_head",
        label="demo SigLIP/16 (random-init SiglipVisionModel)",
        random_init=True,
        config=_DEMO_VIT,
    ),
    EncoderSpec(
        id="demo-resnet",
        kind=EncoderKind.RESNET,
        source=RANDOM_INIT,
        revision=None,
        geometry=_DEMO_RESNET,
        prefix_tokens=0,
        dim=512,
        global_pool="global_average_pool",
        label="demo ResNet-18 at 128 px (random-init torchvision)",
        random_init=True,
        config=(("arch", "resnet18"),),
    ),
)


def resolve_spec(
    id_or_spec: str | EncoderSpec, *, source: str | PathLike[str] | None = None, revision: str | None = None
) -> EncoderSpec:
    """A registry entry, optionally re-pointed at another source (a local directory, a mirror) or revision."""
    if isinstance(id_or_spec, EncoderSpec):
        spec = id_or_spec
    else:
        registry = {**STUDY_ENCODERS, **DEMO_ENCODERS}
        if id_or_spec not in registry:
            raise UnknownEncoder(f"unknown encoder {id_or_spec!r}; known: {', '.join(registry)}")
        spec = registry[id_or_spec]
    if source is None and revision is None:
        return spec
    if spec.random_init:
        raise ValueError(f"encoder {spec.id!r} is random-init; it takes no source or revision")
    new_source = spec.source if source is None else str(source)
    if new_source == RANDOM_INIT:
        raise ValueError(f"encoder {spec.id!r}: a study encoder cannot be re-pointed at {RANDOM_INIT!r}")
    if Path(new_source).is_absolute() and not Path(new_source).exists():
        raise FileNotFoundError(f"encoder {spec.id!r}: source {new_source} does not exist")
    if revision is not None and not _is_hub_id(new_source):
        raise ValueError(f"encoder {spec.id!r}: revision {revision!r} needs a hub id, not source {new_source!r}")
    # A new source without a revision drops the registry's pin: a pin belongs to the source it was set for.
    return replace(spec, source=new_source, revision=revision)


def _is_hub_id(source: str) -> bool:
    if source.startswith(OPEN_CLIP_HUB):
        return True
    if source.startswith(("https://", "http://", TORCHVISION_WEIGHTS)) or source == RANDOM_INIT:
        return False
    return not Path(source).exists() and source.count("/") == 1
