"""Whether an encoder's source is there offline and agrees with its registry entry, without loading its weights.

A source is a local folder laid out like the model's hub repository, a repository in the Hugging Face cache (at the
pinned revision, or where ``main`` points), or a checkpoint file (DINO's ResNet-50 as its authors distribute it:
a path, or its URL in torch's hub cache). ``check_source`` reads only small files (configs, a sharded checkpoint's
index, a checkpoint's tensor shapes through a memory map), so a preflight can ask about every encoder before any
compute. The loaders run the same comparisons on the configs before they read a single weight.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlparse

import torch

from lesionsignal.core.errors import UserError
from lesionsignal.core.files import sha256_file
from lesionsignal.core.progress import widgetless_tqdm
from lesionsignal.core.torch_compat import ensure_torchvision
from lesionsignal.features.geometry import Geometry, GeometryMismatch
from lesionsignal.features.registry import (
    OPEN_CLIP_HUB,
    TORCHVISION_WEIGHTS,
    EncoderKind,
    EncoderSpec,
    is_hub_id,
    resolve_spec,
)

HF_CONFIG = "config.json"
HF_PROCESSOR = "preprocessor_config.json"
# The weight files from_pretrained reads, in its order of preference; an index names shards that must be there too.
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
HF_MODEL_TYPES: Mapping[EncoderKind, tuple[str, ...]] = MappingProxyType(
    {
        EncoderKind.DINOV2: ("dinov2", "dinov2_with_registers"),
        EncoderKind.DINOV3: ("dinov3_vit",),
        EncoderKind.SIGLIP: ("siglip", "siglip_vision_model"),
    }
)
_URL_PREFIXES = ("https://", "http://")
_LAYER4_NORM = re.compile(r"layer4\.\d+\.bn\d+\.weight")


@dataclass(frozen=True)
class SourceCheck:
    """What check_source found for one encoder.

    location: the folder or file that holds the source offline (a local folder, a hub-cache snapshot, a checkpoint),
    None when absent. missing: what is not there. mismatches: where its configs disagree with the registry, each
    naming the field, the registry's value and the source's.
    """

    encoder: str
    source: str
    revision: str | None
    location: Path | None
    missing: tuple[str, ...] = ()
    mismatches: tuple[str, ...] = ()

    @property
    def problems(self) -> tuple[str, ...]:
        return self.missing + self.mismatches

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: where the source was found, or every problem."""
        pinned = f" at revision {self.revision}" if self.revision else ""
        if self.ok:
            return f"{self.encoder}: {self.source}{pinned} is at {self.location}"
        return f"{self.encoder}: {self.source}{pinned}: {'; '.join(self.problems)}"


def check_source(
    encoder: str | EncoderSpec, source: str | PathLike[str] | None = None, revision: str | None = None
) -> SourceCheck:
    """Whether an encoder's source is present offline and its configs agree with the registry; reads no weights.

    ``encoder`` is a registry id or spec; ``source`` and ``revision`` re-point it as ``encoders[].source`` and
    ``encoders[].revision`` do. Nothing is raised for a bad source: the report says what is wrong.
    """
    try:
        spec = resolve_spec(encoder, source=source, revision=revision)
    except (UserError, ValueError) as err:  # an unknown id, an absent path, a revision on a folder
        name = encoder if isinstance(encoder, str) else encoder.id
        return SourceCheck(name, str(source or ""), revision, None, missing=(str(err),))
    if spec.random_init:
        return SourceCheck(spec.id, spec.source, None, None)
    location, missing = locate(spec)
    check = SourceCheck(spec.id, spec.source, spec.revision, location, tuple(missing))
    if location is None or missing:
        return check
    try:
        mismatches = location_mismatches(spec, location)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:  # unreadable JSON or checkpoint
        mismatches = [f"{location}: its configuration cannot be read: {type(err).__name__}: {err}"]
    return replace(check, mismatches=tuple(mismatches))


def hub_offline() -> bool:
    """Whether the hub is switched off for this process (HF_HUB_OFFLINE): then nothing may be fetched."""
    with widgetless_tqdm():
        from huggingface_hub import constants

    return constants.is_offline_mode()


