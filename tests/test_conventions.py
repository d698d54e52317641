"""The two panel conventions: each of the authors' differences asserted on a hand-made canvas, the switches'
plumbing into parameters and cache keys, and the spec convention left as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from lesionsignal.config.params import load_params
from lesionsignal.core.canvas import Resample, to_canvas
from lesionsignal.core.digests import stable_digest
from lesionsignal.core.validate import ParamsError
from lesionsignal.pipeline.embeddings import placement as run_placement
from lesionsignal.stimuli import inject as ij
from lesionsignal.stimuli import placement as pl
from lesionsignal.stimuli.convention import (
    SPEC,
    BumpCentre,
    CircleCentre,
    Convention,
    DiagonalCoin,
    PanelSwitches,
    PatchClip,
    PlacementBound,
    TextureCast,
)
from lesionsignal.stimuli.panel import GRAY_CLIP, PanelError, condition_names, get_condition

ROOT = Path(__file__).resolve().parents[1]
AUTHORS = PanelSwitches.for_convention(Convention.AUTHORS)
BASENAMES = [f"{i:08d}_{i % 7:03d}.png" for i in range(400)]
PATCHES = (4, 8, 16, 32, 64)


def flat(value: int, size: int = 1024) -> np.ndarray:
    return np.full((size, size), value, dtype=np.uint8)


def seeded(basename: str, base_seed: int = 42) -> np.random.Generator:
    seed = int(hashlib.sha256(f"{base_seed}_{basename}".encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed)


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.argwhere(before != after)


# ---------------------------------------------------------------- the switches


def test_spec_is_the_default_and_authors_differs_in_every_switch() -> None:
    assert PanelSwitches.for_convention(Convention.SPEC) == PanelSwitches() == SPEC
    assert SPEC.differences(AUTHORS) == (
        "placement",
        "circle",
        "diagonal",
        "clip",
        "texture_cast",
        "bump_centre",
        "resample",
    )


def test_single_switches_can_be_set_apart_from_a_convention() -> None:
    mixed = AUTHORS.with_overrides({"resample": "float", "clip": "geometric"})
    assert mixed.resample is Resample.FLOAT and mixed.clip is PatchClip.GEOMETRIC
    assert AUTHORS.differences(mixed) == ("clip", "resample")
    with pytest.raises(PanelError, match="unknown panel switch 'round'"):
        SPEC.with_overrides({"round": "truncate"})
    with pytest.raises(PanelError, match="allowed: round, truncate"):
        SPEC.with_overrides({"texture_cast": "floor"})


# ---------------------------------------------------------------- placement


def authors_formula(basename: str, patch: int, size: int, margin: float) -> tuple[int, int]:
    """The authors' draw written out: y then x from integers(int(S m), int(S (1 - m)) - P), upper exclusive."""
    rng = seeded(basename)
    y = int(rng.integers(int(size * margin), int(size * (1 - margin)) - patch))
    x = int(rng.integers(int(size * margin), int(size * (1 - margin)) - patch))
    return y, x


def test_authors_placement_never_exceeds_818_minus_p_at_margin_020() -> None:
    assert pl.corner_range(1024, 0.20, 8, PlacementBound.AUTHORS) == (204, 819 - 8)
    assert pl.corner_range(1024, 0.20, 8, PlacementBound.SYMMETRIC) == (204, 821 - 8)
    for patch in PATCHES:
        corners = []
        for name in BASENAMES:
            box = pl.patch_box(name, patch, 1024, 0.20, 42, PlacementBound.AUTHORS)
            assert (box.y1, box.x1) == authors_formula(name, patch, 1024, 0.20)
            corners += [box.y1, box.x1]
        assert min(corners) >= 204 and max(corners) <= 818 - patch


def test_the_two_bounds_shift_boxes_by_0_to_2_px() -> None:
    shifts = set()
    for name in BASENAMES[:100]:
        spec = pl.patch_box(name, 16, 1024, 0.20, 42, PlacementBound.SYMMETRIC)
        authors = pl.patch_box(name, 16, 1024, 0.20, 42, PlacementBound.AUTHORS)
        shifts |= {spec.y1 - authors.y1, spec.x1 - authors.x1}
    assert shifts <= {0, 1, 2} and len(shifts) > 1


# ---------------------------------------------------------------- geometric


