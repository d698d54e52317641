"""Section 07's parameters and the depth stage's choices that need no model: the subset, the study's views, and
the native-resolution placement."""

from __future__ import annotations

from pathlib import Path

import pytest

from lesionsignal.config.params import load_params
from lesionsignal.core.validate import ParamsError
from lesionsignal.data.images import ImageItem
from lesionsignal.pipeline.depth import CHESTXDET10_IMAGES, STUDY_PARAMS, native_placement, study_views, subset
from lesionsignal.pipeline.embeddings import encoder_source

ROOT = Path(__file__).resolve().parents[1]


def _error(tmp_path: Path, depth: str) -> ParamsError:
    path = tmp_path / "p.yaml"
    path.write_text(f"name: x\nrun: demo\ndepth:\n{depth}")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    return info.value


@pytest.mark.parametrize(
    ("depth", "key", "reason"),
    [
        ("  conditions: [S8, S9]\n", "depth.conditions[1]", "S9"),
        ("  native_conditions: [C3]\n", "depth.native_conditions[0]", "C3"),
        ("  panel_images: 3\n", "depth.panel_images", "at least 8"),
        ("  roi_tokens: 0\n", "depth.roi_tokens", "at least 1"),
        ("  attentive_weight_decays: [0.1, -1]\n", "depth.attentive_weight_decays", "positive"),
        ("  knn_k: [0]\n", "depth.knn_k", "positive"),
        ("  mil_pool: mean\n", "depth.mil_pool", "mean"),
    ],
)
def test_depth_parameters_are_checked_before_compute(tmp_path: Path, depth: str, key: str, reason: str) -> None:
    err = _error(tmp_path, depth)
    assert err.key == key and reason in str(err)


def test_subset_is_seeded_keeps_order_and_takes_all_when_asked(tmp_path: Path) -> None:
    items = [ImageItem(f"im{i:02d}.png", tmp_path / f"im{i:02d}.png") for i in range(30)]
    first, again = subset(items, 10, seed=1), subset(items, 10, seed=1)
    assert [i.image_id for i in first] == [i.image_id for i in again]
    assert [i.image_id for i in first] == sorted(i.image_id for i in first) and len(first) == 10
    assert [i.image_id for i in subset(items, 10, seed=2)] != [i.image_id for i in first]
    assert subset(items, None, seed=1) == items and subset(items, 99, seed=1) == items


def test_study_views_count_each_panel_cohorts_subset_and_the_box_cohort() -> None:
    study = load_params(ROOT / STUDY_PARAMS)
    depth = study.depth
    panel = len([c for c in study.cohorts if "panel" in [u.value for u in c.uses]])
    expected = panel * depth.panel_images * (1 + len(depth.conditions)) + CHESTXDET10_IMAGES
    assert study_views(study, CHESTXDET10_IMAGES) == expected


def test_native_placement_draws_on_the_encoders_resize_side() -> None:
    params = load_params(ROOT / "params" / "smoke.yaml")
    source = encoder_source(params.encoders[1], "cpu")  # the random-init twin: no weights read
    where = native_placement(params, source)
    geometry = source.encoder.spec.geometry
    assert where.canvas_size == geometry.resize == 448
    box = where.box("00000001_000.png", 8)
    assert box.x2 - box.x1 == 8 and box.x1 >= 0 and box.x2 <= geometry.resize
    assert where.margin == params.panel.margin and where.base_seed == params.panel.base_seed