def is_remote(spec: EncoderSpec) -> bool:
    """Whether the source names something to fetch (hub id, URL, torchvision weights) rather than a local path."""
    return spec.source.startswith((*_URL_PREFIXES, TORCHVISION_WEIGHTS)) or is_hub_id(spec.source)


# ---- where the files are


def locate(spec: EncoderSpec) -> tuple[Path | None, list[str]]:
    """The folder or checkpoint holding ``spec``'s source offline, and what is missing from it."""
    if spec.kind is EncoderKind.RESNET:
        return _locate_checkpoint(spec)
    config_name, weights = (
        (OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS) if spec.kind is EncoderKind.OPEN_CLIP else (HF_CONFIG, HF_WEIGHTS)
    )
    folder = _folder(spec, config_name)
    if isinstance(folder, str):
        return None, [folder]
    return folder, _missing_files(folder, config_name, weights)


def _folder(spec: EncoderSpec, config_name: str) -> Path | str:
    """A local folder, or the hub-cache snapshot holding the config at the wanted revision; else why not."""
    path = Path(spec.source)
    if path.is_dir():
        return path
    if not is_hub_id(spec.source):
        if spec.weights_sha256 is not None:  # the project's own trained model: it comes with the checkout
            return (
                f"{spec.source} is not a folder: restore it from the repository (git checkout -- models/) or "
                "retrain it (make demo-encoder)"
            )
        return f"{spec.source} is not a folder"
    repo = spec.source.removeprefix(OPEN_CLIP_HUB)
    with widgetless_tqdm():
        from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, config_name, revision=spec.revision)
    if not isinstance(cached, str):
        return (
            f"{repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) at revision "
            f"{spec.revision or 'main'}: download it there, or point encoders[].source at a local folder"
        )
    return Path(cached).parent


def _missing_files(folder: Path, config_name: str, weights: tuple[str, ...]) -> list[str]:
    missing = [] if (folder / config_name).is_file() else [f"{folder} has no {config_name}"]
    found = next((folder / name for name in weights if (folder / name).is_file()), None)
    if found is None:
        return [*missing, f"{folder} has no weights (one of {', '.join(weights)})"]
    if found.name.endswith(".index.json"):
        missing += _missing_shards(found)
    return missing


def _missing_shards(index: Path) -> list[str]:
    """A sharded checkpoint (the 7B's layout) is whole only if every shard its index names is there."""
    shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
    absent = [name for name in shards if not (index.parent / name).is_file()]
    if not absent:
        return []
    return [f"{index.parent}: {len(absent)} of {len(shards)} shards named in {index.name} are missing: {absent}"]


def _locate_checkpoint(spec: EncoderSpec) -> tuple[Path | None, list[str]]:
    source = spec.source
    if source.startswith((*_URL_PREFIXES, TORCHVISION_WEIGHTS)):
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(_checkpoint_url(spec)).path).name
        if path.is_file():
            return path, []
        return None, [f"{source} is not in torch's hub cache ({path}); put the file there or give its path as source"]
    found = checkpoint_in(Path(source))
    return (found, []) if isinstance(found, Path) else (None, [found])


def _checkpoint_url(spec: EncoderSpec) -> str:
    if not spec.source.startswith(TORCHVISION_WEIGHTS):
        return spec.source
    ensure_torchvision()
    import torchvision

    weights = torchvision.models.get_model_weights(spec.config_dict.get("arch", "resnet50"))
    return weights[spec.source[len(TORCHVISION_WEIGHTS) :]].url


