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

# ImageNet statistics: facebook/dinov2-base/preprocessor_config.json "image_mean" / "image_std" (torchvision's and
# timm's IMAGENET_DEFAULT_MEAN / _STD); the DINOv3 hub repositories' preprocessor_config.json carry the same numbers.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP statistics: open_clip/constants.py OPENAI_DATASET_MEAN / _STD, which BiomedCLIP's open_clip_config.json
# repeats in "preprocess_cfg".
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


class EncoderMismatch(UserError, ValueError):
    """A source (folder, hub snapshot, checkpoint) whose configuration or weights differ from the registry entry:
    patch, width, registers, native image size, preprocessing. The message names each field and both values."""


class SourceNotFound(UserError, FileNotFoundError):
    """An encoder source that is not there: a missing folder or file, or a hub repository absent from the cache
    while the hub is offline."""


class UnsupportedPrecision(UserError, ValueError):
    """A compute precision the model's authors say it does not support."""


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry.

    source: a hub id ("org/name"; "hf-hub:org/name" for open_clip), a local directory or checkpoint file, a URL
    (DINO ResNet-50), "torchvision:<weights enum>", or "random-init". prefix_tokens: tokens before the patch grid
    (CLS plus registers). dim: width of the global vector and of each patch token. native_size: the image side the
    source's own config declares (HF config.json ``image_size``, open_clip ``vision_cfg.image_size``), the grid its
    position embeddings were saved for; None where no config says it (ResNets, random-init models). config:
    constructor arguments of a random-init model as (name, value) pairs. precision: the compute dtype the protocol
    runs it in. weights_sha256: SHA-256 of the source's weights file, checked before loading (the project's own
    trained demo encoder; hub models are pinned by revision instead). twin_of: on a random-init entry, the id of the
    trained encoder it is the untrained twin of (same class, config and geometry).
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
    native_size: int | None = None
    weights_sha256: str | None = None  # a local model folder's weights file must have exactly this digest
    twin_of: str | None = None  # a random-init encoder of the same shape as this trained one: the learning control

    def __post_init__(self) -> None:
        if self.prefix_tokens < 0 or self.dim < 1:
            raise ValueError(f"encoder {self.id!r}: prefix_tokens >= 0 and dim >= 1 required")
        if self.random_init != (self.source == RANDOM_INIT):
            raise ValueError(f"encoder {self.id!r}: random_init must be true exactly when source is {RANDOM_INIT!r}")
        if self.twin_of is not None and not self.random_init:
            raise ValueError(f"encoder {self.id!r}: only a random-init encoder can be the twin of a trained one")
        if self.random_init and RANDOM_INIT not in self.label:
            raise ValueError(f"encoder {self.id!r}: a random-init encoder's label must say {RANDOM_INIT!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"encoder {self.id!r}: precision must be one of {sorted(PRECISIONS)}")
        refused = precision_problem(self, self.precision)
        if refused:
            raise ValueError(refused)

    @property
    def config_dict(self) -> dict[str, Any]:
        return dict(self.config)

    @property
    def torch_dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]


def _geometry(resize: int, crop: int | None, patch: int, mean, std, interpolation, uint8: bool = True) -> Geometry:
    return Geometry(resize, crop, patch, tuple(mean), tuple(std), interpolation, uint8)


# ---- preprocessing geometries: every number with the file it comes from.
# A hub repository's preprocessor_config.json is compared with these at load time and by check_source
# (lesionsignal.features.sources), so a revision that changes one is refused instead of silently used.

