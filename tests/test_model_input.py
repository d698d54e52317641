"""Model input made once per view: the block re-resize of a perturbed view and the one-channel normalisation give
the very numbers of the processor's whole-canvas arithmetic, for every geometry of the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionsignal.features.encoder import Encoder
from lesionsignal.features.geometry import Geometry
from lesionsignal.features.model_input import Change, View, block_for, normalise, resize, resize_changed
from lesionsignal.features.registry import DEMO_ENCODERS, STUDY_ENCODERS

GEOMETRIES = sorted(
    {spec.geometry for spec in {**STUDY_ENCODERS, **DEMO_ENCODERS}.values()},
    key=lambda g: (g.resize, g.interpolation, g.resize_in_uint8, g.input_size),
)
EIGHT_BIT = [g for g in GEOMETRIES if g.resize_in_uint8]
CANVAS = 1024


def _name(g: Geometry) -> str:
    return f"{g.resize}-{g.input_size}-{g.interpolation}-{'u8' if g.resize_in_uint8 else 'f32'}"


def _changes(clean: np.ndarray, rng: np.random.Generator) -> list[Change]:
    """Square patches of the panel's sizes (and one larger), two of them at opposite canvas corners."""
    changes = []
    for i in range(len(clean)):
        side = int(rng.choice([1, 4, 8, 16, 32, 64, 200]))
        x, y = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
        if i == 0:
            x, y = 0, 0
        elif i == 1:
            x, y = CANVAS - side, CANVAS - side
        patch = rng.integers(0, 256, (side, side), dtype=np.uint8)
        changes.append(Change((x, y, x + side, y + side), patch))
    return changes


def _applied(clean: np.ndarray, changes: list[Change]) -> np.ndarray:
    out = clean.copy()
    for canvas, change in zip(out, changes, strict=True):
        x1, y1, x2, y2 = change.box
        canvas[y1:y2, x1:x2] = change.patch
    return out


@pytest.fixture(scope="module")
def films() -> np.ndarray:
    """Smooth films with noise: the resize kernels see structure, not flat gray."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    base = 100 + 60 * np.sin(xx / 37) * np.cos(yy / 53)
    return np.stack([(base + rng.normal(0, 9, base.shape)).clip(0, 255).astype(np.uint8) for _ in range(4)])


@pytest.mark.parametrize("geometry", EIGHT_BIT, ids=_name)
def test_block_resize_equals_the_whole_canvas_resize(geometry: Geometry, films: np.ndarray) -> None:
    rng = np.random.default_rng(geometry.resize)
    clean_resized = resize(torch.from_numpy(films), geometry)
    for _ in range(4):
        changes = _changes(films, rng)
        ours = resize_changed(clean_resized, films, changes, geometry)
        whole = resize(torch.from_numpy(_applied(films, changes)), geometry)
        assert torch.equal(ours, whole)


def test_a_block_keeps_its_copied_pixels_away_from_its_edges() -> None:
    geometry = next(g for g in EIGHT_BIT if g.resize == 448)
    block = block_for((500, 500, 564, 564), CANVAS, geometry)
    (sx1, _, sx2, _), (dx1, dy1, dx2, dy2), (kx1, ky1, kx2, ky2) = block.src, block.dst, block.keep
    assert (sx1 * 448) % CANVAS == 0 and sx1 * 448 // CANVAS == dx1  # aligned: the block maps exactly
    assert dx1 < kx1 and kx2 < dx2 and dy1 < ky1 and ky2 < dy2
    assert kx1 <= 500 * 448 // CANVAS and kx2 >= 564 * 448 // CANVAS
    assert sx2 - sx1 < 200  # a small block, not the canvas


def test_an_unchanged_image_keeps_the_clean_resize(films: np.ndarray) -> None:
    geometry = EIGHT_BIT[0]
    same = [Change((10, 10, 20, 20), films[i, 10:20, 10:20].copy()) for i in range(len(films))]
    assert all(change.bounds(films[i]) is None for i, change in enumerate(same))
    clean_resized = resize(torch.from_numpy(films), geometry)
    assert torch.equal(resize_changed(clean_resized, films, same, geometry), clean_resized)


def _processor_arithmetic(resized: torch.Tensor, g: Geometry) -> torch.Tensor:
    """Three channels, scaled and normalised each: the arithmetic of Hugging Face's processors."""
    top = g.crop_offset
    cropped = resized[:, top : top + g.input_size, top : top + g.input_size].unsqueeze(1).expand(-1, 3, -1, -1)
    scaled = cropped.float() / 255 if g.resize_in_uint8 else cropped
    return (scaled - torch.tensor(g.mean).view(1, 3, 1, 1)) / torch.tensor(g.std).view(1, 3, 1, 1)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_name)
