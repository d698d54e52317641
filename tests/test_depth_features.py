"""Every block of one forward pass (features.depth) on tiny random-init models of the real classes."""

from __future__ import annotations

import pytest
import torch
from test_encoders import TINY, canvases

from lesionsignal.features.depth import forward_depth, has_attention
from lesionsignal.features.depth_units import token_grid_bytes
from lesionsignal.features.encoder import load_encoder
from lesionsignal.features.registry import STUDY_ENCODERS

torch.set_num_threads(1)


@pytest.mark.parametrize("spec", TINY, ids=[s.id for s in TINY])
def test_last_block_is_the_final_layer_and_maps_are_distributions(spec) -> None:
    encoder = load_encoder(spec, seed=0)
    pixels = encoder.preprocess(canvases(2))
    global_vec, grid = encoder.tokens(pixels)
    depth = forward_depth(encoder, pixels)
    assert depth.depth >= 1 and len(depth.global_vecs) == depth.depth
    # The final normalisation is applied to every block, so the last block is exactly what the paper pools.
    torch.testing.assert_close(depth.global_vecs[-1], global_vec.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(depth.tokens[-1], grid.float(), atol=1e-5, rtol=1e-4)
    if has_attention(spec):
        g = spec.geometry.grid
        for name in ("attention", "rollout"):
            heat = getattr(depth, name)
            assert heat.shape == (2, g, g) and (heat >= 0).all()
            torch.testing.assert_close(heat.sum(dim=(1, 2)), torch.ones(2))
    else:
        assert depth.attention is None and depth.rollout is None
        # A ResNet is read after each stage, on that stage's own grid.
        assert [t.shape[1] for t in depth.tokens] == [56, 28, 14, 7]


def test_the_inference_path_keeps_its_fused_attention() -> None:
    encoder = load_encoder(TINY[0], seed=0)
    before = encoder.module.config._attn_implementation
    forward_depth(encoder, encoder.preprocess(canvases(1)))
    assert encoder.module.config._attn_implementation == before


def test_token_grid_bytes_follow_the_registry_shapes() -> None:
    rad_dino = STUDY_ENCODERS["rad-dino"]
    per_image = token_grid_bytes(rad_dino, images=1, layers=12)
    grid_only = 37 * 37 * 768 * 2
    assert grid_only < per_image < grid_only * 1.1
    assert token_grid_bytes(rad_dino, images=10, layers=12) == 10 * per_image
