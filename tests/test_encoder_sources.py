"""The six study encoders from folders laid out like their hub repositories, with every socket refused.

Each folder is saved from a randomly initialised model of the real class at the real configuration: the widths,
patch sizes, registers, image sizes and normalisation constants of the published config.json,
preprocessor_config.json and open_clip_config.json files (written below from the registry's sources). To fit a
2-core CPU, depth is cut to one block for the HF transformers, and the DINOv3 7B's MLP from 8192 to 512 wide; its
hidden size (4096, 32 heads), patch, registers and image size are the real ones. BiomedCLIP (timm ViT-B/16) and
the ResNet-50 are whole. MedSigLIP's text tower is a small stand-in: the loader never builds it.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from lesionsignal.core.canvas import to_canvas
from lesionsignal.core.errors import UserError
from lesionsignal.core.torch_compat import ensure_torchvision
from lesionsignal.features.encoder import Encoder, load_encoder
from lesionsignal.features.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    STUDY_ENCODERS,
    EncoderMismatch,
    SourceNotFound,
    UnsupportedPrecision,
    precision_problem,
    resolve_spec,
)
from lesionsignal.features.sources import check_source

ensure_torchvision()
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
STUDY = ("rad-dino", "dinov2-b14", "dinov3-vit7b16", "biomedclip", "medsiglip-448", "dino-resnet50")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESNET_FILE = "dino_resnet50_pretrain.pth"  # the name Facebook distributes it under

# ---- the published configurations (depth shrunk where said)

_BIT = {"image_processor_type": "BitImageProcessor", "do_resize": True, "resample": 3, "do_center_crop": True}
_RESCALE = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True}
# microsoft/rad-dino: Dinov2Model, ViT-B/14 at 518, one CLS, a gray-level mean and std.
RAD_DINO = {"hidden_size": 768, "num_attention_heads": 12, "mlp_ratio": 4, "patch_size": 14, "image_size": 518}
RAD_DINO_PROCESSOR = {
    **_BIT,
    **_RESCALE,
    "size": {"shortest_edge": 518},
    "crop_size": {"height": 518, "width": 518},
    "image_mean": [0.5307] * 3,
    "image_std": [0.2583] * 3,
}
# facebook/dinov2-base: the same ViT-B/14 (positional grid for 518), fed 256 -> centre 224 with ImageNet statistics.
DINOV2_BASE = dict(RAD_DINO)
DINOV2_PROCESSOR = {
    **_BIT,
    **_RESCALE,
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
    "image_mean": list(IMAGENET_MEAN),
    "image_std": list(IMAGENET_STD),
}
# facebook/dinov3-vit7b16-pretrain-lvd1689m: width 4096, 32 heads, 40 layers, SwiGLU MLP 8192 wide, 4 registers,
# no query / value biases (transformers' DINOv3 conversion script). Here: 1 layer, MLP 512 wide.
DINOV3_7B = {
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "intermediate_size": 512,
    "patch_size": 16,
    "image_size": 224,
    "num_register_tokens": 4,
    "use_gated_mlp": True,
    "hidden_act": "silu",
    "query_bias": False,
    "key_bias": False,
    "value_bias": False,
    "layer_norm_eps": 1e-5,
    "rope_theta": 100.0,
}
DINOV3_PROCESSOR = {
    "image_processor_type": "DINOv3ViTImageProcessorFast",
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,
    **_RESCALE,
    "image_mean": list(IMAGENET_MEAN),
    "image_std": list(IMAGENET_STD),
}
# google/medsiglip-448: a whole SiglipModel; its vision tower is SigLIP So400m/14 at 448 (27 layers).
MEDSIGLIP_VISION = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 448,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
TEXT_STAND_IN = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1}
TEXT_STAND_IN |= {"vocab_size": 64, "max_position_embeddings": 64, "pad_token_id": 1, "bos_token_id": 2}
TEXT_STAND_IN |= {"eos_token_id": 3}
MEDSIGLIP_PROCESSOR = {
    "image_processor_type": "SiglipImageProcessor",
    "processor_class": "SiglipProcessor",
    "do_resize": True,
    "size": {"height": 448, "width": 448},
    "resample": 3,
    **_RESCALE,
    "image_mean": [0.5] * 3,
    "image_std": [0.5] * 3,
}
# microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/open_clip_config.json, as published.
BIOMEDCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": "vit_base_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
            "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256,
        },
    },
    "preprocess_cfg": {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)},
}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2))


def _save_dinov2(folder: Path, config: dict[str, Any], processor: dict[str, Any]) -> torch.nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**config, num_hidden_layers=1))
    model.save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", processor)
    return model


def _save_dinov3(folder: Path) -> torch.nn.Module:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    model = DINOv3ViTModel(DINOv3ViTConfig(**DINOV3_7B, num_hidden_layers=1)).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="60MB")  # sharded with an index, as the 7B's repository is
    _write_json(folder / "preprocessor_config.json", DINOV3_PROCESSOR)
    return model


def _save_medsiglip(folder: Path) -> torch.nn.Module:
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(vision_config={**MEDSIGLIP_VISION, "num_hidden_layers": 1}, text_config=TEXT_STAND_IN)
    model = SiglipModel(config)
    model.save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", MEDSIGLIP_PROCESSOR)
    return model.vision_model  # the part the study runs


def _save_biomedclip(folder: Path) -> torch.nn.Module:
    from open_clip.timm_model import TimmModel

    vision = BIOMEDCLIP_CONFIG["model_cfg"]["vision_cfg"]
    tower = TimmModel(vision["timm_model_name"], embed_dim=512, pool="", proj="linear", image_size=224)
    state = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.zeros(8, 4)  # stand-ins for the BERT tower
    state["text.proj.0.weight"] = torch.zeros(4, 4)
    state["logit_scale"] = torch.tensor(4.6)
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    _write_json(folder / "open_clip_config.json", BIOMEDCLIP_CONFIG)
    return tower


def _save_resnet(folder: Path) -> torch.nn.Module:
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    torch.save(model.state_dict(), folder / RESNET_FILE)  # a bare backbone state dict, as DINO publishes it
    return model


_SAVERS: dict[str, Callable[[Path], torch.nn.Module]] = {
    "rad-dino": lambda folder: _save_dinov2(folder, RAD_DINO, RAD_DINO_PROCESSOR),
    "dinov2-b14": lambda folder: _save_dinov2(folder, DINOV2_BASE, DINOV2_PROCESSOR),
    "dinov3-vit7b16": _save_dinov3,
    "biomedclip": _save_biomedclip,
    "medsiglip-448": _save_medsiglip,
    "dino-resnet50": _save_resnet,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Callable[[str], tuple[Path, torch.nn.Module]]:
    """saved(id) -> (folder, original module), each built once, on first use, from a fixed seed."""
    made: dict[str, tuple[Path, torch.nn.Module]] = {}

    def get(encoder_id: str) -> tuple[Path, torch.nn.Module]:
        if encoder_id not in made:
            folder = tmp_path_factory.mktemp(encoder_id)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                module = _SAVERS[encoder_id](folder).eval()
            made[encoder_id] = (folder, module)
        return made[encoder_id]

    return get


def _source(encoder_id: str, folder: Path) -> Path:
    return folder / RESNET_FILE if encoder_id == "dino-resnet50" else folder


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Iterator[list[str]]:
    """Every connection refused (and recorded), the hub offline, and empty hub and torch caches of the test's own."""
    from huggingface_hub import constants

    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("this test refuses every network connection")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex")):
        monkeypatch.setattr(owner, name, refuse)
    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import: the variable alone is too late
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield attempts
    assert not attempts, f"network attempts: {attempts}"