def checkpoint_in(path: Path) -> Path | str:
    """A checkpoint file, or the single checkpoint in a folder; else why not."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
        if len(found) != 1:
            kinds = ", ".join(CHECKPOINT_SUFFIXES)
            return f"expected one checkpoint ({kinds}) in {path}, found {[p.name for p in found]}"
        return found[0]
    return path if path.is_file() else f"checkpoint {path} not found"


# ---- whether the configs agree with the registry


def location_mismatches(spec: EncoderSpec, location: Path) -> list[str]:
    """Every disagreement between the registry and the configs (or checkpoint shapes) at ``location``."""
    if spec.kind is EncoderKind.RESNET:
        return checkpoint_mismatches(spec, location)
    if spec.kind is EncoderKind.OPEN_CLIP:
        return open_clip_mismatches(spec, read_json(location / OPEN_CLIP_CONFIG), str(location / OPEN_CLIP_CONFIG))
    config = read_json(location / HF_CONFIG)
    processor_path = location / HF_PROCESSOR
    processor = read_json(processor_path) if processor_path.is_file() else None
    return transformers_mismatches(spec, config, processor, str(location)) + weights_mismatches(spec, location)


def weights_mismatches(spec: EncoderSpec, folder: Path) -> list[str]:
    """The weights file against the registry's SHA-256, where the entry pins one (the project's trained model)."""
    if spec.weights_sha256 is None:
        return []
    path = folder / HF_WEIGHTS[0]
    if not path.is_file():
        return [f"{path} is missing: the registry pins the SHA-256 of a {HF_WEIGHTS[0]}"]
    found = sha256_file(path)
    if found == spec.weights_sha256:
        return []
    return [
        f"{path} has SHA-256 {found}, the registry expects {spec.weights_sha256}: these are not the weights the "
        "entry describes; restore the committed file (git checkout -- models/), or, after retraining with "
        "make demo-encoder, put the digest it prints into the registry entry"
    ]


def transformers_mismatches(
    spec: EncoderSpec, config: Mapping[str, Any], processor: Mapping[str, Any] | None, where: str
) -> list[str]:
    """config.json (and preprocessor_config.json, when the source has one) against the registry entry."""
    accepted = HF_MODEL_TYPES[spec.kind]
    model_type = config.get("model_type")
    if model_type not in accepted:
        return [mismatch("model_type", " or ".join(accepted), model_type, f"{where}/{HF_CONFIG}")]
    vision = _vision_config(config)
    cls = 0 if spec.kind is EncoderKind.SIGLIP else 1  # SigLIP has no CLS token
    expected = {
        "patch_size": spec.geometry.patch,
        "hidden_size": spec.dim,
        "num_register_tokens": spec.prefix_tokens - cls,
        "image_size": spec.native_size,
    }
    found = {
        "patch_size": square_side(vision.patch_size),
        "hidden_size": vision.hidden_size,
        "num_register_tokens": getattr(vision, "num_register_tokens", 0) or 0,
        "image_size": square_side(vision.image_size),
    }
    out = _compare(expected, found, f"{where}/{HF_CONFIG}")
    if processor is not None:
        out += processor_mismatches(spec.geometry, processor, f"{where}/{HF_PROCESSOR}")
    return out


def _vision_config(config: Mapping[str, Any]) -> Any:
    """The vision part of a transformers config, defaults filled in (a SiglipModel config nests it)."""
    with widgetless_tqdm():
        from transformers import AutoConfig

    values = {k: v for k, v in config.items() if k != "model_type"}
    parsed = AutoConfig.for_model(config["model_type"], **values)
    vision = getattr(parsed, "vision_config", None)
    return parsed if vision is None else vision


def processor_mismatches(geometry: Geometry, processor: Mapping[str, Any], where: str) -> list[str]:
    """preprocessor_config.json against the registry geometry (the patch comes from config.json, compared there)."""
    try:
        # Patch 1 divides any size, so a size the real patch would not divide is still read and reported.
        found = Geometry.from_processor_config(processor, 1, where)
    except GeometryMismatch as err:
        return [str(err)]
    diffs = geometry.field_differences(found)
    return [mismatch(name, mine, theirs, where) for name, mine, theirs in diffs if name != "patch"]


def open_clip_mismatches(spec: EncoderSpec, full: Mapping[str, Any], where: str) -> list[str]:
    """open_clip_config.json against the registry: the timm trunk's shape (built on the meta device, no weights),
    the declared image size and the eval preprocessing."""
    vision = full.get("model_cfg", {}).get("vision_cfg", {})
    name = vision.get("timm_model_name")
    if not name:
        return [f"{where}: vision_cfg has no timm_model_name; only timm-trunk towers (as in BiomedCLIP) are supported"]
    trunk = _meta_trunk(name)
    expected = {
        "patch_size": spec.geometry.patch,
        "width": spec.dim,
        "prefix_tokens": spec.prefix_tokens,
        "image_size": spec.native_size,
    }
    found = {
        "patch_size": square_side(trunk.patch_embed.patch_size),
        "width": trunk.num_features,
        "prefix_tokens": trunk.num_prefix_tokens,
        "image_size": square_side(vision.get("image_size", 224)),
    }
    return _compare(expected, found, f"{where} ({name})") + preprocess_mismatches(
        spec.geometry, full.get("preprocess_cfg", {}), where
    )


def _meta_trunk(name: str) -> torch.nn.Module:
    ensure_torchvision()
    with widgetless_tqdm():
        import timm

    with torch.device("meta"):  # shapes only: no memory, no initialisation, no download (pretrained=False)
        return timm.create_model(name, pretrained=False, num_classes=0)


def preprocess_mismatches(geometry: Geometry, cfg: Mapping[str, Any], where: str) -> list[str]:
    """open_clip's eval transform is Resize(size, shortest edge) + CenterCrop(size): no crop on a square canvas."""
    size = cfg.get("size", geometry.resize)
    sides = set(size) if isinstance(size, list | tuple) else {size}
    if len(sides) != 1:
        return [f"{where}: preprocess_cfg size {size} is not square"]
    found = replace(
        geometry,
        resize=int(sides.pop()),
        crop=None,
        mean=tuple(cfg.get("mean", geometry.mean)),
        std=tuple(cfg.get("std", geometry.std)),
        interpolation=cfg.get("interpolation", geometry.interpolation),
    )
    diffs = geometry.field_differences(found)
    return [mismatch(name, mine, theirs, f"{where} preprocess_cfg") for name, mine, theirs in diffs]


