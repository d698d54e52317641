"""The encoder registry (SPEC section 3) and one adapter per model family, all giving the same EncoderOutput.

Every encoder is frozen and in eval mode. One forward pass gives the global vector (the model's own global token
or pooling head) and the final-layer patch-token grid with every prefix token (CLS, registers) removed; pooling
happens downstream. Real weights load from a hub id or a local directory; the demo encoders (and the tests) are
randomly initialised models of the same classes with small configs, so geometry, prefix tokens, pooling heads
and dtype handling run for real and only the weights differ.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from lesionsignal.geometry import Geometry, GeometryMismatch
from lesionsignal.torch_compat import ensure_torchvision

RANDOM_INIT = "random-init"
OPEN_CLIP_HUB = "hf-hub:"
TORCHVISION_WEIGHTS = "torchvision:"
_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

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


class UnknownEncoder(ValueError):
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
        if self.precision not in _PRECISIONS:
            raise ValueError(f"encoder {self.id!r}: precision must be one of {sorted(_PRECISIONS)}")

    @property
    def config_dict(self) -> dict[str, Any]:
        return dict(self.config)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _PRECISIONS[self.precision]


@dataclass(frozen=True)
class EncoderOutput:
    """global_vec (B, D) and patch_tokens (B, grid, grid, D), row-major, prefix tokens removed; float32 on CPU."""

    global_vec: torch.Tensor
    patch_tokens: torch.Tensor


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
# ResNets: 224 x 224 bilinear with ImageNet statistics (the SPEC's "224"); patch 32 is the layer4 stride (7 x 7).
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


class Encoder:
    """A loaded, frozen encoder: preprocess canvases, run one forward pass, return global and patch tokens."""

    def __init__(self, spec: EncoderSpec, module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.spec = spec
        self.module = module
        self.device = device
        self.dtype = dtype
        self._tokens = _TOKEN_FNS[spec.kind]

    def preprocess(self, canvases: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W) uint8 square canvases -> (B, 3, S, S) float32 normalised model input on the device."""
        g = self.spec.geometry
        images = _checked_canvases(canvases).to(self.device).unsqueeze(1)
        ensure_torchvision()
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as tvf

        mode = InterpolationMode.BICUBIC if g.interpolation == "bicubic" else InterpolationMode.BILINEAR
        with torch.inference_mode():
            # The gray image is resized once and copied to three channels after: identical to resizing RGB copies.
            if g.resize_in_uint8:
                resized = tvf.resize(images, [g.resize, g.resize], interpolation=mode, antialias=True).float() / 255
            else:
                resized = tvf.resize(images.float() / 255, [g.resize, g.resize], interpolation=mode, antialias=True)
            top = g.crop_offset
            cropped = resized[..., top : top + g.input_size, top : top + g.input_size]
            mean = torch.tensor(g.mean, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(g.std, device=self.device).view(1, 3, 1, 1)
            return (cropped - mean) / std

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        """One forward pass over preprocessed pixels (B, 3, S, S)."""
        g, spec = self.spec.geometry, self.spec
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, g.input_size, g.input_size):
            raise ValueError(
                f"{spec.id}: pixels must be (B, 3, {g.input_size}, {g.input_size}), got {tuple(pixels.shape)}"
            )
        with torch.inference_mode():
            global_vec, tokens = self._tokens(self.module, pixels.to(self.device, self.dtype), spec.prefix_tokens)
        batch, count, width = tokens.shape
        if count != g.grid * g.grid or width != spec.dim or tuple(global_vec.shape) != (batch, spec.dim):
            raise EncoderMismatch(
                f"{spec.id}: expected {g.grid}x{g.grid} patch tokens of width {spec.dim} after {spec.prefix_tokens} "
                f"prefix tokens, got {count} tokens of width {width} and a global vector {tuple(global_vec.shape)}"
            )
        # float32 on the CPU whatever the compute dtype: pooled vectors feed float64 probes downstream.
        return EncoderOutput(
            global_vec=global_vec.float().cpu(),
            patch_tokens=tokens.reshape(batch, g.grid, g.grid, width).float().cpu(),
        )

    def encode(self, canvases: np.ndarray | torch.Tensor) -> EncoderOutput:
        return self.forward(self.preprocess(canvases))