def _forbid_text_tower(monkeypatch) -> None:
    import open_clip
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("the text tower or its tokenizer was built")

    monkeypatch.setattr(open_clip.hf_model.HFTextEncoder, "__init__", forbidden)
    monkeypatch.setattr(open_clip, "get_tokenizer", forbidden)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbidden)


def _canvas(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(1, 1024, 1024), dtype=np.uint8)


def _same_weights(loaded: Encoder, original: torch.nn.Module) -> None:
    """Every tensor of the loaded module is the saved one: none was left randomly initialised or dropped."""
    # SiglipVisionModel wraps the vision transformer the fixture kept as "vision_model".
    got = {k.removeprefix("vision_model."): v for k, v in loaded.module.state_dict().items()}
    want = {k: v.to(loaded.dtype) for k, v in original.state_dict().items()}
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def _encodes(spec, loaded: Encoder) -> None:
    out = loaded.encode(_canvas())
    g = spec.geometry
    assert out.patch_tokens.shape == (1, g.grid, g.grid, spec.dim) and out.global_vec.shape == (1, spec.dim)
    assert torch.isfinite(out.patch_tokens).all() and torch.isfinite(out.global_vec).all()


# ---- loading offline


@pytest.mark.parametrize("encoder_id", STUDY)
def test_study_encoder_loads_offline_from_its_folder(saved, offline, monkeypatch, encoder_id: str) -> None:
    folder, original = saved(encoder_id)
    check = check_source(encoder_id, source=_source(encoder_id, folder))
    assert check.ok, check.summary()
    spec = resolve_spec(encoder_id, source=_source(encoder_id, folder))
    if encoder_id == "biomedclip":
        _forbid_text_tower(monkeypatch)
    dtype = STUDY_ENCODERS[encoder_id].torch_dtype if encoder_id == "dinov3-vit7b16" else torch.float32
    loaded = load_encoder(spec, dtype=dtype)
    assert next(loaded.module.parameters()).dtype == dtype
    _same_weights(loaded, original)
    _encodes(spec, loaded)
    assert offline == []


