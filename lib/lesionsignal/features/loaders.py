"""Building encoder modules: random-init models of the real classes, and real weights from a hub id or a folder.

A local directory never touches the network, and with HF_HUB_OFFLINE set a hub source loads from its cache. Before a
weight is read, the source's configs are compared with its registry entry (``lesionsignal.features.sources``); after
loading, the module's structure (patch, width, prefix tokens, native size) is checked again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from lesionsignal.core.progress import widgetless_tqdm
from lesionsignal.core.torch_compat import ensure_torchvision
from lesionsignal.features.registry import (
    OPEN_CLIP_HUB,
    TORCHVISION_WEIGHTS,
    EncoderKind,
    EncoderMismatch,
    EncoderSpec,
    SourceNotFound,
    UnsupportedPrecision,
    precision_problem,
)
from lesionsignal.features.sources import (
    HF_CONFIG,
    HF_PROCESSOR,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    backbone_state,
    checkpoint_in,
    checkpoint_mismatches,
    hub_offline,
    is_remote,
    locate,
    open_clip_mismatches,
    read_json,
    read_state,
    square_side,
    transformers_mismatches,
    weights_mismatches,
)

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
# Every loader compares the source's configs with the registry (lesionsignal.features.sources) before it reads a
# weight, so a folder that disagrees is refused naming the field, not after minutes of loading or, worse, silently.


def _load_transformers(spec: EncoderSpec, dtype: torch.dtype) -> torch.nn.Module:
    with widgetless_tqdm():
        from transformers import Dinov2Model, Dinov2WithRegistersModel, DINOv3ViTModel, SiglipVisionModel

    classes = {
        "dinov2": Dinov2Model,
        "dinov2_with_registers": Dinov2WithRegistersModel,
        "dinov3_vit": DINOv3ViTModel,
        "siglip": SiglipVisionModel,  # a whole SiglipModel checkpoint: only its vision tower is built and loaded
        "siglip_vision_model": SiglipVisionModel,
    }
    config = _read_source_json(spec, HF_CONFIG)
    if config is None:
        raise SourceNotFound(f"{spec.id}: {spec.source} has no {HF_CONFIG}")
    processor = _read_source_json(spec, HF_PROCESSOR)
    mismatches = transformers_mismatches(spec, config, processor, _where(spec))
    if Path(spec.source).is_dir():
        mismatches += weights_mismatches(spec, Path(spec.source))
    elif spec.weights_sha256 is not None:
        mismatches.append(f"the registry pins weights by SHA-256, which needs a local folder, not {spec.source}")
    _refuse(spec, mismatches)
    with _quiet_load_report():
        model, info = classes[config["model_type"]].from_pretrained(
            spec.source, revision=spec.revision, dtype=dtype, output_loading_info=True
        )
    if info["missing_keys"]:  # transformers would leave them randomly initialised
        missing = sorted(info["missing_keys"])
        raise EncoderMismatch(f"{spec.id}: {_where(spec)} lacks {len(missing)} weights of the model: {missing[:5]}")
    return model


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Silence transformers' load report and its bars: MedSigLIP's checkpoint lists its whole text tower as
    unexpected, and the loader itself refuses missing weights (above) while a shape mismatch raises. With the load
    report quiet, transformers checks a tensor-parallel plan no run uses and warns from another logger; the
    "Loading weights" bar would land in every executed notebook."""
    with widgetless_tqdm():
        from transformers.utils import logging as hf_logging

    loggers = [
        hf_logging.get_logger(n) for n in ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")
    ]
    levels = [logger.level for logger in loggers]
    bars = hf_logging.is_progress_bar_enabled()
    for logger in loggers:
        logger.setLevel(hf_logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def _read_source_json(spec: EncoderSpec, name: str) -> dict[str, Any] | None:
    if Path(spec.source).is_dir():
        path = Path(spec.source) / name
        return read_json(path) if path.is_file() else None
    with widgetless_tqdm():
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return read_json(Path(hf_hub_download(spec.source, name, revision=spec.revision)))
    except RemoteEntryNotFoundError:  # the repository has no such file (offline misses still raise)
        return None


def _where(spec: EncoderSpec) -> str:
    return f"{spec.source}@{spec.revision}" if spec.revision else spec.source


def _refuse(spec: EncoderSpec, mismatches: list[str]) -> None:
    if mismatches:
        raise EncoderMismatch(f"{spec.id}: {_where(spec)} disagrees with the registry: {'; '.join(mismatches)}")


def _load_open_clip(spec: EncoderSpec, dtype: torch.dtype) -> torch.nn.Module:
    """The vision tower only: the text tower (an HF BERT for BiomedCLIP) and its tokenizer are never built or
    fetched, so a local folder loads with the network off (open_clip's own loader reaches for the hub)."""
    folder = Path(spec.source)
    if spec.source.startswith(OPEN_CLIP_HUB):
        with widgetless_tqdm():
            from huggingface_hub import snapshot_download

        repo = spec.source[len(OPEN_CLIP_HUB) :]
        patterns = [OPEN_CLIP_CONFIG, *OPEN_CLIP_WEIGHTS]
        folder = Path(snapshot_download(repo, revision=spec.revision, allow_patterns=patterns))
    found, missing = locate(replace(spec, source=str(folder)))
    if found is None or missing:
        raise SourceNotFound(f"{spec.id}: {'; '.join(missing)}")
    full = read_json(folder / OPEN_CLIP_CONFIG)
    _refuse(spec, open_clip_mismatches(spec, full, str(folder / OPEN_CLIP_CONFIG)))
    model_cfg = full["model_cfg"]
    with torch.device("meta"):  # no initialisation (seconds for a ViT-B): every tensor comes from the checkpoint
        tower = _open_clip_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"], model_cfg.get("quick_gelu", False))
    checkpoint = next(folder / name for name in OPEN_CLIP_WEIGHTS if (folder / name).is_file())
    state = {k.removeprefix("visual."): v for k, v in read_state(checkpoint).items() if k.startswith("visual.")}
    try:
        tower.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise EncoderMismatch(f"{spec.id}: {checkpoint} does not fit its {OPEN_CLIP_CONFIG}: {err}") from None
    unfilled = [name for name, t in [*tower.named_parameters(), *tower.named_buffers()] if t.is_meta]
    if unfilled:  # a non-persistent buffer the checkpoint cannot carry
        raise EncoderMismatch(f"{spec.id}: the open_clip tower has tensors no checkpoint fills: {unfilled[:5]}")
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
        path = checkpoint_in(Path(source))
        if isinstance(path, str):
            raise SourceNotFound(f"{spec.id}: {path}")
        _refuse(spec, checkpoint_mismatches(spec, path))
        raw = read_state(path)
    return backbone_state(raw)


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
    """Patch size, width, prefix-token count and (where the registry says it) native image size of the built
    module must be what the registry entry says; the configs were compared before loading, this checks the result."""
    found: dict[str, Any] = {}
    if spec.kind in (EncoderKind.DINOV2, EncoderKind.DINOV3, EncoderKind.SIGLIP):
        cfg = module.config
        found["patch"] = square_side(cfg.patch_size)
        found["dim"] = cfg.hidden_size
        cls = 0 if spec.kind is EncoderKind.SIGLIP else 1
        found["prefix_tokens"] = cls + (getattr(cfg, "num_register_tokens", 0) or 0)
        found["native_size"] = square_side(cfg.image_size)
    elif spec.kind is EncoderKind.OPEN_CLIP:
        found["patch"] = square_side(module.trunk.patch_embed.patch_size)
        found["dim"] = module.trunk.num_features
        found["prefix_tokens"] = module.trunk.num_prefix_tokens
        found["native_size"] = square_side(module.image_size)
    else:
        found["dim"] = module.inplanes  # torchvision leaves it at layer4's output width
    expected = {
        "patch": spec.geometry.patch,
        "dim": spec.dim,
        "prefix_tokens": spec.prefix_tokens,
        "native_size": spec.native_size,
    }
    diffs = [
        f"{k}: registry {expected[k]} vs model {v}"
        for k, v in found.items()
        if expected[k] is not None and v != expected[k]
    ]
    if diffs:
        raise EncoderMismatch(f"{spec.id} ({spec.source}): {'; '.join(diffs)}")


def build_module(
    spec: EncoderSpec, dtype: torch.dtype, seed: int, build_device: torch.device | None = None
) -> torch.nn.Module:
    """The spec's module: built from ``seed`` (random-init specs) or loaded from its source, not yet moved.

    ``build_device`` builds a random-init module directly on that device (a 7B model initialised on the CPU takes
    minutes); its weights then differ from a CPU build with the same seed, so this is for benchmarks only.
    """
    ensure_torchvision()  # transformers' and timm's vision code import torchvision
    refused = precision_problem(spec, dtype)
    if refused:
        raise UnsupportedPrecision(refused)
    if spec.random_init:
        device = build_device or torch.device("cpu")
        accelerators = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=accelerators), device:  # the caller's generators are left as they were
            torch.manual_seed(seed)
            return _BUILDERS[spec.kind](spec)
    return _LOADERS[spec.kind](_available(spec), dtype)