def load_encoder(
    spec: str | EncoderSpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Encoder:
    """Load (or, for random-init specs, build with ``seed``) a frozen encoder on ``device`` in ``dtype``.

    The weights themselves are cast to ``dtype`` (a 7B model in float32 would not fit where the protocol runs it in
    bfloat16). Half precision is meant for CUDA; on CPU it runs, slowly, and agrees with float32 to its precision.
    """
    spec = resolve_spec(spec)
    if dtype not in _PRECISIONS.values():
        raise ValueError(f"{spec.id}: dtype must be float32, float16 or bfloat16, got {dtype}")
    device = torch.device(device)
    ensure_torchvision()  # transformers' and timm's vision code import torchvision
    if spec.random_init:
        with torch.random.fork_rng(devices=[]):  # seeds the build without disturbing the caller's generator
            torch.manual_seed(seed)
            module = _BUILDERS[spec.kind](spec)
    else:
        module = _LOADERS[spec.kind](spec, dtype)
    module = module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    _check_structure(spec, module)
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


# ---- random-init builders (tiny configs of the same classes the real weights load into)


def _build_dinov2(spec: EncoderSpec) -> torch.nn.Module:
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = {**spec.config_dict, "patch_size": spec.geometry.patch, "image_size": spec.geometry.input_size}
    if cfg.get("num_register_tokens", 0):
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**cfg))
    return Dinov2Model(Dinov2Config(**cfg))


def _build_dinov3(spec: EncoderSpec) -> torch.nn.Module:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = {**spec.config_dict, "patch_size": spec.geometry.patch, "image_size": spec.geometry.input_size}
    return DINOv3ViTModel(DINOv3ViTConfig(**cfg))


def _build_siglip(spec: EncoderSpec) -> torch.nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = {**spec.config_dict, "patch_size": spec.geometry.patch, "image_size": spec.geometry.input_size}
    return SiglipVisionModel(SiglipVisionConfig(**cfg))


def _build_open_clip(spec: EncoderSpec) -> torch.nn.Module:
    cfg = spec.config_dict
    if "embed_dim" not in cfg:
        raise ValueError(f"encoder {spec.id!r}: an open_clip config needs embed_dim (the projection width)")
    embed_dim = cfg.pop("embed_dim")
    return _open_clip_tower(embed_dim, {**cfg, "image_size": spec.geometry.input_size})


def _build_resnet(spec: EncoderSpec) -> torch.nn.Module:
    ensure_torchvision()
    import torchvision

    model = torchvision.models.get_model(spec.config_dict.get("arch", "resnet50"), weights=None)
    model.fc = torch.nn.Identity()
    return model


_BUILDERS: Mapping[EncoderKind, Callable[[EncoderSpec], torch.nn.Module]] = MappingProxyType(
    {
        EncoderKind.DINOV2: _build_dinov2,
        EncoderKind.DINOV3: _build_dinov3,
        EncoderKind.SIGLIP: _build_siglip,
        EncoderKind.OPEN_CLIP: _build_open_clip,
        EncoderKind.RESNET: _build_resnet,
    }
)


# ---- real weights: hub id or local directory (a local directory never touches the network)


def _load_transformers(spec: EncoderSpec, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import (
        AutoConfig,
        Dinov2Model,
        Dinov2WithRegistersModel,
        DINOv3ViTModel,
        SiglipVisionModel,
    )

    classes = {
        EncoderKind.DINOV2: {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel},
        EncoderKind.DINOV3: {"dinov3_vit": DINOv3ViTModel},
        EncoderKind.SIGLIP: {"siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel},
    }[spec.kind]
    model_type = AutoConfig.from_pretrained(spec.source, revision=spec.revision).model_type
    if model_type not in classes:
        raise EncoderMismatch(
            f"{spec.id}: {spec.source} holds a {model_type!r} model; kind {spec.kind.value} takes {sorted(classes)}"
        )
    _check_processor(spec)
    return classes[model_type].from_pretrained(spec.source, revision=spec.revision, dtype=dtype)


def _check_processor(spec: EncoderSpec) -> None:
    """Compare the source's preprocessor_config.json, when it has one, with the registry geometry."""
    config = _read_source_json(spec, "preprocessor_config.json")
    if config is None:
        return
    found = Geometry.from_processor_config(config, spec.geometry.patch, f"{spec.source}/preprocessor_config.json")
    diffs = spec.geometry.differences(found)
    if diffs:
        raise GeometryMismatch(f"{spec.id}: registry geometry vs {spec.source} processor config: {'; '.join(diffs)}")


def _read_source_json(spec: EncoderSpec, name: str) -> dict[str, Any] | None:
    if Path(spec.source).is_dir():
        path = Path(spec.source) / name
        return json.loads(path.read_text()) if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(spec.source, name, revision=spec.revision)).read_text())
    except RemoteEntryNotFoundError:  # the repository has no such file (offline misses still raise)
        return None


