"""The perturbation panel: catalogue, seeded placement, every family's defining property, determinism."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from fresh_interpreter import fresh_digests

from lesionsignal.core.box import Box
from lesionsignal.stimuli import inject as ij
from lesionsignal.stimuli import panel as pn
from lesionsignal.stimuli import placement as pl
from lesionsignal.stimuli.convention import SPEC
from lesionsignal.stimuli.panel import Family, Shape

ROOT = Path(__file__).resolve().parents[1]
NAMES = pn.condition_names()
GEOMETRIC = [n for n in NAMES if pn.get_condition(n).family is Family.GEOMETRIC]
BLURS = [n for n in NAMES if pn.get_condition(n).family in (Family.ISO_BLUR, Family.DIRECTIONAL_BLUR)]
BASENAMES = [f"{i:08d}_{i % 7:03d}.png" for i in range(300)]
IMAGE = "00000091_005.png"

CANONICAL = (
    "C1",
    "C2",
    "L4",
    "L8",
    "S4",
    "S8",
    "iso_blur_4",
    "iso_blur_8",
    "dir_cranio_L11_P16",
    "dir_cranio_L11_P32",
    "dir_cranio_L11_P64",
    "dir_cranio_L21_P16",
    "dir_cranio_L21_P32",
    "dir_cranio_L21_P64",
    "dir_cranio_L31_P16",
    "dir_cranio_L31_P32",
    "dir_cranio_L31_P64",
    "dir_lateral_L11_P16",
    "dir_lateral_L11_P32",
    "dir_lateral_L11_P64",
    "dir_lateral_L21_P16",
    "dir_lateral_L21_P32",
    "dir_lateral_L21_P64",
    "dir_lateral_L31_P16",
    "dir_lateral_L31_P32",
    "dir_lateral_L31_P64",
    "reticular_fine_32",
    "reticular_coarse_64",
    "ground_glass_64",
)

C1_FOOTPRINT = np.array(
    [
        [0, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
    ],
    dtype=bool,
)
C2_FOOTPRINT = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=bool,
)


def synthetic_canvas(size: int = 256, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise: every patch differs, so a wrong location or a no-op shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    smooth = 40 + 160 * (0.6 * yy + 0.4 * xx) / size
    return np.clip(np.rint(smooth + rng.normal(0, 8, (size, size))), 0, 255).astype(np.uint8)


def hand_placement(
    basename: str, patch: int, size: int, margin: float = 0.15, base_seed: int = 42
) -> tuple[int, int, np.random.Generator]:
    """The protocol's seeding written out independently of the module: (y, x, generator after the two draws)."""
    seed = int(hashlib.sha256(f"{base_seed}_{basename}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    lo = int(margin * size)
    hi = size - lo
    y = int(rng.integers(lo, hi - patch + 1))
    x = int(rng.integers(lo, hi - patch + 1))
    return y, x, rng


def sha(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def canvas() -> np.ndarray:
    return synthetic_canvas()


# ---------------------------------------------------------------- catalogue


def test_condition_names_are_the_29_in_canonical_order() -> None:
    assert tuple(CANONICAL) == NAMES
    assert len(NAMES) == 29
    assert [c.name for c in pn.panel()] == list(CANONICAL)


def test_panel_selects_in_given_order_and_rejects_unknown_names() -> None:
    assert [c.name for c in pn.panel(["S8", "C1"])] == ["S8", "C1"]
    with pytest.raises(ValueError, match=r"unknown condition 'C3'.*ground_glass_64"):
        pn.panel(["C1", "C3"])
    with pytest.raises(ValueError, match="known: C1, C2"):
        pn.get_condition("blur")
    with pytest.raises(ValueError, match="sequence of names"):
        pn.panel("C1")


def test_condition_parameters_match_the_spec() -> None:
    c1, c2 = pn.get_condition("C1"), pn.get_condition("C2")
    assert (c1.shape, c1.radius, c1.patch) == (Shape.CIRCLE, 1, 4)
    assert (c2.shape, c2.radius, c2.patch) == (Shape.CIRCLE, 2, 8)
    assert [pn.get_condition(n).shape for n in ("L4", "L8", "S4", "S8")] == [
        Shape.DIAGONAL,
        Shape.DIAGONAL,
        Shape.SQUARE,
        Shape.SQUARE,
    ]
    iso = pn.get_condition("iso_blur_8")
    assert (iso.kernel, iso.sigma, iso.patch) == (21, 0.0, 8)
    cranio = pn.get_condition("dir_cranio_L21_P64")
    lateral = pn.get_condition("dir_lateral_L31_P16")
    assert (cranio.angle_deg, cranio.length, cranio.patch) == (90.0, 21, 64)
    assert (lateral.angle_deg, lateral.length, lateral.patch) == (0.0, 31, 16)
    fine, coarse = pn.get_condition("reticular_fine_32"), pn.get_condition("reticular_coarse_64")
    assert (fine.period, fine.patch, fine.amplitude) == (3, 32, 0.08)
    assert (coarse.period, coarse.patch, coarse.amplitude) == (6, 64, 0.08)
    gg = pn.get_condition("ground_glass_64")
    assert (gg.sigma, gg.patch, gg.amplitude) == (12.0, 64, 0.06)


def test_condition_rejects_missing_or_foreign_parameters() -> None:
    with pytest.raises(ValueError, match="needs period"):
        pn.Condition("r", Family.RETICULAR, 32, amplitude=0.08)
    with pytest.raises(ValueError, match="length does not apply to reticular"):
        pn.Condition("r", Family.RETICULAR, 32, period=3, amplitude=0.08, length=11)
    with pytest.raises(ValueError, match="odd"):
        pn.Condition("d", Family.DIRECTIONAL_BLUR, 16, angle_deg=0.0, length=10)
    with pytest.raises(ValueError, match="circle needs radius"):
        pn.Condition("c", Family.GEOMETRIC, 4, shape=Shape.CIRCLE)


@pytest.mark.parametrize(
    ("patch", "percent"), [(4, "0.0015"), (8, "0.0061"), (16, "0.024"), (32, "0.098"), (64, "0.39")]
)
def test_area_ratio_matches_the_paper(patch: int, percent: str) -> None:
    conditions = [c for c in pn.panel() if c.patch == patch]
    assert conditions
    for c in conditions:
        assert c.area_ratio() == patch**2 / 1024**2
        assert f"{100 * c.area_ratio():.2g}" == percent
    table = pn.conditions_table(conditions)
    assert table["area ratio (%)"].tolist() == [float(percent)] * len(conditions)


def test_conditions_table_has_one_described_row_per_condition() -> None:
    table = pn.conditions_table(pn.panel())
    assert list(table.columns) == ["name", "family", "patch px", "area ratio (%)", "parameters"]
    assert table["name"].tolist() == list(CANONICAL)
    assert table["parameters"].tolist() == [c.describe() for c in pn.panel()]
    assert "21x21" in pn.get_condition("iso_blur_4").describe()
    assert "sigma 3.5" in pn.get_condition("iso_blur_4").describe()
    assert "L=21" in pn.get_condition("dir_cranio_L21_P64").describe()
    assert "cranio" in pn.get_condition("dir_cranio_L21_P64").describe()
    assert "lateral" in pn.get_condition("dir_lateral_L11_P16").describe()
    assert "period 6" in pn.get_condition("reticular_coarse_64").describe()
    # Conditions that differ in a parameter other than the patch side must read differently.
    assert len({c.describe() for c in pn.panel() if c.family is Family.DIRECTIONAL_BLUR}) == 6


# ---------------------------------------------------------------- placement and seeding


@pytest.mark.parametrize("base_seed", [42, 0, 7])
def test_placement_seed_formula(base_seed: int) -> None:
    for name in [*BASENAMES[:20], IMAGE]:
        digest = hashlib.sha256(f"{base_seed}_{name}".encode()).hexdigest()
        assert pl.placement_seed(name, base_seed) == int(digest[:8], 16)


@pytest.mark.parametrize("size", [256, 1024])
@pytest.mark.parametrize("margin", [0.15, 0.20])
@pytest.mark.parametrize("patch", [4, 8, 16, 32, 64])
def test_patch_box_is_the_hand_computed_origin(size: int, margin: float, patch: int) -> None:
    for name in BASENAMES[:40]:
        y, x, _ = hand_placement(name, patch, size, margin)
        assert pl.patch_box(name, patch, size, margin) == Box(x, y, x + patch, y + patch)
    y, x, _ = hand_placement(IMAGE, patch, size, margin, base_seed=3)
    box = pl.patch_box(IMAGE, patch, size, margin, base_seed=3)
    assert box.as_tuple() == (x, y, x + patch, y + patch)


@pytest.mark.parametrize("size", [256, 1024])
@pytest.mark.parametrize("patch", [4, 8, 16, 32, 64])
def test_box_lies_inside_the_central_region(size: int, patch: int) -> None:
    lo = int(0.15 * size)
    hi = size - lo
    boxes = [pl.patch_box(name, patch, size) for name in BASENAMES]
    for box in boxes:
        assert (box.width, box.height, box.area) == (patch, patch, patch * patch)
        assert lo <= box.x1 and box.x2 <= hi and lo <= box.y1 and box.y2 <= hi
    # The draw really spreads over the region rather than sitting in one spot.
    assert len({b.as_tuple() for b in boxes}) > len(boxes) // 2


def test_every_condition_with_one_patch_side_lands_at_the_same_place(canvas: np.ndarray) -> None:
    for c in pn.panel():
        result = ij.apply(canvas, c, IMAGE)
        assert result.box == pl.patch_box(IMAGE, c.patch, canvas.shape[0])
        assert result.condition == c.name


def test_margin_and_base_seed_are_honoured() -> None:
    boxes = {pl.patch_box(n, 16, 1024, margin=0.20) for n in BASENAMES}
    assert all(b.x1 >= 204 and b.x2 <= 820 and b.y1 >= 204 and b.y2 <= 820 for b in boxes)
    moved = sum(pl.patch_box(n, 16) != pl.patch_box(n, 16, base_seed=43) for n in BASENAMES)
    assert moved > len(BASENAMES) * 0.9


@pytest.mark.parametrize("bad", ["", "images/00000091_005.png", "a\\b.png"])
def test_basename_must_be_a_base_name(bad: str) -> None:
    with pytest.raises(ValueError, match="base name"):
        pl.placement_seed(bad)


# ---------------------------------------------------------------- every condition: determinism, locality


@pytest.fixture(scope="module")
def other_process_digests(canvas: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """sha256 and box of every condition, computed by a fresh interpreter from the same canvas bytes."""
    return fresh_digests(canvas, tmp_path_factory.mktemp("perturb"), pn.condition_names(), [IMAGE])


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_within_and_across_processes(
    canvas: np.ndarray, name: str, other_process_digests: dict[str, list]
) -> None:
    first = ij.apply(canvas, name, IMAGE)
    second = ij.apply(canvas.copy(), pn.get_condition(name), IMAGE)
    assert first.box == second.box
    assert np.array_equal(first.image, second.image)
    assert other_process_digests[f"{name}/{IMAGE}"] == [sha(first.image), list(first.box.as_tuple())]


@pytest.mark.parametrize("name", NAMES)
def test_only_the_box_changes_and_the_input_is_untouched(canvas: np.ndarray, name: str) -> None:
    before = canvas.copy()
    for basename in BASENAMES[:5]:
        result = ij.apply(canvas, name, basename)
        assert np.array_equal(canvas, before)
        assert result.image.dtype == np.uint8 and result.image.shape == canvas.shape
        assert result.image is not canvas
        outside = np.ones(canvas.shape, dtype=bool)
        outside[result.box.slices()] = False
        assert np.array_equal(result.image[outside], canvas[outside])
        # On a noisy gradient every condition visibly changes its patch.
        assert not np.array_equal(result.image[result.box.slices()], canvas[result.box.slices()])


def test_a_1024_canvas_takes_the_whole_panel(canvas: np.ndarray) -> None:
    big = np.tile(canvas, (4, 4))
    for c in pn.panel():
        result = ij.apply(big, c, IMAGE)
        box = result.box
        assert box.x1 >= 153 and box.x2 <= 871 and box.y1 >= 153 and box.y2 <= 871
        changed = np.argwhere(result.image != big)
        assert changed.size > 0
        assert changed[:, 0].min() >= result.box.y1 and changed[:, 0].max() < result.box.y2
        assert changed[:, 1].min() >= result.box.x1 and changed[:, 1].max() < result.box.x2


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((256, 256, 3), dtype=np.uint8),
        np.zeros((256, 256), dtype=np.uint16),
        np.zeros((256, 256), dtype=np.float32),
        np.zeros((256, 200), dtype=np.uint8),
    ],
    ids=["rgb", "uint16", "float", "not-square"],
)
def test_bad_canvas_is_rejected_with_shape_and_dtype(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"shape \(256, \d+.*dtype"):
        ij.apply(bad, "C1", IMAGE)


def test_canvas_too_small_for_the_patch_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"shape \(80, 80\).*64 px patch"):
        ij.apply(np.zeros((80, 80), dtype=np.uint8), "ground_glass_64", IMAGE)
    with pytest.raises(ValueError, match="numpy array"):
        ij.apply([[0] * 64] * 64, "C1", IMAGE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="margin"):
        pl.patch_box(IMAGE, 4, margin=0.5)


# ---------------------------------------------------------------- geometric family


def test_patch_mode_ties_go_to_the_smallest_value_and_gray_range_clips() -> None:
    tie = np.array([[60] * 8 + [140] * 8], dtype=np.uint8)
    assert ij.patch_mode(tie) == 60
    assert ij.patch_mode(np.array([[9, 9, 200, 200, 200]], dtype=np.uint8)) == 200
    assert ij.gray_range(100) == (80, 120)
    assert ij.gray_range(5) == (20, 25)
    assert ij.gray_range(0) == (20, 20)
    assert ij.gray_range(250) == (230, 235)
    assert ij.gray_range(255) == (235, 235)


def crafted_canvas(name: str, mode: int, other: int, size: int = 256) -> tuple[np.ndarray, Box]:
    """Noisy canvas whose patch for `name` has the given mode (7/16 of the pixels) but not as its median:
    the rest hold `other` (5/16) and `other + 7` (4/16), both on the same side of the mode."""
    c = pn.get_condition(name)
    image = synthetic_canvas(size)
    box = pl.patch_box(IMAGE, c.patch, size)
    n = c.patch * c.patch
    values = np.full(n, other + 7, dtype=np.uint8)
    values[: 7 * n // 16] = mode
    values[7 * n // 16 : 12 * n // 16] = other
    image[box.slices()] = values.reshape(c.patch, c.patch)
    return image, box


@pytest.mark.parametrize("name", GEOMETRIC)
@pytest.mark.parametrize(("mode", "other"), [(100, 160), (200, 30), (5, 120), (250, 120), (128, 90)])
def test_geometric_pattern_gray_level_and_clip_by_hand(name: str, mode: int, other: int) -> None:
    image, box = crafted_canvas(name, mode, other)
    c = pn.get_condition(name)
    _, _, rng = hand_placement(IMAGE, c.patch, image.shape[0])
    lo, hi = max(20, min(235, mode - 20)), max(20, min(235, mode + 20))
    expected = image[box.slices()].astype(np.int64)
    if c.shape is Shape.SQUARE:
        expected[...] = rng.integers(lo, hi + 1, size=expected.shape)
    else:
        gray = int(rng.integers(lo, hi + 1))
        if c.shape is Shape.CIRCLE:
            footprint = C1_FOOTPRINT if c.patch == 4 else C2_FOOTPRINT
        else:
            main = np.eye(c.patch, dtype=bool)
            footprint = main[:, ::-1] if rng.integers(0, 2) else main
        expected[footprint] = gray
    expected = np.clip(expected, 20, 235)  # the whole patch, not only the drawn pixels
    result = ij.apply(image, name, IMAGE)
    assert result.box == box
    assert np.array_equal(result.image[box.slices()], expected)
    assert result.image[box.slices()].min() >= 20 and result.image[box.slices()].max() <= 235


@pytest.mark.parametrize(("name", "footprint"), [("C1", C1_FOOTPRINT), ("C2", C2_FOOTPRINT)])
def test_circle_footprints_are_exact(name: str, footprint: np.ndarray) -> None:
    radius = pn.get_condition(name).radius
    assert np.array_equal(ij.circle_mask(footprint.shape[0], radius), footprint)
    flat = np.full((128, 128), 100, dtype=np.uint8)
    seen_changed = 0
    for basename in BASENAMES[:40]:
        result = ij.apply(flat, name, basename)
        patch = result.image[result.box.slices()]
        assert np.all(patch[~footprint] == 100)
        drawn = np.unique(patch[footprint])
        assert drawn.size == 1 and 80 <= drawn[0] <= 120
        seen_changed += int(drawn[0] != 100)
    assert seen_changed > 30


@pytest.mark.parametrize("name", ["L4", "L8"])
def test_lines_are_one_pixel_per_row_on_a_diagonal(name: str) -> None:
    patch_side = pn.get_condition(name).patch
    flat = np.full((128, 128), 128, dtype=np.uint8)
    kinds = set()
    for basename in BASENAMES[:60]:
        result = ij.apply(flat, name, basename)
        changed = result.image[result.box.slices()] != 128
        if not changed.any():  # the drawn gray happened to equal the background
            continue
        rows, cols = np.nonzero(changed)
        assert np.array_equal(rows, np.arange(patch_side))  # one pixel in every row
        assert sorted(cols.tolist()) == list(range(patch_side))  # and in every column
        if np.array_equal(cols, rows):
            kinds.add("main")
        else:
            assert np.array_equal(cols, patch_side - 1 - rows)
            kinds.add("anti")
    assert kinds == {"main", "anti"}  # the coin really flips


@pytest.mark.parametrize("name", ["S4", "S8"])
@pytest.mark.parametrize("mode", [100, 10, 245])
def test_squares_fill_every_pixel_from_the_gray_range(name: str, mode: int) -> None:
    patch_side = pn.get_condition(name).patch
    flat = np.full((128, 128), mode, dtype=np.uint8)
    lo, hi = ij.gray_range(mode)
    values = []
    for basename in BASENAMES[:30]:
        patch = ij.apply(flat, name, basename).image
        patch = patch[pl.patch_box(basename, patch_side, 128).slices()]
        assert patch.size == patch_side**2
        assert patch.min() >= lo and patch.max() <= hi
        values.append(patch)
    stacked = np.stack(values)
    # Independent per-pixel draws: pixels within one patch differ, and the whole range gets used.
    assert all(np.unique(v).size > 1 for v in values) if lo < hi else np.all(stacked == lo)
    assert stacked.min() == lo and stacked.max() == hi


# ---------------------------------------------------------------- blur families


def whole_image_blur(image: np.ndarray, name: str) -> np.ndarray:
    c = pn.get_condition(name)
    if c.family is Family.ISO_BLUR:
        return cv2.GaussianBlur(image, (21, 21), 0)
    return cv2.filter2D(image, -1, ij.line_kernel(c.length, c.angle_deg), borderType=cv2.BORDER_REFLECT)


def edge_and_random_boxes(size: int, patch: int, count: int, seed: int) -> list[Box]:
    far = size - patch
    corners = [(0, 0), (0, far), (far, 0), (far, far), (0, far // 2), (far // 2, 0), (far, far // 2)]
    rng = np.random.default_rng(seed)
    spots = corners + [tuple(int(v) for v in rng.integers(0, far + 1, size=2)) for _ in range(count)]
    return [Box(x, y, x + patch, y + patch) for y, x in spots]


@pytest.mark.parametrize("name", BLURS)
def test_patch_blur_equals_whole_image_blur_pasted(name: str) -> None:
    c = pn.get_condition(name)
    size = c.patch + 40
    image = synthetic_canvas(size, seed=len(name))
    whole = whole_image_blur(image, name)
    for box in edge_and_random_boxes(size, c.patch, 40, seed=len(name)):
        expected = image.copy()
        expected[box.slices()] = whole[box.slices()]
        assert np.array_equal(ij.inject_at(image, c, box, np.random.default_rng(0)), expected), box
    # The same through the public entry point with no margin, so seeded patches also touch the edges.
    touched_edge = False
    for basename in BASENAMES[:60]:
        result = ij.apply(image, name, basename, margin=0.0)
        expected = image.copy()
        expected[result.box.slices()] = whole[result.box.slices()]
        assert np.array_equal(result.image, expected)
        touched_edge |= min(result.box.x1, result.box.y1) == 0 or max(result.box.x2, result.box.y2) == size
    assert touched_edge


@pytest.mark.parametrize("name", ["iso_blur_8", "dir_cranio_L31_P64", "dir_lateral_L21_P32"])
def test_patch_blur_equals_whole_image_blur_on_1024(name: str) -> None:
    c = pn.get_condition(name)
    image = np.tile(synthetic_canvas(256, seed=3), (4, 4))
    whole = whole_image_blur(image, name)
    for box in edge_and_random_boxes(1024, c.patch, 6, seed=1):
        expected = image.copy()
        expected[box.slices()] = whole[box.slices()]
        assert np.array_equal(ij.inject_at(image, c, box, np.random.default_rng(0)), expected), box


def test_opencv_sigma_rule_gives_3_5_for_21() -> None:
    assert pn.opencv_gaussian_sigma(21) == pytest.approx(3.5)
    assert np.allclose(cv2.getGaussianKernel(21, 0), cv2.getGaussianKernel(21, 3.5), atol=1e-12)


@pytest.mark.parametrize("length", [11, 21, 31])
def test_line_kernel_follows_the_angle(length: int) -> None:
    c = (length - 1) // 2
    for angle in (90.0, 0.0, 45.0):
        k = ij.line_kernel(length, angle)
        assert k.shape == (length, length) and k.dtype == np.float64
        assert k.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.allclose(k[k > 0], k[k > 0][0])  # equal weights on the line
    vertical = np.argwhere(ij.line_kernel(length, 90.0) > 0)
    assert np.array_equal(vertical, np.column_stack([np.arange(length), np.full(length, c)]))
    horizontal = np.argwhere(ij.line_kernel(length, 0.0) > 0)
    assert np.array_equal(horizontal, np.column_stack([np.full(length, c), np.arange(length)]))
    diagonal = np.argwhere(ij.line_kernel(length, 45.0) > 0)
    # Rows grow downwards: +45 deg runs from bottom-left to top-right, through the centre.
    assert np.all(diagonal[:, 0] + diagonal[:, 1] == 2 * c)
    reach = round(c * math.sin(math.radians(45)))
    assert sorted(diagonal[:, 1].tolist()) == list(range(c - reach, c + reach + 1))


def test_line_kernel_rejects_even_or_nonpositive_length() -> None:
    for bad in (0, 10, -3):
        with pytest.raises(ValueError, match="odd"):
            ij.line_kernel(bad, 0.0)


@pytest.mark.parametrize("length", [11, 21, 31])
def test_directional_blur_smears_along_its_direction_only(length: int) -> None:
    stripes = np.where((np.arange(160) // 3) % 2 == 0, 60, 180).astype(np.uint8)
    horizontal = np.repeat(stripes[:, None], 160, axis=1)  # constant along each row
    vertical = horizontal.T.copy()
    for p in (16, 32, 64):
        lateral = pn.get_condition(f"dir_lateral_L{length}_P{p}")
        cranio = pn.get_condition(f"dir_cranio_L{length}_P{p}")
        # A line along the stripes averages equal values: nothing changes.
        assert np.array_equal(ij.apply(horizontal, lateral, IMAGE).image, horizontal)
        assert np.array_equal(ij.apply(vertical, cranio, IMAGE).image, vertical)
        # Across the stripes it averages them away.
        across = ij.apply(horizontal, cranio, IMAGE)
        assert across.image[across.box.slices()].std() < 0.25 * horizontal[across.box.slices()].std()


# ---------------------------------------------------------------- reticular and ground glass


@pytest.mark.parametrize(("name", "period"), [("reticular_fine_32", 3), ("reticular_coarse_64", 6)])
def test_reticular_grid_has_its_period(name: str, period: int) -> None:
    flat = np.full((160, 160), 128, dtype=np.uint8)
    result = ij.apply(flat, name, IMAGE)
    diff = result.image[result.box.slices()].astype(np.float64) - 128
    side = diff.shape[0]
    spectrum = np.abs(np.fft.fft2(diff - diff.mean()))
    ky, kx = np.unravel_index(spectrum.argmax(), spectrum.shape)
    freqs = np.fft.fftfreq(side)
    along = sorted([abs(freqs[ky]), abs(freqs[kx])])
    assert along[0] == 0.0  # the grid is a sum of a row wave and a column wave
    assert abs(along[1] - 1 / period) <= 1 / (2 * side)  # nearest frequency bin to 1 / T
    assert np.abs(diff).max() == round(128 * 0.08)


@pytest.mark.parametrize(("name", "period"), [("reticular_fine_32", 3), ("reticular_coarse_64", 6)])
def test_reticular_matches_the_formula_by_hand(canvas: np.ndarray, name: str, period: int) -> None:
    result = ij.apply(canvas, name, IMAGE)
    clean = canvas[result.box.slices()].astype(np.float64)
    side = clean.shape[0]
    offsets = np.arange(side)
    grid = np.sin(2 * np.pi * offsets[None, :] / period) + np.sin(2 * np.pi * offsets[:, None] / period)
    grid /= np.abs(grid).max()
    expected = np.clip(np.rint(clean + grid * clean.mean() * 0.08), 0, 255)
    assert np.array_equal(result.image[result.box.slices()], expected.astype(np.uint8))


def test_ground_glass_is_a_6_percent_central_bump() -> None:
    flat = np.full((160, 160), 200, dtype=np.uint8)
    result = ij.apply(flat, "ground_glass_64", IMAGE)
    diff = result.image[result.box.slices()].astype(np.float64) - 200
    centre = diff[31:33, 31:33]
    assert np.all(np.abs(centre / 200 - 0.06) < 0.003)
    # Radial fall-off: mean added contrast shrinks ring by ring, down to nothing at the corners.
    yy, xx = np.mgrid[0:64, 0:64]
    radius = np.hypot(yy - 31.5, xx - 31.5)
    rings = [diff[(radius >= r) & (radius < r + 4)].mean() for r in range(0, 32, 4)]
    assert all(a > b for a, b in itertools.pairwise(rings))
    assert diff[0, 0] == 0 and diff.min() >= 0
    by_hand = np.clip(np.rint(200 + np.exp(-(radius**2) / (2 * 12**2)) * 200 * 0.06), 0, 255)
    assert np.array_equal(result.image[result.box.slices()], by_hand.astype(np.uint8))


def test_textures_clip_instead_of_wrapping() -> None:
    bright = np.full((160, 160), 250, dtype=np.uint8)
    for name in ("ground_glass_64", "reticular_coarse_64"):
        result = ij.apply(bright, name, IMAGE)
        patch = result.image[result.box.slices()]
        assert patch.max() == 255  # 250 + 6 % or 8 % of 250 would overflow a uint8
        assert patch.min() >= (250 if name.startswith("ground") else 230)


# ---------------------------------------------------------------- benchmark script


def test_benchmark_script_runs_and_writes_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "panel.json"
    script = ROOT / "bench" / "bench_panel.py"
    subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--images=1", "--repeats=1"],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    report = json.loads(out.read_text())
    assert report["images"] == 1 and report["conditions"] == 29
    assert set(report["per_family"]) == {f.value for f in Family if f not in pn.UNTESTED_FAMILIES}  # the paper's 29
    assert report["panel"]["images_per_s"] > 0
    assert {"iso_blur_8", "dir_cranio_L21_P64"} <= set(report["patch_vs_whole_blur"])
    assert report["machine"]["cpu_count"] >= 1


@pytest.mark.parametrize("name", NAMES)
def test_the_patch_alone_equals_perturbing_the_whole_canvas(name: str) -> None:
    """apply_patch works on the box and the context it reads; on a 72 px canvas with no margin most boxes touch an
    edge, where a filter's border rule must see what it sees on the whole canvas."""
    rng = np.random.default_rng(11)
    canvas = rng.integers(30, 220, (72, 72), dtype=np.uint8)
    condition = pn.get_condition(name)
    for basename in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        box, draws = pl.place(basename, condition.patch, 72, 0.0, 42, SPEC.placement)
        whole = ij.inject_at(canvas, condition, box, draws)
        ours = ij.apply_patch(canvas, condition, basename, margin=0.0)
        assert ours.box == box
        np.testing.assert_array_equal(ours.patch, whole[box.slices()])