def _into_hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """The Hugging Face cache layout: a snapshot per commit (files linked in) and refs/main naming the commit."""
    base = cache / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).symlink_to(path)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(COMMIT)


def test_hub_ids_load_offline_from_the_cache_at_the_pinned_revision(saved, offline, monkeypatch) -> None:
    from huggingface_hub import constants

    folder, original = saved("rad-dino")
    _into_hub_cache(Path(constants.HF_HUB_CACHE), "microsoft/rad-dino", folder)
    assert check_source(resolve_spec("rad-dino")).ok  # main -> the cached commit
    pinned = resolve_spec("rad-dino", revision=COMMIT)
    check = check_source(pinned)
    assert check.ok and check.location is not None and check.location.name == COMMIT
    _same_weights(load_encoder(pinned), original)
    elsewhere = resolve_spec("rad-dino", revision="f" * 40)
    assert "not in the Hugging Face cache" in check_source(elsewhere).summary()
    with pytest.raises(SourceNotFound, match=f"at revision {'f' * 40}"):
        load_encoder(elsewhere)
    assert offline == []


def test_open_clip_hub_id_and_checkpoint_url_are_found_in_their_caches(saved, offline) -> None:
    from huggingface_hub import constants

    clip_folder, _ = saved("biomedclip")
    repo = STUDY_ENCODERS["biomedclip"].source.removeprefix("hf-hub:")
    _into_hub_cache(Path(constants.HF_HUB_CACHE), repo, clip_folder)
    assert check_source(STUDY_ENCODERS["biomedclip"]).ok
    resnet_folder, original = saved("dino-resnet50")
    spec = STUDY_ENCODERS["dino-resnet50"]  # its source is the authors' URL
    assert "not in torch's hub cache" in check_source(spec).summary()
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(resnet_folder / RESNET_FILE, checkpoints / RESNET_FILE)
    assert check_source(spec).ok
    _same_weights(load_encoder(spec), original)
    assert offline == []