def _load_open_clip(spec: EncoderSpec, dtype: torch.dtype) -> torch.nn.Module:
    """The vision tower only: the text tower (an HF BERT for BiomedCLIP) is never built or fetched."""
    folder = Path(spec.source)
    if spec.source.startswith(OPEN_CLIP_HUB):
        from huggingface_hub import snapshot_download

        patterns = ["open_clip_config.json", "*.safetensors", "*.bin"]
        repo = spec.source[len(OPEN_CLIP_HUB) :]
        folder = Path(snapshot_download(repo, revision=spec.revision, allow_patterns=patterns))
    config_path = folder / "open_clip_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{spec.id}: {config_path} not found (an open_clip folder needs open_clip_config.json)")
    full = json.loads(config_path.read_text())
    _check_open_clip_preprocess(spec, full.get("preprocess_cfg", {}), str(config_path))
    model_cfg = full["model_cfg"]
    tower = _open_clip_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"], model_cfg.get("quick_gelu", False))
    candidates = [folder / name for name in _OPEN_CLIP_WEIGHTS if (folder / name).is_file()]
    if not candidates:
        raise FileNotFoundError(f"{spec.id}: none of {', '.join(_OPEN_CLIP_WEIGHTS)} in {folder}")
    checkpoint = candidates[0]
    state = {k.removeprefix("visual."): v for k, v in _read_state(checkpoint).items() if k.startswith("visual.")}
    try:
        tower.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise EncoderMismatch(f"{spec.id}: {checkpoint} does not fit its open_clip_config.json: {err}") from None
    return tower


def _open_clip_tower(embed_dim: int, vision_cfg: Mapping[str, Any], quick_gelu: bool = False) -> torch.nn.Module:
    ensure_torchvision()
    from open_clip.model import _build_vision_tower

    # Never let timm fetch its own ImageNet weights: the CLIP checkpoint supplies every tower weight.
    tower = _build_vision_tower(embed_dim, {**vision_cfg, "timm_model_pretrained": False}, quick_gelu)
    if not hasattr(tower, "trunk"):
        raise EncoderMismatch("only timm-trunk open_clip vision towers (as in BiomedCLIP) are supported")
    return tower


def _check_open_clip_preprocess(spec: EncoderSpec, cfg: Mapping[str, Any], where: str) -> None:
    """open_clip's eval transform is Resize(size, shortest edge) + CenterCrop(size): no crop on a square canvas."""
    g = spec.geometry
    size = cfg.get("size", g.resize)
    sides = set(size) if isinstance(size, list | tuple) else {size}
    try:
        if len(sides) != 1:
            raise ValueError(f"size {size} is not square")
        found = replace(
            g,
            resize=int(sides.pop()),
            crop=None,
            mean=tuple(cfg.get("mean", g.mean)),
            std=tuple(cfg.get("std", g.std)),
            interpolation=cfg.get("interpolation", g.interpolation),
        )
    except ValueError as err:
        raise GeometryMismatch(f"{spec.id}: {where} preprocess_cfg: {err}") from None
    diffs = g.differences(found)
    if diffs:
        raise GeometryMismatch(f"{spec.id}: registry geometry vs {where} preprocess_cfg: {'; '.join(diffs)}")


