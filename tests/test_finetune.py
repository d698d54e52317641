"""The fine-tuned CNN pixel-signal ceiling on tiny synthetic canvases."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lesionsignal.analysis.finetune import (
    Architecture,
    FinetuneConfig,
    Sample,
    View,
    build_views,
    default_cells,
    finetune_store,
    model_name,
    oracle_view,
    resnet50_weights_file,
    run_finetune,
    train_and_score,
)
from lesionsignal.core import digests
from lesionsignal.core.validate import FieldError
from lesionsignal.data.images import ImageItem
from lesionsignal.stimuli.inject import apply
from lesionsignal.stimuli.panel import get_condition, panel
from lesionsignal.stimuli.placement import Placement

SIZE = 256  # canvas side of the synthetic films (the perturbations place themselves on any square canvas)
PLACEMENT = Placement(canvas_size=SIZE, margin=0.15, base_seed=42)
CONFIG = FinetuneConfig(whole_side=64, oracle_side=64, epochs=8, batch_size=16, n_boot=200, seed=7)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def film(seed: int) -> np.ndarray:
    """Smooth anatomy-like gray field with a little noise."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.normal(128, 30, (SIZE, SIZE)).astype(np.float32), (0, 0), 8)
    return np.clip(base + rng.normal(0, 2, (SIZE, SIZE)), 0, 255).astype(np.uint8)


def samples(n: int = 64, n_train: int = 48) -> list[Sample]:
    return [Sample(f"im{i:03d}.png", "train" if i < n_train else "test", film(i)) for i in range(n)]


def test_views_pair_clean_and_perturbed_at_the_same_box() -> None:
    cells = [(get_condition("S8"), View.ORACLE), (get_condition("ground_glass_64"), View.WHOLE)]
    data = samples(n=6, n_train=4)
    views = build_views(data, cells, PLACEMENT, CONFIG)
    oracle = views[("S8", View.ORACLE)]
    assert oracle.x_train.shape == (8, 64, 64) and oracle.x_test.shape == (4, 64, 64)
    assert list(oracle.y_train) == [0, 0, 0, 0, 1, 1, 1, 1]
    perturbed = apply(data[0].canvas, "S8", data[0].image_id, margin=0.15, base_seed=42)
    assert np.array_equal(oracle.x_train[0], oracle_view(data[0].canvas, perturbed.box, 64))  # clean twin
    assert np.array_equal(oracle.x_train[4], oracle_view(perturbed.image, perturbed.box, 64))
    assert not np.array_equal(oracle.x_train[0], oracle.x_train[4])
    assert views[("ground_glass_64", View.WHOLE)].x_test.shape == (4, 64, 64)


def test_oracle_view_learns_a_planted_pattern_and_is_deterministic() -> None:
    views = build_views(samples(), [(get_condition("S8"), View.ORACLE)], PLACEMENT, CONFIG)
    first = train_and_score(views[("S8", View.ORACLE)], View.ORACLE, CONFIG)
    assert first.auc >= 0.95 and first.ci_low > 0.8
    assert first.n_train == 96 and first.n_test == 32
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    again = train_and_score(views[("S8", View.ORACLE)], View.ORACLE, CONFIG)
    assert np.array_equal(first.test_scores, again.test_scores)
    assert torch.equal(torch.rand(3), expected)  # the global generator is left as it was found


def test_whole_view_learns_a_broad_planted_pattern() -> None:
    views = build_views(samples(), [(get_condition("ground_glass_64"), View.WHOLE)], PLACEMENT, CONFIG)
    result = train_and_score(views[("ground_glass_64", View.WHOLE)], View.WHOLE, CONFIG)
    assert result.auc >= 0.9