_RAD_DINO = _geometry(
    518,  # microsoft/rad-dino, preprocessor_config.json: "size": {"shortest_edge": 518}
    None,  # same file: "crop_size" 518 x 518, equal to the resize, so no crop
    14,  # microsoft/rad-dino, config.json: "patch_size": 14 (37 x 37 tokens)
    (0.5307,) * 3,  # preprocessor_config.json: "image_mean" [0.5307] x 3 (one gray level, repeated)
    (0.2583,) * 3,  # preprocessor_config.json: "image_std" [0.2583] x 3
    "bicubic",  # preprocessor_config.json: "resample": 3 (PIL bicubic)
)
_DINOV2_BASE = _geometry(
    256,  # facebook/dinov2-base, preprocessor_config.json: "size": {"shortest_edge": 256}
    224,  # same file: "crop_size" 224 x 224, "do_center_crop": true
    14,  # facebook/dinov2-base, config.json: "patch_size": 14 (16 x 16 tokens at 224)
    IMAGENET_MEAN,  # preprocessor_config.json: "image_mean"
    IMAGENET_STD,  # preprocessor_config.json: "image_std"
    "bicubic",  # preprocessor_config.json: "resample": 3
)
_DINOV3 = _geometry(
    224,  # facebook/dinov3-vit7b16-pretrain-lvd1689m, preprocessor_config.json: "size" 224 x 224, no crop
    None,
    16,  # same repository, config.json: "patch_size": 16 (DINOv3 paper, Simeoni et al. 2025: ViT-7B/16)
    IMAGENET_MEAN,  # preprocessor_config.json: "image_mean"
    IMAGENET_STD,  # preprocessor_config.json: "image_std"
    "bilinear",  # preprocessor_config.json: "resample": 2
    uint8=False,  # DINOv3ViTImageProcessorFast rescales to [0, 1] before it resizes (transformers' processor)
)
_BIOMEDCLIP = _geometry(
    # microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224, open_clip_config.json: "vision_cfg" "image_size":
    # 224; open_clip's eval transform (open_clip/transform.py) is Resize(224, shortest edge) + CenterCrop(224), a
    # no-op crop on the square canvas.
    224,
    None,
    16,  # open_clip_config.json: "timm_model_name": "vit_base_patch16_224" (timm: patch 16, width 768)
    OPENAI_CLIP_MEAN,  # open_clip_config.json: "preprocess_cfg" "mean"
    OPENAI_CLIP_STD,  # open_clip_config.json: "preprocess_cfg" "std"
    "bicubic",  # not in preprocess_cfg: open_clip's default interpolation (open_clip/transform.py PreprocessCfg)
)
# MedSigLIP's published recipe for an image (Google-Health/medsiglip, python/serving/predictor.py,
# _InputImageIter._pre_process and _zero_pad_image_to_square): divide by the dtype's maximum, repeat a gray channel
# three times, zero-pad to a square (the odd pixel after), then SiglipImageProcessor resizes and normalises. On the
# project's canvas (8-bit, already padded the same way by core.canvas.pad_to_square) that is exactly: resize the
# 8-bit image, divide by 255, normalise; the processor of that code's transformers (~4.52) resized an 8-bit PIL
# image too.
_MEDSIGLIP = _geometry(
    448,  # google/medsiglip-448, preprocessor_config.json: "size" 448 x 448 (predictor.py: MODEL_INPUT_* = 448)
    None,  # SiglipImageProcessor has no crop step
    14,  # google/medsiglip-448, config.json: "vision_config" "patch_size": 14 (32 x 32 tokens)
    (0.5,) * 3,  # preprocessor_config.json: "image_mean" [0.5] x 3, so values land in [-1, 1]
    (0.5,) * 3,  # preprocessor_config.json: "image_std" [0.5] x 3
    "bicubic",  # preprocessor_config.json: "resample": 3 (also SiglipImageProcessor's default, used by predictor.py)
)
# ResNets: 224 x 224 bilinear with ImageNet statistics (the protocol's "224"); patch 32 is torchvision ResNet-50's
# layer4 stride, a 7 x 7 map. The DINO checkpoint carries no preprocessing file to check these against.
_RESNET = _geometry(224, None, 32, IMAGENET_MEAN, IMAGENET_STD, "bilinear")

# facebookresearch/dinov3 issue 181: "DINOv3 doesn't support FP16" (an answer quoted in the thread). The study runs
# the 7B in bfloat16 instead (protocol section 10); float16 is refused, never silently replaced.
_REFUSED_PRECISIONS: Mapping[EncoderKind, Mapping[str, str]] = MappingProxyType(
    {
        EncoderKind.DINOV3: MappingProxyType(
            {
                "float16": "upstream (facebookresearch/dinov3, issue 181) reports that DINOv3 does not support "
                "float16; run it in bfloat16, the study's precision for it (protocol section 10), or float32",
            }
        )
    }
)


