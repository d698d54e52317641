"""Depth units: the subset read at every block agrees with the extraction engine at the last block, keeps a float16
grid and the attention maps, and is computed once (a second run is all cache hits)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_encoders import TINY_DINOV2

from lesionsignal.core.box import Box
from lesionsignal.core.kinds import Pool
from lesionsignal.data.images import ImageItem
from lesionsignal.features.depth_units import (
    ATTENTION,
    ROLLOUT,
    TOKENS,
    DepthSource,
    depth_store,
    layer_key,
    read_depth,
    run_depth,
)
from lesionsignal.features.encoder import load_encoder
from lesionsignal.features.extraction import CLEAN, panel_plan, read_features, run_extraction, unit_store
from lesionsignal.features.pools import EncoderFeatures
from lesionsignal.stimuli.panel import get_condition
from lesionsignal.stimuli.placement import Placement

torch.set_num_threads(1)
CANVAS = 256
PLACEMENT = Placement(canvas_size=CANVAS, margin=0.15, base_seed=42)
CONDITIONS = [get_condition("S8"), get_condition("ground_glass_64")]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[ImageItem]:
    folder = tmp_path_factory.mktemp("depth-images")
    rng = np.random.default_rng(0)
    items = []
    for i in range(5):
        image = rng.integers(30, 220, size=(CANVAS, CANVAS)).astype(np.uint8)
        path = folder / f"img_{i:02d}.png"
        cv2.imwrite(str(path), image)
        items.append(ImageItem(path.name, path))
    return items


def test_depth_units_match_the_extraction_engine_at_the_last_block(tmp_path: Path, images: list[ImageItem]) -> None:
    features = EncoderFeatures(load_encoder(TINY_DINOV2, seed=0), batch_size=2)
    source = DepthSource(features)
    store = depth_store(tmp_path / "depth")
    plan = panel_plan(store, source, "toy", images, CONDITIONS, PLACEMENT, chunk_size=3)
    (report,) = run_depth([(source, plan)], store, progress=False)
    assert report.computed == len(plan.units) and report.units == len(plan.units)
    (again,) = run_depth([(source, plan)], store, progress=False)
    assert again.computed == 0

    units = unit_store(tmp_path / "units")
    pooled_plan = panel_plan(units, features, "toy", images, CONDITIONS, PLACEMENT, chunk_size=3)
    run_extraction([(features, pooled_plan)], units, progress=False, workers=1)
    for name in (CLEAN, "S8"):
        depth = read_depth(source.source_id, plan.of(name), store)
        pooled = read_features(features, pooled_plan.of(name), units)
        ids = [str(i) for i in pooled.image_ids]
        last = depth.layers
        for pool in (Pool.CLS, Pool.PATCH_MEAN):
            np.testing.assert_allclose(
                depth.per_image(layer_key(pool, last), ids), pooled.global_matrix(str(pool), ids), atol=1e-5
            )
        where = [
            (str(pooled.image_ids[o]), Box(*map(int, b))) for o, b in zip(pooled.box_image, pooled.boxes, strict=True)
        ]
        np.testing.assert_allclose(depth.local_at(last, where), pooled.local_matrix(where), atol=1e-5)
        grid = depth.per_image(TOKENS, ids)
        assert grid.dtype == np.float16 and grid.shape[1:] == (16, 16, 32)
        # The kept grid is the final layer: its mean is the patch-mean pool to half precision.
        np.testing.assert_allclose(
            grid.astype(np.float32).mean(axis=(1, 2)), pooled.global_matrix("patch_mean", ids), atol=2e-3
        )
        for heat in (ATTENTION, ROLLOUT):
            np.testing.assert_allclose(depth.per_image(heat, ids).sum(axis=(1, 2)), 1.0, rtol=1e-5)