def cv2_disc(patch: int, radius: int) -> np.ndarray:
    canvas = np.zeros((patch, patch), dtype=np.uint8)
    cv2.circle(canvas, (patch // 2, patch // 2), radius, 1, thickness=-1)
    return canvas.astype(bool)


def test_authors_circles_are_cv2_discs_of_5_and_13_pixels() -> None:
    c1 = ij.circle_mask(4, 1, CircleCentre.PIXEL)
    plus = np.zeros((4, 4), dtype=bool)
    plus[2, 1:4] = plus[1:4, 2] = True
    assert np.array_equal(c1, plus) and c1.sum() == 5
    assert np.array_equal(c1, cv2_disc(4, 1))
    c2 = ij.circle_mask(8, 2, CircleCentre.PIXEL)
    assert c2.sum() == 13 and np.array_equal(c2, cv2_disc(8, 2))
    assert ij.circle_mask(4, 1).sum() == 4 and ij.circle_mask(8, 2).sum() == 12


def first_basename_drawing_off(value: int, name: str, switches: PanelSwitches) -> str:
    """A basename whose drawn gray level differs from a flat canvas's value, so every drawn pixel shows."""
    for basename in BASENAMES:
        out = ij.apply(flat(value), name, basename, margin=0.20, switches=switches).image
        if np.any(out != value):
            return basename
    raise AssertionError("every basename drew the canvas's own value")


def test_authors_c1_covers_a_plus_around_x_plus_half_p() -> None:
    basename = first_basename_drawing_off(128, "C1", AUTHORS)
    result = ij.apply(flat(128), "C1", basename, margin=0.20, switches=AUTHORS)
    box = result.box
    cy, cx = box.y1 + 4 // 2, box.x1 + 4 // 2
    expected = {(cy, cx), (cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)}
    assert {tuple(p) for p in changed(flat(128), result.image)} == expected


@pytest.mark.parametrize("name", ["L4", "L8"])
def test_diagonal_coin_is_reversed(name: str) -> None:
    patch = get_condition(name).patch
    seen = set()
    for basename in BASENAMES[:40]:
        lo, hi = pl.corner_range(1024, 0.20, patch, PlacementBound.AUTHORS)
        rng = seeded(basename)
        rng.integers(lo, hi)
        rng.integers(lo, hi)
        mode_lo, mode_hi = ij.gray_range(128)
        gray = int(rng.integers(mode_lo, mode_hi + 1))
        coin = int(rng.integers(0, 2))
        if gray == 128:
            continue
        result = ij.apply(flat(128), name, basename, margin=0.20, switches=AUTHORS)
        drawn = result.image[result.box.slices()] != 128
        # The authors: 1 = main diagonal.
        assert np.array_equal(drawn, ij.diagonal_mask(patch, anti=coin == 0))
        spec_coin = SPEC.with_overrides({"placement": "authors"})
        spec = ij.apply(flat(128), name, basename, margin=0.20, switches=spec_coin)
        assert np.array_equal(spec.image[spec.box.slices()] != 128, ij.diagonal_mask(patch, anti=coin == 1))
        seen.add(coin)
    assert seen == {0, 1}


# ---------------------------------------------------------------- clipping, rounding, bump


@pytest.mark.parametrize("name", ["iso_blur_8", "dir_cranio_L21_P32", "reticular_fine_32", "ground_glass_64"])
def test_authors_clip_the_whole_patch_for_every_family(name: str) -> None:
    canvas = flat(250)  # a blur keeps it at 250, a texture spreads it above and below
    authors = ij.apply(canvas, name, "film.png", margin=0.20, switches=AUTHORS)
    patch = authors.image[authors.box.slices()]
    assert patch.min() >= GRAY_CLIP[0] and patch.max() <= GRAY_CLIP[1]
    outside = authors.image.copy()
    outside[authors.box.slices()] = canvas[authors.box.slices()]
    assert np.array_equal(outside, canvas)
    spec = ij.apply(canvas, name, "film.png", margin=0.20, switches=AUTHORS.with_overrides({"clip": "geometric"}))
    spec_patch = spec.image[spec.box.slices()]
    assert spec_patch.min() < GRAY_CLIP[0] or spec_patch.max() > GRAY_CLIP[1]
    assert np.array_equal(np.clip(spec_patch, *GRAY_CLIP), patch)


def test_textures_truncate_for_the_authors_and_round_for_the_spec() -> None:
    canvas = flat(100)
    amplitude = get_condition("ground_glass_64").amplitude
    results = {}
    for cast in TextureCast:
        switches = SPEC.with_overrides({"texture_cast": cast.value})
        results[cast] = ij.apply(canvas, "ground_glass_64", "film.png", margin=0.20, switches=switches)
    box = results[TextureCast.ROUND].box
    added = 100 + ij.ground_glass_bump(64, 12.0) * 100 * amplitude
    assert np.array_equal(results[TextureCast.ROUND].image[box.slices()], np.rint(added).astype(np.uint8))
    assert np.array_equal(results[TextureCast.TRUNCATE].image[box.slices()], np.floor(added).astype(np.uint8))
    # 100 + 6 at the centre, x.5 or more in a ring: the two casts differ by exactly one there.
    difference = results[TextureCast.ROUND].image.astype(int) - results[TextureCast.TRUNCATE].image
    assert set(np.unique(difference)) == {0, 1}


def test_ground_glass_bump_centre() -> None:
    pixel_mean = ij.ground_glass_bump(64, 12.0, BumpCentre.PIXEL_MEAN)
    half_side = ij.ground_glass_bump(64, 12.0, BumpCentre.HALF_SIDE)
    assert np.allclose(pixel_mean, pixel_mean[::-1, ::-1]) and pixel_mean.max() < 1.0
    assert half_side[32, 32] == 1.0 and np.unravel_index(half_side.argmax(), half_side.shape) == (32, 32)
    assert np.allclose(half_side[1:, 1:], half_side[1:, 1:][::-1, ::-1])


# ---------------------------------------------------------------- canvas


def test_authors_resize_in_8_bits_with_lanczos4() -> None:
    rng = np.random.default_rng(3)
    film = np.clip(rng.normal(128, 40, (1300, 1300)), 0, 255).astype(np.uint8)
    eight = to_canvas(film, resample=Resample.UINT8)
    assert np.array_equal(eight, cv2.resize(film, (1024, 1024), interpolation=cv2.INTER_LANCZOS4))
    floating = to_canvas(film)
    gap = np.abs(eight.astype(int) - floating)
    assert gap.max() == 1 and 0 < np.count_nonzero(gap) < gap.size // 10
    assert np.array_equal(to_canvas(film[:1024, :1024], resample=Resample.UINT8), film[:1024, :1024])


# ---------------------------------------------------------------- parameters and cache keys


def test_shipped_params_choose_their_conventions() -> None:
    paper = load_params(ROOT / "params" / "paper.yaml")
    assert paper.panel.convention is Convention.AUTHORS and paper.panel.margin == 0.20
    assert paper.panel.resolved_switches() == AUTHORS
    for name in ("demo", "smoke"):
        params = load_params(ROOT / "params" / f"{name}.yaml")
        assert params.panel.convention is Convention.SPEC and params.panel.resolved_switches() == SPEC


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_convention_and_switches_enter_the_results_digest_and_the_placement(tmp_path: Path) -> None:
    text = (ROOT / "params" / "smoke.yaml").read_text()
    base = load_params(ROOT / "params" / "smoke.yaml")
    authors = load_params(
        write(tmp_path, text.replace("  base_seed: 42\n", "  base_seed: 42\n  convention: authors\n"))
    )
    override = load_params(
        write(tmp_path, text.replace("  base_seed: 42\n", "  base_seed: 42\n  switches: {clip: every_family}\n"))
    )
    digests = {base.results_digest(), authors.results_digest(), override.results_digest()}
    assert len(digests) == 3
    placements = [run_placement(p) for p in (base, authors, override)]
    assert placements[1].switches == AUTHORS and placements[2].switches.clip is PatchClip.EVERY_FAMILY
    assert len({stable_digest(p) for p in placements}) == 3
    assert placements[1].box("film.png", 8) == pl.patch_box("film.png", 8, 1024, 0.15, 42, PlacementBound.AUTHORS)


def test_bad_switches_in_params_name_the_key(tmp_path: Path) -> None:
    text = (ROOT / "params" / "smoke.yaml").read_text()
    bad = text.replace("  base_seed: 42\n", "  base_seed: 42\n  switches: {coin: main}\n")
    with pytest.raises(ParamsError, match="switches"):
        load_params(write(tmp_path, bad))


def test_every_condition_runs_in_both_conventions() -> None:
    canvas = to_canvas(np.random.default_rng(1).integers(0, 256, (300, 300), dtype=np.uint8))
    for name in condition_names():
        for switches in (SPEC, AUTHORS, AUTHORS.with_overrides({"diagonal": DiagonalCoin.ONE_IS_ANTI.value})):
            result = ij.apply(canvas, name, "film.png", margin=0.20, switches=switches)
            assert result.image.shape == canvas.shape and result.image.dtype == np.uint8


def test_convention_table_counts_the_differing_pixels() -> None:
    from lesionsignal.stimuli.gallery import convention_pairs, convention_table, plot_convention_pairs

    canvas = flat(128)
    conditions = [get_condition(n) for n in ("C1", "ground_glass_64")]
    switches = SPEC.with_overrides({"placement": "authors"})
    pairs = convention_pairs((canvas, canvas), "film.png", conditions, (switches, AUTHORS), margin=0.20, base_seed=42)
    table = convention_table(pairs)
    assert list(table["condition"]) == ["C1", "ground_glass_64"] and table["same_box"].all()
    for pair, row in zip(pairs, table.itertuples(), strict=True):
        assert row.pixels_differing == np.count_nonzero(pair.a.image != pair.b.image) == row.pixels_differing_in_boxes
    fig = plot_convention_pairs(pairs, ("spec", "authors"), 48, "test")
    assert len(fig.axes) == 2 * 3 + 2  # three panels and a colour bar per row