def precision_problem(spec: EncoderSpec, precision: str | torch.dtype) -> str | None:
    """Why ``spec`` must not run in ``precision`` (a PRECISIONS name or a torch dtype), or None if it may."""
    name = precision if isinstance(precision, str) else _precision_name(precision)
    reason = _REFUSED_PRECISIONS.get(spec.kind, {}).get(name)
    return None if reason is None else f"encoder {spec.id!r} in {name}: {reason}"


def _precision_name(dtype: torch.dtype) -> str:
    return next((name for name, value in PRECISIONS.items() if value == dtype), str(dtype))


def _registry(*specs: EncoderSpec) -> Mapping[str, EncoderSpec]:
    return MappingProxyType({s.id: s for s in specs})


STUDY_ENCODERS: Mapping[str, EncoderSpec] = _registry(
    EncoderSpec(
        id="rad-dino",
        kind=EncoderKind.DINOV2,
        source="microsoft/rad-dino",
        revision=None,
        geometry=_RAD_DINO,
        prefix_tokens=1,  # CLS only: config.json has no num_register_tokens
        dim=768,  # config.json "hidden_size": 768
        global_pool="cls",
        label="RAD-DINO",
        native_size=518,  # config.json "image_size": 518
    ),
    EncoderSpec(
        id="dinov2-b14",
        kind=EncoderKind.DINOV2,
        source="facebook/dinov2-base",
        revision=None,
        geometry=_DINOV2_BASE,
        prefix_tokens=1,  # CLS only (dinov2-base has no registers)
        dim=768,  # config.json "hidden_size": 768
        global_pool="cls",
        label="DINOv2-B/14",
        native_size=518,  # config.json "image_size": 518, interpolated to 16 x 16 at 224
    ),
    EncoderSpec(
        id="dinov3-vit7b16",
        kind=EncoderKind.DINOV3,
        source="facebook/dinov3-vit7b16-pretrain-lvd1689m",
        revision=None,
        geometry=_DINOV3,
        prefix_tokens=5,  # CLS + config.json "num_register_tokens": 4
        dim=4096,  # config.json "hidden_size": 4096 (40 layers, 32 heads: ViT-7B)
        global_pool="cls",
        label="DINOv3 ViT-7B/16",
        precision="bfloat16",
        native_size=224,  # config.json "image_size": 224 (RoPE: no table)
    ),
    EncoderSpec(
        id="biomedclip",
        kind=EncoderKind.OPEN_CLIP,
        source="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        revision=None,
        geometry=_BIOMEDCLIP,
        prefix_tokens=1,  # timm vit_base_patch16_224: one CLS, no registers
        dim=768,  # timm vit_base_patch16_224 width; the 512-d projection is not used (protocol section 10)
        global_pool="cls_before_projection",
        label="BiomedCLIP",
        native_size=224,  # open_clip_config.json "vision_cfg" "image_size": 224
    ),
    EncoderSpec(
        id="medsiglip-448",
        kind=EncoderKind.SIGLIP,
        source="google/medsiglip-448",
        revision=None,
        geometry=_MEDSIGLIP,
        prefix_tokens=0,  # SigLIP has no CLS: the attention-pooling head makes the global vector
        dim=1152,  # config.json "vision_config" "hidden_size": 1152 (SigLIP So400m)
        global_pool="attention_pool_head",
        label="MedSigLIP-448",
        native_size=448,  # config.json "vision_config" "image_size": 448
    ),
    EncoderSpec(
        id="dino-resnet50",
        kind=EncoderKind.RESNET,
        source="https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        revision=None,
        geometry=_RESNET,
        prefix_tokens=0,
        dim=2048,  # torchvision resnet50 layer4 width (DINO's hubconf: resnet50 with fc = Identity)
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

# The project's own trained demo encoder (`make demo-encoder`, lesionsignal.training): a Dinov2Model at 448 px with
# 28 px patches, so a 4 px canvas stimulus is about 2 model pixels inside one 16 x 16 grid cell, and the forward pass
# stays near 8 ms on two CPU cores. Its random-init twin has the same shape and geometry. The folder lives in the
# checkout (models/), found from this file as config.project_root finds the checkout.
DEMO_MODELS = Path(__file__).resolve().parents[3] / "models"
_DEMO_TRAINED_CONFIG = (
    ("hidden_size", 128),
    ("num_hidden_layers", 4),
    ("num_attention_heads", 4),
    ("intermediate_size", 512),
)
# The training films' pixel mean and standard deviation at 448 px (make demo-encoder computes them, as RAD-DINO's
# authors computed theirs over its training radiographs; models/demo-dino-vit/preprocessor_config.json holds them).
DEMO_FILM_MEAN = 0.464
DEMO_FILM_STD = 0.3323
_DEMO_TRAINED = _geometry(
    448,  # models/demo-dino-vit/preprocessor_config.json: "size" 448 x 448, no crop
    None,
    28,  # models/demo-dino-vit/config.json: "patch_size": 28 (16 x 16 tokens)
    (DEMO_FILM_MEAN,) * 3,  # preprocessor_config.json "image_mean"
    (DEMO_FILM_STD,) * 3,  # preprocessor_config.json "image_std"
    "bilinear",  # preprocessor_config.json "resample": 2
)
# SHA-256 of models/demo-dino-vit/model.safetensors, as its model card and `make demo-encoder` print it.
DEMO_TRAINED_SHA256 = "8e34fef34f2dfd217b6f52ec3856fb0cfacbb6530622595f4a73b9199d884b7a"


def random_init_twin(trained: EncoderSpec, *, label: str, config: tuple[tuple[str, Any], ...]) -> EncoderSpec:
    """The untrained control of ``trained``: its class, geometry and width, built from ``config`` with random
    weights; its id is the trained one's with "-random"."""
    return replace(
        trained,
        id=f"{trained.id}-random",
        source=RANDOM_INIT,
        revision=None,
        label=label,
        random_init=True,
        config=config,
        native_size=None,
        weights_sha256=None,
        twin_of=trained.id,
    )


_DEMO_TRAINED_VIT = EncoderSpec(
    id="demo-dino-vit",
    kind=EncoderKind.DINOV2,
    source=str(DEMO_MODELS / "demo-dino-vit"),
    revision=None,
    geometry=_DEMO_TRAINED,
    prefix_tokens=1,
    dim=128,
    global_pool="cls",
    label="demo ViT/28 at 448 px (trained by this project on rendered films, MAE)",
    native_size=448,
    weights_sha256=DEMO_TRAINED_SHA256,
)

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
    _DEMO_TRAINED_VIT,
    random_init_twin(
        _DEMO_TRAINED_VIT,
        label="demo ViT/28 at 448 px (random-init twin of the trained one)",
        config=_DEMO_TRAINED_CONFIG,
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
        raise SourceNotFound(f"encoder {spec.id!r}: source {new_source} does not exist")
    if revision is not None and not is_hub_id(new_source):
        raise ValueError(f"encoder {spec.id!r}: revision {revision!r} needs a hub id, not source {new_source!r}")
    # A new source without a revision drops the registry's pin: a pin belongs to the source it was set for.
    return replace(spec, source=new_source, revision=revision)


def random_twin(trained_id: str) -> EncoderSpec:
    """The registry's random-init twin of the trained encoder ``trained_id`` (the entry whose twin_of names it)."""
    registry = {**STUDY_ENCODERS, **DEMO_ENCODERS}
    twin = next((spec for spec in registry.values() if spec.twin_of == trained_id), None)
    if twin is None:
        raise UnknownEncoder(f"no registry entry is the random-init twin of {trained_id!r}")
    return twin


def is_hub_id(source: str) -> bool:
    """Whether ``source`` names a hub repository ("org/name", "hf-hub:org/name") rather than a path or URL."""
    if source.startswith(OPEN_CLIP_HUB):
        return True
    if source.startswith(("https://", "http://", TORCHVISION_WEIGHTS)) or source == RANDOM_INIT:
        return False
    return not Path(source).exists() and source.count("/") == 1