def _load_resnet(spec: EncoderSpec, dtype: torch.dtype) -> torch.nn.Module:
    ensure_torchvision()
    import torchvision

    arch = spec.config_dict.get("arch", "resnet50")
    if spec.source.startswith(TORCHVISION_WEIGHTS):
        model = torchvision.models.get_model(arch, weights=spec.source[len(TORCHVISION_WEIGHTS) :])
        model.fc = torch.nn.Identity()
        return model
    model = _build_resnet(spec)
    try:
        model.load_state_dict(_resnet_state(spec), strict=True)
    except RuntimeError as err:
        raise EncoderMismatch(f"{spec.id}: checkpoint {spec.source} does not fit {arch}: {err}") from None
    return model


def _resnet_state(spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """A backbone state dict from a URL, a checkpoint file, or a folder holding exactly one checkpoint."""
    source = spec.source
    if source.startswith(("https://", "http://")):
        raw = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
        raw = {key.removeprefix("module."): value for key, value in raw.items()}
    else:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors", ".bin"))
            if len(found) != 1:
                raise FileNotFoundError(
                    f"{spec.id}: expected one checkpoint in {path}, found {[p.name for p in found]}"
                )
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"{spec.id}: checkpoint {path} not found")
        raw = _read_state(path)
    # The classifier and DINO's projection head are not part of the backbone.
    state = {key.removeprefix("backbone."): value for key, value in raw.items()}
    return {key: value for key, value in state.items() if not key.startswith(("fc.", "head."))}


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch checkpoint, un-nested and without DataParallel's "module." prefix."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: Any = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("teacher", "state_dict", "model"):  # DINO training checkpoints nest the weights; take the teacher
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    return {key.removeprefix("module."): value for key, value in raw.items()}


_LOADERS: Mapping[EncoderKind, Callable[[EncoderSpec, torch.dtype], torch.nn.Module]] = MappingProxyType(
    {
        EncoderKind.DINOV2: _load_transformers,
        EncoderKind.DINOV3: _load_transformers,
        EncoderKind.SIGLIP: _load_transformers,
        EncoderKind.OPEN_CLIP: _load_open_clip,
        EncoderKind.RESNET: _load_resnet,
    }
)


# ---- checks shared by built and loaded models


def _check_structure(spec: EncoderSpec, module: torch.nn.Module) -> None:
    """Patch size, width and prefix-token count of the module must be what the registry entry says."""
    found: dict[str, int] = {}
    if spec.kind in (EncoderKind.DINOV2, EncoderKind.DINOV3, EncoderKind.SIGLIP):
        cfg = module.config
        found["patch"] = _as_int(cfg.patch_size)
        found["dim"] = cfg.hidden_size
        cls = 0 if spec.kind is EncoderKind.SIGLIP else 1
        found["prefix_tokens"] = cls + getattr(cfg, "num_register_tokens", 0)
    elif spec.kind is EncoderKind.OPEN_CLIP:
        found["patch"] = _as_int(module.trunk.patch_embed.patch_size)
        found["dim"] = module.trunk.num_features
        found["prefix_tokens"] = module.trunk.num_prefix_tokens
    else:
        found["dim"] = module.inplanes  # torchvision leaves it at layer4's output width
    expected = {"patch": spec.geometry.patch, "dim": spec.dim, "prefix_tokens": spec.prefix_tokens}
    diffs = [f"{k}: registry {expected[k]} vs model {v}" for k, v in found.items() if v != expected[k]]
    if diffs:
        raise EncoderMismatch(f"{spec.id} ({spec.source}): {'; '.join(diffs)}")


def _as_int(value: Any) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise EncoderMismatch(f"non-square patch size {value}")
        return int(value[0])
    return int(value)


def _checked_canvases(canvases: np.ndarray | torch.Tensor) -> torch.Tensor:
    images = torch.from_numpy(np.ascontiguousarray(canvases)) if isinstance(canvases, np.ndarray) else canvases
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"canvases must be a numpy array or a torch tensor, got {type(canvases).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(
            f"canvases must be (B, H, W) uint8 squares, got shape {tuple(images.shape)} dtype {images.dtype}"
        )
    return images


def _is_hub_id(source: str) -> bool:
    if source.startswith(OPEN_CLIP_HUB):
        return True
    if source.startswith(("https://", "http://", TORCHVISION_WEIGHTS)) or source == RANDOM_INIT:
        return False
    return not Path(source).exists() and source.count("/") == 1