def test_chance_when_nothing_is_planted() -> None:
    """Clean vs clean: the ceiling must not find signal that is not there."""
    views = build_views(samples(), [(get_condition("S8"), View.ORACLE)], PLACEMENT, CONFIG)
    data = views[("S8", View.ORACLE)]
    half = len(data.y_train) // 2
    same = type(data)(
        np.concatenate([data.x_train[:half], data.x_train[:half]]),
        data.y_train,
        np.concatenate([data.x_test[: len(data.y_test) // 2]] * 2),
        data.y_test,
    )
    result = train_and_score(same, View.ORACLE, CONFIG)
    assert result.auc == pytest.approx(0.5)


def test_config_and_names() -> None:
    with pytest.raises(FieldError, match="multiple of 64"):
        FinetuneConfig(whole_side=100)
    with pytest.raises(FieldError, match="epochs"):
        FinetuneConfig(epochs=0)
    assert model_name(Architecture.RESNET50, View.WHOLE) == "resnet50-finetuned"
    assert model_name(Architecture.RESNET50, View.ORACLE) == "resnet50-oracle"
    cells = default_cells(panel())
    assert [c.name for c, v in cells if v is View.WHOLE] == ["C1", "C2", "L4", "L8", "S4", "S8"]
    assert [c.name for c, v in cells if v is View.ORACLE] == [
        "C1",
        "C2",
        "L4",
        "L8",
        "S4",
        "S8",
        "iso_blur_4",
        "iso_blur_8",
    ]


def _films(folder: Path) -> tuple[list[ImageItem], dict[str, str]]:
    items, splits = [], {}
    for i in range(16):
        path = folder / f"im{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), film(100 + i))
        items.append(ImageItem(path.name, path))
        splits[path.name] = "train" if i < 12 else "test"
    return items, splits


TINY = FinetuneConfig(whole_side=64, oracle_side=64, epochs=1, batch_size=8, n_boot=50)


def test_run_finetune_caches_by_content(tmp_path: Path) -> None:
    items, splits = _films(tmp_path / "films")
    config = TINY
    cells = [(get_condition("S8"), View.ORACLE), (get_condition("C2"), View.WHOLE)]
    cache = finetune_store(tmp_path / "cache")
    first = run_finetune(items, splits, "toy", cells, PLACEMENT, config, cache, workers=1)
    assert (first.trained, first.reused) == (2, 0)
    assert list(first.results["model"]) == ["small-cnn-oracle", "small-cnn-finetuned"]
    assert list(first.results["pool"]) == ["finetuned_oracle", "finetuned"]
    assert set(first.results["dataset"]) == {"toy"} and (first.results["n_test"] == 8).all()
    again = run_finetune(items, splits, "toy", cells, PLACEMENT, config, cache, workers=1)
    assert (again.trained, again.reused) == (0, 2)
    assert first.results.equals(again.results)
    splits["im000.png"] = "test"  # another split is another experiment: trained again
    moved = run_finetune(items, splits, "toy", cells[:1], PLACEMENT, config, cache, workers=1)
    assert moved.trained == 1


def test_resnet50_path_runs_and_says_where_its_weights_came_from(tmp_path: Path) -> None:
    """The study's architecture on a few tiny views: three-channel input, one logit, weights provenance."""
    views = build_views(samples(n=8, n_train=6), [(get_condition("S8"), View.ORACLE)], PLACEMENT, CONFIG)
    config = FinetuneConfig(
        architecture=Architecture.RESNET50,
        oracle_side=64,
        input_side=64,
        highpass_sigma=None,
        epochs=1,
        batch_size=4,
        n_boot=20,
        weights=None,
    )
    missing = tmp_path / "no-such-checkpoint.pth"
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint"):
        train_and_score(views[("S8", View.ORACLE)], View.ORACLE, replace(config, weights=missing))
    if resnet50_weights_file().is_file():
        pytest.skip("a local ImageNet checkpoint exists: the random-init fallback is not reachable here")
    with pytest.warns(UserWarning, match="no local IMAGENET1K_V2 checkpoint"):
        result = train_and_score(views[("S8", View.ORACLE)], View.ORACLE, config)
    assert result.weights.startswith("random init") and result.test_scores.shape == (4,)


def test_editing_any_module_the_cells_import_retrains_them_and_no_other(tmp_path: Path, monkeypatch) -> None:
    """The cache key holds the source of every module the fine-tuned CNN imports, derived from its imports: the
    statistics that give its AUC and CI among them. A module outside that closure changes nothing."""
    package = tmp_path / "lesionsignal"
    shutil.copytree(digests.PACKAGE_ROOT, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(digests, "PACKAGE_ROOT", package)
    items, splits = _films(tmp_path / "films")
    cells = [(get_condition("S8"), View.ORACLE)]

    def trained() -> int:
        store = finetune_store(tmp_path / "cache")
        return run_finetune(items, splits, "toy", cells, PLACEMENT, TINY, store, workers=1).trained

    assert trained() == 1 and trained() == 0
    for unrelated in ("paper/figures.py", "features/encoder.py", "pipeline/lesions.py"):
        with (package / unrelated).open("a") as handle:
            handle.write("\n# an edit outside the closure\n")
        assert trained() == 0, unrelated
    for imported in ("analysis/stats.py", "analysis/probe.py", "stimuli/inject.py", "core/canvas.py"):
        with (package / imported).open("a") as handle:
            handle.write("\n# an edit inside the closure\n")
        assert trained() == 1, imported