def test_normalise_gives_the_processors_numbers(geometry: Geometry, films: np.ndarray) -> None:
    resized = resize(torch.from_numpy(films[:2]), geometry)
    assert torch.equal(normalise(resized, geometry), _processor_arithmetic(resized, geometry))


def test_a_view_gives_what_preprocessing_its_canvases_gives(films: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    changes = _changes(films, rng)
    clean = View(films)
    perturbed = View.perturbed(clean, changes)
    for geometry in GEOMETRIES:
        encoder = Encoder.__new__(Encoder)  # preprocessing needs only the geometry and the device
        encoder.spec = type("Spec", (), {"geometry": geometry})()
        encoder.device = torch.device("cpu")
        expected = encoder.preprocess(_applied(films, changes))
        assert torch.equal(perturbed.pixels(geometry), expected), _name(geometry)
        assert perturbed.pixels(geometry) is perturbed.pixels(geometry)  # computed once
    np.testing.assert_array_equal(perturbed.canvases, _applied(films, changes))
    np.testing.assert_array_equal(clean.canvases, films)  # the clean chunk is never written to


def test_a_view_refuses_changes_for_another_chunk(films: np.ndarray) -> None:
    with pytest.raises(ValueError, match="3 changes for a chunk of 4"):
        View.perturbed(View(films), [Change((0, 0, 1, 1), np.zeros((1, 1), np.uint8))] * 3)


def test_batched_local_means_agree_with_selected_means() -> None:
    """The accelerator route (one batched product, masks as weights) against the CPU route (mean of the selected
    tokens), on a CPU, with images holding different numbers of boxes."""
    from lesionsignal.features.pools import local_means

    rng = np.random.default_rng(5)
    tokens = torch.from_numpy(rng.normal(size=(3, 6, 6, 8)).astype(np.float32))
    masks = []
    for count in (2, 0, 3):
        own = []
        for _ in range(count):
            m = np.zeros((6, 6), bool)
            r, c, h, w = rng.integers(0, 3, size=4)
            m[r : r + h + 1, c : c + w + 1] = True
            own.append(m)
        masks.append(own)
    selected = local_means(tokens, masks, batched=False)
    batched = local_means(tokens, masks, batched=True)
    assert selected.shape == batched.shape == (5, 8)
    torch.testing.assert_close(batched, selected, rtol=1e-6, atol=1e-6)
    expected = tokens[2][torch.from_numpy(masks[2][1])].mean(dim=0)
    assert torch.equal(selected[3], expected)


def test_feeding_threads_run_at_the_lowest_priority() -> None:
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from lesionsignal.core.parallel import background_priority

    if not hasattr(os, "sched_getscheduler"):
        pytest.skip("per-thread scheduling policies are a Linux feature")

    def policy_after() -> tuple[int, int]:
        background_priority()
        tid = threading.get_native_id()
        return os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)

    with ThreadPoolExecutor(max_workers=1) as pool:
        policy, nice = pool.submit(policy_after).result()
    assert policy == os.SCHED_IDLE or nice == 19
    assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE  # the caller keeps its own
