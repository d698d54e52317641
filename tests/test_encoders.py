"""Encoder adapters on tiny random-init models of the real classes: prefix tokens, global pools, preprocessing."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from lesionsignal.core.torch_compat import ensure_torchvision
from lesionsignal.features.encoder import Encoder, load_encoder
from lesionsignal.features.geometry import Geometry
from lesionsignal.features.registry import (
    DEMO_ENCODERS,
    RANDOM_INIT,
    STUDY_ENCODERS,
    EncoderKind,
    EncoderMismatch,
    EncoderSpec,
    UnknownEncoder,
    resolve_spec,
)

torch.set_num_threads(1)
ensure_torchvision()

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
G_DINOV2 = Geometry(256, 224, 14, *IMAGENET, "bicubic")
G_224_16 = Geometry(224, None, 16, (0.5,) * 3, (0.5,) * 3, "bicubic")
G_DINOV3 = Geometry(224, None, 16, *IMAGENET, "bilinear", resize_in_uint8=False)
VIT = (("hidden_size", 32), ("num_hidden_layers", 1), ("num_attention_heads", 2), ("intermediate_size", 64))


def tiny(kind: EncoderKind, geometry: Geometry, prefix: int, dim: int, config, name: str = "") -> EncoderSpec:
    return EncoderSpec(
        id=name or f"tiny-{kind.value}",
        kind=kind,
        source=RANDOM_INIT,
        revision=None,
        geometry=geometry,
        prefix_tokens=prefix,
        dim=dim,
        global_pool="test",
        label=f"tiny {kind.value} (random-init)",
        random_init=True,
        config=tuple(config),
    )


TINY_DINOV2 = tiny(EncoderKind.DINOV2, G_DINOV2, 1, 32, VIT)
TINY_DINOV2_REG = tiny(EncoderKind.DINOV2, G_DINOV2, 5, 32, (*VIT, ("num_register_tokens", 4)), "tiny-dinov2-reg")
TINY_DINOV3 = tiny(EncoderKind.DINOV3, G_DINOV3, 5, 32, (*VIT, ("num_register_tokens", 4)))
TINY_SIGLIP = tiny(EncoderKind.SIGLIP, G_224_16, 0, 32, VIT)
# BiomedCLIP's tower is a timm ViT inside open_clip's TimmModel with a linear projection; test_vit is timm's
# smallest registered ViT (width 64, patch 16, one CLS token).
OPEN_CLIP_CFG = (("embed_dim", 24), ("timm_model_name", "test_vit"), ("timm_pool", ""), ("timm_proj", "linear"))
TINY_OPEN_CLIP = tiny(EncoderKind.OPEN_CLIP, G_224_16, 1, 64, OPEN_CLIP_CFG)
TINY_RESNET = tiny(EncoderKind.RESNET, Geometry(224, None, 32, *IMAGENET, "bilinear"), 0, 512, [("arch", "resnet18")])
TINY = [TINY_DINOV2, TINY_DINOV2_REG, TINY_DINOV3, TINY_SIGLIP, TINY_OPEN_CLIP, TINY_RESNET]


def canvases(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 1024, 1024), dtype=np.uint8)


@pytest.fixture(scope="module")
def loaded() -> dict[str, Encoder]:
    return {spec.id: load_encoder(spec, seed=0) for spec in TINY}


# ---- registry


def test_study_registry_matches_spec_table() -> None:
    table = {  # id: (source, input, grid, prefix tokens, dim) from protocol section 3
        "rad-dino": ("microsoft/rad-dino", 518, 37, 1, 768),
        "dinov2-b14": ("facebook/dinov2-base", 224, 16, 1, 768),
        "dinov3-vit7b16": ("facebook/dinov3-vit7b16-pretrain-lvd1689m", 224, 14, 5, 4096),
        "biomedclip": ("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", 224, 14, 1, 768),
        "medsiglip-448": ("google/medsiglip-448", 448, 32, 0, 1152),
        "dino-resnet50": (STUDY_ENCODERS["dino-resnet50"].source, 224, 7, 0, 2048),
        "resnet50-finetuned": ("torchvision:IMAGENET1K_V2", 224, 7, 0, 2048),
    }
    got = {
        k: (s.source, s.geometry.input_size, s.geometry.grid, s.prefix_tokens, s.dim) for k, s in STUDY_ENCODERS.items()
    }
    assert got == table
    assert STUDY_ENCODERS["dinov2-b14"].geometry.crop_offset == 16
    assert STUDY_ENCODERS["dinov3-vit7b16"].torch_dtype == torch.bfloat16
    assert not any(s.random_init for s in STUDY_ENCODERS.values())
    # Every demo encoder says what it is: random-init, or trained by this project (weights pinned by SHA-256).
    for spec in DEMO_ENCODERS.values():
        if spec.random_init:
            assert "random-init" in spec.label
        else:
            assert "trained by this project" in spec.label and spec.weights_sha256 is not None


def test_resolve_spec_overrides_and_errors(tmp_path) -> None:
    local = resolve_spec("rad-dino", source=tmp_path)
    assert (
        local.source == str(tmp_path)
        and local.revision is None
        and local.geometry == STUDY_ENCODERS["rad-dino"].geometry
    )
    pinned = resolve_spec("rad-dino", revision="abc123")
    assert (pinned.source, pinned.revision) == ("microsoft/rad-dino", "abc123")
    assert resolve_spec(pinned) is pinned
    with pytest.raises(UnknownEncoder, match="rad-dino"):
        resolve_spec("rad_dino")
    with pytest.raises(ValueError, match="revision"):
        resolve_spec("rad-dino", source=tmp_path, revision="abc123")
    with pytest.raises(ValueError, match="random-init"):
        resolve_spec("demo-siglip", source=tmp_path)
    with pytest.raises(ValueError, match="label"):
        replace(TINY_SIGLIP, label="tiny")


# ---- shapes, prefix tokens and global pools


@pytest.mark.parametrize("spec", TINY, ids=lambda s: s.id)
def test_output_shapes(loaded, spec: EncoderSpec) -> None:
    out = loaded[spec.id].encode(canvases(2))
    g = spec.geometry.grid
    assert out.global_vec.shape == (2, spec.dim) and out.patch_tokens.shape == (2, g, g, spec.dim)
    assert out.global_vec.dtype == torch.float32 and out.patch_tokens.dtype == torch.float32
    assert torch.isfinite(out.patch_tokens).all()


def test_dinov2_registers_are_excluded(loaded) -> None:
    enc = loaded[TINY_DINOV2_REG.id]
    pixels = enc.preprocess(canvases(2))
    hidden = enc.module(pixel_values=pixels).last_hidden_state  # CLS, 4 registers, 256 patches
    assert hidden.shape[1] == 1 + 4 + 16 * 16
    out = enc.forward(pixels)
    torch.testing.assert_close(out.patch_tokens, hidden[:, 5:].reshape(2, 16, 16, 32), rtol=0, atol=0)
    torch.testing.assert_close(out.global_vec, hidden[:, 0], rtol=0, atol=0)
    # Averaging the registers in (the failure this guards against) gives a different patch mean.
    with_registers = hidden[:, 1:].mean(1)
    assert not torch.allclose(out.patch_tokens.mean((1, 2)), with_registers, atol=1e-4)


def test_dinov3_prefix_is_cls_plus_four_registers(loaded) -> None:
    enc = loaded[TINY_DINOV3.id]
    pixels = enc.preprocess(canvases(1))
    out = enc.module(pixel_values=pixels)
    assert out.last_hidden_state.shape[1] == 5 + 14 * 14
    got = enc.forward(pixels)
    torch.testing.assert_close(got.patch_tokens, out.last_hidden_state[:, 5:].reshape(1, 14, 14, 32), rtol=0, atol=0)
    torch.testing.assert_close(got.global_vec, out.pooler_output, rtol=0, atol=0)


def test_registers_declared_wrongly_fail_at_load() -> None:
    with pytest.raises(EncoderMismatch, match="prefix_tokens: registry 1 vs model 5"):
        load_encoder(replace(TINY_DINOV2_REG, prefix_tokens=1))


def test_siglip_global_is_attention_pooling_head(loaded) -> None:
    enc = loaded[TINY_SIGLIP.id]
    pixels = enc.preprocess(canvases(2))
    hidden = enc.module(pixel_values=pixels).last_hidden_state
    out = enc.forward(pixels)
    torch.testing.assert_close(out.global_vec, enc.module.head(hidden), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.patch_tokens, hidden.reshape(2, 14, 14, 32), rtol=0, atol=0)
    assert not torch.allclose(out.global_vec, hidden.mean(1), atol=1e-3)


def test_open_clip_global_is_trunk_cls_before_projection(loaded) -> None:
    enc = loaded[TINY_OPEN_CLIP.id]
    pixels = enc.preprocess(canvases(2))
    out = enc.forward(pixels)
    tokens = enc.module.trunk.forward_features(pixels)
    torch.testing.assert_close(out.global_vec, tokens[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out.global_vec, enc.module.trunk(pixels), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.patch_tokens, tokens[:, 1:].reshape(2, 14, 14, 64), rtol=0, atol=0)
    assert enc.module(pixels).shape == (2, 24)  # the projected (joint-space) vector is a different thing


def test_resnet_global_is_average_pool_of_the_grid(loaded) -> None:
    enc = loaded[TINY_RESNET.id]
    pixels = enc.preprocess(canvases(2))
    out = enc.forward(pixels)
    torch.testing.assert_close(out.global_vec, enc.module(pixels), rtol=0, atol=1e-6)  # fc = Identity
    torch.testing.assert_close(out.global_vec, out.patch_tokens.mean((1, 2)), rtol=1e-5, atol=1e-6)


def _zero_layer(spec: EncoderSpec) -> EncoderSpec:
    cfg = dict(spec.config)
    cfg["num_hidden_layers"] = 0
    return replace(spec, config=tuple(cfg.items()))


def _clear_of_borders(g: Geometry, box, margin: float = 3) -> bool:
    """Whether no mapped box edge lies within ``margin`` model px of the next cell border outside the box."""
    x1, y1, x2, y2 = g.map_box(box)
    for lo, hi in ((x1, x2), (y1, y2)):
        if lo > 0 and lo % g.patch < margin:
            return False
        if hi < g.input_size and (hi % g.patch == 0 or hi % g.patch > g.patch - margin):
            return False
    return True


GRID_CASES = [  # (spec, box, cells): one cell, a straddle of two cells, and a box clipped by the crop / near an edge
    (TINY_DINOV2_REG, (524, 524, 556, 556), [136]),
    (TINY_DINOV2_REG, (468, 300, 552, 328), [71, 72]),
    (TINY_DINOV2_REG, (24, 864, 104, 892), [224]),
    (TINY_DINOV3, (600, 600, 640, 640), [120]),
    (TINY_DINOV3, (400, 100, 520, 150), [19, 20, 21, 33, 34, 35]),
    (TINY_SIGLIP, (24, 864, 104, 892), [154, 155, 168, 169]),
]


@pytest.mark.parametrize(("spec", "box", "cells"), GRID_CASES, ids=[f"{s.id}{b}" for s, b, _ in GRID_CASES])
def test_patch_grid_is_where_the_geometry_says(spec: EncoderSpec, box, cells) -> None:
    # With no transformer layers each output token sees only its own pixel cell, so a change inside a canvas box
    # must move exactly the tokens the geometry names: prefix removal, row-major order, resize scale and crop
    # offset checked end to end. Box edges keep 3 model px from outside cell borders, beyond the reach of the
    # antialiased resize kernel (2 px for bicubic at these scales).
    g = spec.geometry
    assert _clear_of_borders(g, box) and g.token_indices(box).tolist() == cells
    enc = load_encoder(_zero_layer(spec), seed=0)
    base = canvases(1, seed=3)
    changed = base.copy()
    x1, y1, x2, y2 = box
    changed[0, y1:y2, x1:x2] = 255 - changed[0, y1:y2, x1:x2]
    delta = (enc.encode(changed).patch_tokens - enc.encode(base).patch_tokens).abs().amax(-1)[0]
    assert np.flatnonzero((delta > 1e-5).numpy()).tolist() == cells


# ---- preprocessing against the reference processors


def _rgb(canvas: np.ndarray) -> np.ndarray:
    return np.repeat(canvas[..., None], 3, axis=2)


@pytest.mark.parametrize("study_id", ["dinov2-b14", "rad-dino", "medsiglip-448", "dinov3-vit7b16"])
def test_preprocess_matches_hf_processor(study_id: str) -> None:
    from transformers import BitImageProcessor, DINOv3ViTImageProcessor, SiglipImageProcessor

    spec = STUDY_ENCODERS[study_id]
    g = spec.geometry
    common = {"image_mean": list(g.mean), "image_std": list(g.std)}
    processor = {
        "dinov2-b14": BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, **common),
        "rad-dino": BitImageProcessor(size={"shortest_edge": 518}, crop_size={"height": 518, "width": 518}, **common),
        "medsiglip-448": SiglipImageProcessor(size={"height": 448, "width": 448}, resample=3, **common),
        "dinov3-vit7b16": DINOv3ViTImageProcessor(),
    }[study_id]
    canvas = canvases(1, seed=5)
    ours = Encoder(spec, torch.nn.Identity(), torch.device("cpu"), torch.float32).preprocess(canvas)
    theirs = processor(images=[_rgb(canvas[0])], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, g.input_size, g.input_size)
    # The same torchvision resize on the same 8-bit (or [0, 1] float) image: equal up to float rounding.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_preprocess_matches_open_clip_transform() -> None:
    import open_clip
    from PIL import Image

    spec = STUDY_ENCODERS["biomedclip"]
    g = spec.geometry
    transform = open_clip.transform.image_transform(
        224, is_train=False, mean=g.mean, std=g.std, interpolation="bicubic"
    )
    canvas = canvases(1, seed=6)
    ours = Encoder(spec, torch.nn.Identity(), torch.device("cpu"), torch.float32).preprocess(canvas)
    theirs = transform(Image.fromarray(canvas[0]).convert("RGB"))[None]
    # open_clip resizes a PIL image: a few pixels round to the neighbouring gray level (1/255/std ~ 0.015).
    diff = (ours - theirs).abs()
    assert diff.max().item() < 0.02 and diff.mean().item() < 1e-3


def test_crop_offset_matches_hf_center_crop() -> None:
    from transformers import BitImageProcessor
    from transformers.image_utils import SizeDict

    processor = BitImageProcessor()
    ramp = torch.arange(300, dtype=torch.float32).repeat(300, 1)[None]  # value = column index
    for resize in range(224, 232):
        crop = processor.center_crop(ramp[:, :resize, :resize], SizeDict(height=224, width=224))
        assert int(crop[0, 0, 0]) == Geometry(resize, 224, 14, *IMAGENET, "bicubic").crop_offset


def test_bad_canvases_are_rejected(loaded) -> None:
    enc = loaded[TINY_SIGLIP.id]
    for bad in (np.zeros((1, 64, 64), np.float32), np.zeros((1, 64, 32), np.uint8), np.zeros((64, 64), np.uint8)):
        with pytest.raises(ValueError, match="uint8 squares"):
            enc.preprocess(bad)
    with pytest.raises(ValueError, match="pixels must be"):
        enc.forward(torch.zeros(1, 3, 100, 100))


# ---- seeds and precision


def test_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_encoder(TINY_SIGLIP, seed=11)
    assert torch.equal(torch.rand(3), expected_next)
    b = load_encoder(TINY_SIGLIP, seed=11)
    c = load_encoder(TINY_SIGLIP, seed=12)
    x = canvases(1, seed=9)
    out_a, out_b, out_c = a.encode(x), b.encode(x), c.encode(x)
    assert torch.equal(out_a.global_vec, out_b.global_vec) and torch.equal(out_a.patch_tokens, out_b.patch_tokens)
    assert not torch.allclose(out_a.global_vec, out_c.global_vec)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu(loaded, dtype: torch.dtype) -> None:
    # Half precision is meant for GPUs; on CPU it runs (slowly) and must agree with float32 to its precision.
    half = load_encoder(TINY_DINOV2_REG, dtype=dtype, seed=0)
    assert next(half.module.parameters()).dtype == dtype
    x = canvases(1, seed=4)
    ref, got = loaded[TINY_DINOV2_REG.id].encode(x), half.encode(x)
    assert got.patch_tokens.dtype == torch.float32
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    torch.testing.assert_close(got.patch_tokens, ref.patch_tokens, rtol=tol, atol=tol)
    torch.testing.assert_close(got.global_vec, ref.global_vec, rtol=tol, atol=tol)


def test_unsupported_dtype_is_rejected() -> None:
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        load_encoder(TINY_SIGLIP, dtype=torch.float64)


def test_demo_encoders_load_and_encode() -> None:
    x = canvases(1)
    for spec in DEMO_ENCODERS.values():
        out = load_encoder(spec.id, seed=0).encode(x)
        g = spec.geometry.grid
        assert out.patch_tokens.shape == (1, g, g, spec.dim) and out.global_vec.shape == (1, spec.dim)


# ---- real-weight loading from a local folder (no network)


def _as_real(spec: EncoderSpec) -> EncoderSpec:
    return replace(
        spec, source="placeholder/hub-id", random_init=False, label=spec.label.replace("random-init", "saved")
    )


@pytest.mark.parametrize("spec", [TINY_DINOV2, TINY_DINOV2_REG, TINY_SIGLIP], ids=lambda s: s.id)
def test_load_from_local_save_pretrained(tmp_path, loaded, spec: EncoderSpec) -> None:
    original = loaded[spec.id]
    original.module.save_pretrained(tmp_path)
    enc = load_encoder(resolve_spec(_as_real(spec), source=tmp_path))
    assert type(enc.module) is type(original.module)
    x = canvases(1, seed=2)
    torch.testing.assert_close(enc.encode(x).patch_tokens, original.encode(x).patch_tokens, rtol=0, atol=0)


def test_local_processor_config_is_checked(tmp_path, loaded) -> None:
    from transformers import BitImageProcessor

    loaded[TINY_DINOV2.id].module.save_pretrained(tmp_path)
    g = G_DINOV2
    processor = BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=list(g.mean),
        image_std=list(g.std),
    )
    processor.save_pretrained(tmp_path)
    spec = resolve_spec(_as_real(TINY_DINOV2), source=tmp_path)
    assert load_encoder(spec).spec.source == str(tmp_path)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}).save_pretrained(tmp_path)
    with pytest.raises(EncoderMismatch, match="mean: registry"):  # the CLIP default statistics, not the registry's
        load_encoder(spec)


def test_study_spec_rejects_a_folder_with_other_dimensions(tmp_path, loaded) -> None:
    loaded[TINY_DINOV2.id].module.save_pretrained(tmp_path)
    with pytest.raises(EncoderMismatch, match="hidden_size: registry 768 vs 32"):  # refused before any weight
        load_encoder(resolve_spec("dinov2-b14", source=tmp_path))


def test_load_open_clip_vision_tower_from_folder(tmp_path, loaded) -> None:
    from safetensors.torch import save_file

    original = loaded[TINY_OPEN_CLIP.id]
    cfg = dict(TINY_OPEN_CLIP.config)
    embed_dim = cfg.pop("embed_dim")
    model_cfg = {"embed_dim": embed_dim, "vision_cfg": {**cfg, "image_size": 224}, "text_cfg": {"hf_model_name": "x"}}
    g = TINY_OPEN_CLIP.geometry
    preprocess_cfg = {"mean": list(g.mean), "std": list(g.std), "interpolation": "bicubic", "size": 224}
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    )
    state = {f"visual.{k}": v.contiguous() for k, v in original.module.state_dict().items()}
    state["text.unused.weight"] = torch.zeros(2)  # the text tower is never built: its weights are ignored
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    enc = load_encoder(resolve_spec(_as_real(TINY_OPEN_CLIP), source=tmp_path))
    x = canvases(1, seed=2)
    torch.testing.assert_close(enc.encode(x).global_vec, original.encode(x).global_vec, rtol=0, atol=0)
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {**preprocess_cfg, "size": 256}})
    )
    with pytest.raises(EncoderMismatch, match="resize: registry 224 vs 256"):
        load_encoder(resolve_spec(_as_real(TINY_OPEN_CLIP), source=tmp_path))


def test_load_resnet_checkpoint_with_prefixes(tmp_path, loaded) -> None:
    original = loaded[TINY_RESNET.id]
    state = {f"module.backbone.{k}": v for k, v in original.module.state_dict().items()}
    state["module.head.mlp.weight"] = torch.zeros(2)  # a DINO projection head: not part of the backbone
    torch.save({"teacher": state}, tmp_path / "checkpoint.pth")
    spec = resolve_spec(_as_real(TINY_RESNET), source=tmp_path / "checkpoint.pth")
    x = canvases(1, seed=2)
    torch.testing.assert_close(load_encoder(spec).encode(x).global_vec, original.encode(x).global_vec, rtol=0, atol=0)
    del state["module.backbone.layer4.1.bn2.weight"]
    torch.save(state, tmp_path / "checkpoint.pth")
    with pytest.raises(EncoderMismatch, match=re.escape("checkpoint.pth does not fit resnet18")) as err:
        load_encoder(spec)
    assert "layer4.1.bn2.weight" in str(err.value)