def test_absent_sources_are_named_without_loading(saved, offline, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    check = check_source(resolve_spec("rad-dino", source=empty))
    assert check.location == empty and not check.mismatches
    assert [m.split(" has ")[1].split(" (")[0] for m in check.missing] == ["no config.json", "no weights"]
    with pytest.raises(SourceNotFound, match=re.escape("has no config.json")) as err:
        load_encoder(resolve_spec("rad-dino", source=empty))
    assert isinstance(err.value, UserError)
    assert "not in the Hugging Face cache" in check_source("medsiglip-448").summary()
    # As a preflight calls it, with a parameter file's id, source and revision: a report, never an exception.
    assert "does not exist" in check_source("rad-dino", source=tmp_path / "nowhere").summary()
    assert "unknown encoder" in check_source("rad_dino").summary()
    assert "needs a hub id" in check_source("rad-dino", source=empty, revision=COMMIT).summary()
    assert check_source("demo-siglip").ok  # random-init: nothing to find
    with pytest.raises(SourceNotFound, match="HF_HUB_OFFLINE"):
        load_encoder("medsiglip-448")
    # The 7B comes in shards: one missing shard is named, not discovered by from_pretrained.
    folder, _ = saved("dinov3-vit7b16")
    partial = tmp_path / "dinov3-partial"
    shutil.copytree(folder, partial)
    shard = sorted(partial.glob("model-*.safetensors"))[-1]
    shard.unlink()
    assert shard.name in check_source(resolve_spec("dinov3-vit7b16", source=partial)).summary()
    with pytest.raises(SourceNotFound, match=re.escape(shard.name)):
        load_encoder(resolve_spec("dinov3-vit7b16", source=partial), dtype=torch.bfloat16)
    assert offline == []


# ---- folders that disagree with the registry: refused before any weight is read, field and both values named


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    _write_json(path, data)


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


MISMATCHES = [  # (field, encoder, file, edit, what the message must say)
    ("patch", "rad-dino", "config.json", _set("patch_size", value=16), "patch_size: registry 14 vs 16"),
    (
        "width",
        "dinov2-b14",
        "config.json",
        lambda d: d.update(hidden_size=1024, num_attention_heads=16),  # ViT-L's width
        "hidden_size: registry 768 vs 1024",
    ),
    (
        "registers",
        "dinov3-vit7b16",
        "config.json",
        _set("num_register_tokens", value=0),
        "num_register_tokens: registry 4 vs 0",
    ),
    (
        "image size",
        "medsiglip-448",
        "config.json",
        _set("vision_config", "image_size", value=384),
        "image_size: registry 448 vs 384",
    ),
    (
        "input size",
        "rad-dino",
        "preprocessor_config.json",
        lambda d: d.update(size={"shortest_edge": 512}, crop_size={"height": 512, "width": 512}),
        "resize: registry 518 vs 512",
    ),
    (
        "mean",
        "rad-dino",
        "preprocessor_config.json",
        _set("image_mean", value=list(IMAGENET_MEAN)),
        "mean: registry (0.5307, 0.5307, 0.5307) vs (0.485, 0.456, 0.406)",
    ),
    (
        "std",
        "biomedclip",
        "open_clip_config.json",
        _set("preprocess_cfg", "std", value=[0.5, 0.5, 0.5]),
        f"std: registry {OPENAI_CLIP_STD!r} vs (0.5, 0.5, 0.5)",
    ),
]


@pytest.mark.parametrize(("field", "encoder_id", "name", "change", "says"), MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_a_folder_that_disagrees_with_the_registry_is_refused(
    saved, offline, tmp_path, field, encoder_id, name, change, says
) -> None:
    original, _ = saved(encoder_id)
    folder = tmp_path / encoder_id
    folder.mkdir()
    for path in original.iterdir():  # configs copied, every weight file unreadable: only a config check can answer
        target = folder / path.name
        target.write_bytes(path.read_bytes() if path.suffix == ".json" else b"not a checkpoint")
    _edit(folder / name, change)
    spec = resolve_spec(encoder_id, source=folder)
    check = check_source(spec)
    assert not check.missing and any(says in m and name in m for m in check.mismatches), check.summary()
    with pytest.raises(EncoderMismatch, match=re.escape(says)) as err:
        load_encoder(spec, dtype=spec.torch_dtype if encoder_id == "dinov3-vit7b16" else torch.float32)
    assert isinstance(err.value, UserError)
    assert offline == []


# ---- precision


def test_dinov3_in_float16_is_refused_with_the_reason(saved) -> None:
    folder, _ = saved("dinov3-vit7b16")
    spec = resolve_spec("dinov3-vit7b16", source=folder)
    with pytest.raises(UnsupportedPrecision, match="does not support float16") as err:
        load_encoder(spec, dtype=torch.float16)
    assert isinstance(err.value, UserError) and "bfloat16" in str(err.value) and "issue 181" in str(err.value)
    assert precision_problem(spec, "bfloat16") is None and precision_problem(spec, torch.float32) is None
    assert precision_problem(STUDY_ENCODERS["rad-dino"], "float16") is None
    assert spec.precision == "bfloat16"
    paper = yaml.safe_load((ROOT / "params" / "paper.yaml").read_text())
    assert {e["id"]: e["dtype"] for e in paper["encoders"]}["dinov3-vit7b16"] == "bfloat16"


# ---- MedSigLIP's published preparation


def _medsiglip_as_published(image: np.ndarray, pad_first: bool = False) -> torch.Tensor:
    """Google-Health/medsiglip's serving steps, written out: scale by the dtype maximum, repeat the gray channel,
    zero-pad to a square (the odd pixel after; ``pad_first`` puts it before, a deliberate error), 448 bicubic on the
    8-bit image as SiglipImageProcessor does with PIL, then mean = std = 0.5."""
    from PIL import Image

    scaled = image.astype(np.float32) / np.iinfo(image.dtype).max
    rgb = np.stack([scaled] * 3, axis=-1)
    rows, cols = scaled.shape
    side = max(rows, cols)
    top, left = ((side - n + pad_first) // 2 for n in (rows, cols))  # pad_first: the odd pixel goes before
    square = np.pad(rgb, ((top, side - rows - top), (left, side - cols - left), (0, 0)))
    pil = Image.fromarray(np.rint(square * 255).astype(np.uint8))
    resized = np.asarray(pil.resize((448, 448), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy((resized - 0.5) / 0.5).permute(2, 0, 1)[None]


@pytest.mark.parametrize("shape", [(1024, 761), (699, 1024)], ids=["tall", "wide"])
def test_medsiglip_prepares_a_non_square_gray_image_as_published(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    ramp = np.add.outer(np.linspace(0, 120, shape[0]), np.linspace(0, 100, shape[1]))
    image = np.clip(ramp + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
    spec = STUDY_ENCODERS["medsiglip-448"]
    # The study's path: the canvas (symmetric zero pad; no resampling at a long side of 1024), then the adapter.
    ours = Encoder(spec, torch.nn.Identity(), torch.device("cpu"), torch.float32).preprocess(to_canvas(image)[None])
    published = _medsiglip_as_published(image)
    diff = (ours - published).abs()
    one_level = 1 / 255 / 0.5  # torchvision's and PIL's bicubic round a few pixels to the neighbouring gray level
    assert diff.max().item() <= one_level + 1e-6 and diff.mean().item() < 2e-3
    misplaced = (ours - _medsiglip_as_published(image, pad_first=True)).abs()
    assert misplaced.mean().item() > 5 * diff.mean().item()  # a one-pixel padding error would be seen