def _available(spec: EncoderSpec) -> EncoderSpec:
    """What to load from: the spec itself when it may be fetched; when the hub is offline (HF_HUB_OFFLINE), its
    cached copy as a local source, so no library call reaches for the network. A local source must be whole.
    Either way an absent source stops here with what is missing, not with a library's traceback."""
    remote = is_remote(spec)
    if remote and not hub_offline():
        return spec  # fetched, or found in the cache, by the loader
    found, missing = locate(spec)
    if found is None or missing:
        offline = " (the hub is offline: HF_HUB_OFFLINE is set)" if remote else ""
        raise SourceNotFound(f"{spec.id}: {'; '.join(missing)}{offline}")
    return replace(spec, source=str(found), revision=None) if remote else spec


# ---- shapes only: the module a source would load, on the meta device, for counting its cost


def skeleton(spec: EncoderSpec) -> torch.nn.Module | None:
    """The spec's module on the meta device (shapes, no weights), from the random-init configuration or from the
    configuration file of its source when that is on this machine (a local folder, or the hub cache); else None."""
    ensure_torchvision()
    if spec.random_init or spec.kind is EncoderKind.RESNET:
        with torch.device("meta"):
            return _BUILDERS[spec.kind](spec)
    folder, _ = locate(spec)  # the configuration is enough: missing weights do not change the cost
    config_name = OPEN_CLIP_CONFIG if spec.kind is EncoderKind.OPEN_CLIP else HF_CONFIG
    if folder is None or not (folder / config_name).is_file():
        return None
    config = read_json(folder / config_name)
    with torch.device("meta"):
        if spec.kind is EncoderKind.OPEN_CLIP:
            model_cfg = config["model_cfg"]
            return _open_clip_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"], model_cfg.get("quick_gelu", False))
        return _transformers_skeleton(spec, config)


def _transformers_skeleton(spec: EncoderSpec, config: dict[str, Any]) -> torch.nn.Module:
    with widgetless_tqdm():
        from transformers import AutoConfig, AutoModel, SiglipVisionModel

    parsed = AutoConfig.for_model(**config)
    if spec.kind is EncoderKind.SIGLIP:
        return SiglipVisionModel(getattr(parsed, "vision_config", parsed))
    return AutoModel.from_config(parsed)