def checkpoint_mismatches(spec: EncoderSpec, path: Path) -> list[str]:
    """A ResNet checkpoint's layer4 width (from tensor shapes, memory-mapped) against the registry's dim."""
    state = backbone_state(read_state(path, mmap=True))
    norms = [key for key in state if _LAYER4_NORM.fullmatch(key)]
    if not norms:
        return [f"{path}: no layer4 batch-norm weights; not a ResNet backbone checkpoint"]
    return _compare({"layer4 width": spec.dim}, {"layer4 width": int(state[norms[-1]].shape[0])}, str(path))


# ---- small shared readers


def mismatch(name: str, expected: Any, found: Any, where: str) -> str:
    return f"{name}: registry {expected!r} vs {found!r} in {where}"


def _compare(expected: Mapping[str, Any], found: Mapping[str, Any], where: str) -> list[str]:
    return [mismatch(k, v, found[k], where) for k, v in expected.items() if v is not None and found[k] != v]


def square_side(value: Any) -> Any:
    """A size given as n or (n, n) as the int n; any other value is returned as it is (and will not match)."""
    if isinstance(value, list | tuple):
        return int(value[0]) if len(set(value)) == 1 else tuple(value)
    return int(value)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def read_state(path: Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch checkpoint, un-nested and without DataParallel's "module." prefix."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: Any = load_file(str(path))
    else:
        raw = _torch_load(path, mmap)
    for key in ("teacher", "state_dict", "model"):  # DINO training checkpoints nest the weights; take the teacher
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    return {key.removeprefix("module."): value for key, value in raw.items()}


def backbone_state(raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ResNet backbone's tensors: DINO's "backbone." prefix removed, the classifier and projection head left out."""
    state = {key.removeprefix("backbone."): value for key, value in raw.items()}
    return {key: value for key, value in state.items() if not key.startswith(("fc.", "head."))}


def _torch_load(path: Path, mmap: bool) -> Any:
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped: read it whole
            pass
    return torch.load(path, map_location="cpu", weights_only=True)
