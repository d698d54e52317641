"""Building encoder modules: random-init models of the real classes, and real weights from a hub id or a folder.

A local directory never touches the network. Whatever the source, the module's structure (patch, width, prefix
tokens) is checked against its registry entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from lesionsignal.core.progress import widgetless_tqdm
from lesionsignal.core.torch_compat import ensure_torchvision
from lesionsignal.features.geometry import Geometry, GeometryMismatch
from lesionsignal.features.registry import (
    OPEN_CLIP_HUB,
    TORCHVISION_WEIGHTS,
    EncoderKind,
    EncoderMismatch,
    EncoderSpec,
)

_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

# ---- random-init builders (tiny configs of the same classes the real weights load into)


def _build_dinov2(spec: EncoderSpec) -> torch.nn.Module:
    with widgetless_tqdm():
        from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = {**spec.config_dict, "patch_size": spec.geometry.patch, "image_size": spec.geometry.input_size}
    if cfg.get("num_register_tokens", 0):
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**cfg))
    return Dinov2Model(Dinov2Config(**cfg))


def _build_dinov3(spec: EncoderSpec) -> torch.nn.Module:
    with widgetless_tqdm():
        from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = {**spec.config_dict, "patch_size": spec.geometry.patch, "image_size": spec.geometry.input_size}
    return DINOv3ViTModel(DINOv3ViTConfig(**cfg))


def _build_siglip(spec: EncoderSpec) -> torch.nn.Module:
    with widgetless_tqdm():
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
    with widgetless_tqdm():
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
    with widgetless_tqdm():
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
        with widgetless_tqdm():
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
    with widgetless_tqdm():
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


def check_structure(spec: EncoderSpec, module: torch.nn.Module) -> None:
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


def build_module(spec: EncoderSpec, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """The spec's module: built from ``seed`` (random-init specs) or loaded from its source, not yet moved."""
    ensure_torchvision()  # transformers' and timm's vision code import torchvision
    if spec.random_init:
        with torch.random.fork_rng(devices=[]):  # seeds the build without disturbing the caller's generator
            torch.manual_seed(seed)
            return _BUILDERS[spec.kind](spec)
    return _LOADERS[spec.kind](spec, dtype)


# ---- shapes only: the module a source would load, on the meta device, for counting its cost


def skeleton(spec: EncoderSpec) -> torch.nn.Module | None:
    """The spec's module on the meta device (shapes, no weights), from the random-init configuration or from the
    configuration file of its source when that is on this machine (a local folder, or the hub cache); else None."""
    ensure_torchvision()
    with torch.device("meta"):
        if spec.random_init or spec.kind is EncoderKind.RESNET:
            return _BUILDERS[spec.kind](spec)
        if spec.kind is EncoderKind.OPEN_CLIP:
            full = _offline_json(spec, "open_clip_config.json")
            if full is None:
                return None
            model_cfg = full["model_cfg"]
            return _open_clip_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"], model_cfg.get("quick_gelu", False))
        config = _offline_json(spec, "config.json")
        return None if config is None else _transformers_skeleton(spec, config)


def _offline_json(spec: EncoderSpec, name: str) -> dict[str, Any] | None:
    """A configuration file of the source without the network: the local folder's, or the hub cache's copy."""
    source = spec.source.removeprefix(OPEN_CLIP_HUB)
    if Path(source).is_dir():
        path = Path(source) / name
        return json.loads(path.read_text()) if path.is_file() else None
    with widgetless_tqdm():
        from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, name, revision=spec.revision)
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def _transformers_skeleton(spec: EncoderSpec, config: dict[str, Any]) -> torch.nn.Module:
    with widgetless_tqdm():
        from transformers import AutoConfig, AutoModel, SiglipVisionModel

    parsed = AutoConfig.for_model(**config)
    if spec.kind is EncoderKind.SIGLIP:
        vision = getattr(parsed, "vision_config", parsed)
        return SiglipVisionModel(vision)
    return AutoModel.from_config(parsed)
