"""The stimulus families the paper lists as untested: quantum noise, JPEG, line streak.

Each is drawn through the panel's seeded placement, changes pixels only inside its patch, is byte-identical across
runs and processes, and is in a run only when its family is switched on in the parameters.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from fresh_interpreter import fresh_digests

from lesionsignal.config.params import load_params
from lesionsignal.core.validate import ParamsError
from lesionsignal.stimuli import inject as ij
from lesionsignal.stimuli import panel as pn
from lesionsignal.stimuli.convention import Convention, PanelSwitches
from lesionsignal.stimuli.panel import UNTESTED_FAMILIES, Family, PanelError, resolve_panel
from lesionsignal.stimuli.placement import place

ROOT = Path(__file__).resolve().parents[1]
NEW = pn.untested_condition_names()
BASENAMES = [f"{i:08d}_{i % 5:03d}.png" for i in range(12)]


def film(size: int = 512, seed: int = 0) -> np.ndarray:
    """A smooth gradient, a bright disc and noise: every patch differs, and JPEG has edges to ring on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 50 + 150 * (0.5 * yy + 0.5 * xx) / size + 40 * ((yy - size / 2) ** 2 + (xx - size / 3) ** 2 < 80**2)
    return np.clip(np.rint(base + rng.normal(0, 6, (size, size))), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def canvas() -> np.ndarray:
    return film()


def sha(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_the_new_families_have_one_condition_each_and_stay_out_of_the_paper_panel() -> None:
    assert [pn.get_condition(n).family for n in NEW] == list(UNTESTED_FAMILIES)
    assert len(pn.condition_names()) == 29 and not set(NEW) & set(pn.condition_names())
    assert [c.name for c in pn.panel()] == list(pn.condition_names())
    assert [c.name for c in resolve_panel((), ())] == list(pn.condition_names())
    every = resolve_panel((), UNTESTED_FAMILIES)
    assert [c.name for c in every] == [*pn.condition_names(), *NEW]
    chosen = resolve_panel(("C1", "jpeg_q90_64"), (Family.JPEG, Family.LINE_STREAK))
    assert [c.name for c in chosen] == ["C1", "jpeg_q90_64", "line_streak_64"]  # named first, then the family's
    with pytest.raises(PanelError, match="switch the family on"):
        resolve_panel(("C1", "jpeg_q90_64"), ())
    with pytest.raises(PanelError, match="part of the paper's panel"):
        resolve_panel((), (Family.GEOMETRIC,))
    # The patch side is one the panel already uses: the clean units (pooled at every side) do not change.
    assert {pn.get_condition(n).patch for n in NEW} <= {c.patch for c in pn.panel()}


def test_the_parameters_switch_the_families_on_and_name_the_field_when_wrong(tmp_path: Path) -> None:
    assert load_params(ROOT / "params" / "paper.yaml").panel.chosen() == pn.panel()
    demo = load_params(ROOT / "params" / "demo.yaml").panel.chosen()
    assert [c.name for c in demo[-3:]] == list(NEW)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrun: demo\npanel:\n  conditions: [C1, line_streak_64]\n")
    with pytest.raises(ParamsError) as err:
        load_params(bad)
    assert err.value.key == "panel.extra_families" and "line_streak" in err.value.reason
    bad.write_text("name: x\nrun: demo\npanel:\n  extra_families: [glitter]\n")
    with pytest.raises(ParamsError) as err:
        load_params(bad)
    assert err.value.key == "panel.extra_families[0]" and "quantum_noise" in err.value.reason


@pytest.mark.parametrize("convention", list(Convention))
@pytest.mark.parametrize("name", NEW)
def test_each_family_changes_pixels_only_inside_its_patch(
    canvas: np.ndarray, name: str, convention: Convention
) -> None:
    switches = PanelSwitches.for_convention(convention)
    before = canvas.copy()
    changed_somewhere = 0
    for basename in BASENAMES:
        result = ij.apply(canvas, name, basename, margin=0.15, switches=switches)
        assert np.array_equal(canvas, before)  # the input is never written
        box = pn.get_condition(name).patch
        assert (result.box.width, result.box.height) == (box, box)
        outside = np.ones(canvas.shape, dtype=bool)
        outside[result.box.slices()] = False
        assert np.array_equal(result.image[outside], canvas[outside])
        changed_somewhere += int(np.count_nonzero(result.image[result.box.slices()] != canvas[result.box.slices()]))
        # the same seeded placement as every panel condition with this patch side
        assert result.box == place(basename, box, canvas.shape[0], 0.15, 42, switches.placement)[0]
    assert changed_somewhere > 0


@pytest.fixture(scope="module")
def other_process_digests(canvas: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """The digest of every new condition's canvas on every basename, computed by a fresh interpreter."""
    return fresh_digests(canvas, tmp_path_factory.mktemp("untested"), pn.untested_condition_names(), BASENAMES)


@pytest.mark.parametrize("name", NEW)
def test_each_family_is_byte_identical_across_runs_and_processes(
    canvas: np.ndarray, name: str, other_process_digests: dict[str, list]
) -> None:
    for basename in BASENAMES:
        first = ij.apply(canvas, name, basename).image
        second = ij.apply(canvas.copy(), pn.get_condition(name), basename).image
        assert np.array_equal(first, second)
        assert other_process_digests[f"{name}/{basename}"][0] == sha(first)
    # another image name draws another placement (and, for the random families, other values)
    assert sha(ij.apply(canvas, name, BASENAMES[0]).image) != sha(ij.apply(canvas, name, BASENAMES[1]).image)


def test_apply_patch_gives_the_same_pixels_as_apply(canvas: np.ndarray) -> None:
    for name in NEW:
        whole = ij.apply(canvas, name, BASENAMES[3])
        patch = ij.apply_patch(canvas, name, BASENAMES[3])
        assert patch.box == whole.box and np.array_equal(patch.patch, whole.image[whole.box.slices()])
        assert ij.context_radius(pn.get_condition(name)) == 0  # none reads the canvas outside its box


def test_quantum_noise_is_poisson_gaussian_with_the_stated_gain() -> None:
    condition = pn.get_condition("quantum_noise_64")
    flat = np.full((512, 512), 128, np.uint8)
    gain = 255 / condition.quanta
    expected_var = gain * 128 + condition.read_noise**2  # Poisson variance g^2 (v / g), plus the read noise
    values = np.concatenate(
        [ij.apply(flat, condition, b).image[ij.apply(flat, condition, b).box.slices()].ravel() for b in BASENAMES]
    ).astype(float)
    assert abs(values.mean() - 128) < 0.2
    assert values.var() == pytest.approx(expected_var + 1 / 12, rel=0.08)  # + the rounding to whole gray levels
    # the draws follow the placement on the same generator: Poisson counts first, then the Gaussian, row-major
    box, rng = place(BASENAMES[0], 64, 512, 0.15, 42)
    counts = rng.poisson(np.full((64, 64), 128.0) / gain)
    by_hand = np.clip(np.rint(counts * gain + rng.normal(0, condition.read_noise, (64, 64))), 0, 255)
    assert np.array_equal(ij.apply(flat, condition, BASENAMES[0]).image[box.slices()], by_hand.astype(np.uint8))


def test_jpeg_compresses_the_patch_alone_with_blocks_aligned_to_it(canvas: np.ndarray) -> None:
    condition = pn.get_condition("jpeg_q90_64")
    result = ij.apply(canvas, condition, BASENAMES[2])
    patch = np.ascontiguousarray(canvas[result.box.slices()])
    ok, encoded = cv2.imencode(".jpg", patch, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok and np.array_equal(result.image[result.box.slices()], cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE))
    # quality 90 is a light touch: a few gray levels on this noisy film, well under what quality 50 costs
    diff = np.abs(result.image.astype(int) - canvas)[result.box.slices()]
    coarse = np.abs(ij.jpeg_round_trip(patch, 50).astype(int) - patch)
    assert 0 < diff.mean() < 4 and diff.mean() < 0.8 * coarse.mean()
    # the round trip of a patch of 8 x 8 constant blocks changes nothing: the blocks are the patch's own
    blocks = np.kron(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3 + 20, np.ones((8, 8), np.uint8))
    assert np.array_equal(ij.jpeg_round_trip(blocks, 90), blocks)


def test_line_streak_is_a_thin_bright_line_across_the_patch_at_the_drawn_angle(canvas: np.ndarray) -> None:
    condition = pn.get_condition("line_streak_64")
    for basename in BASENAMES[:6]:
        result = ij.apply(canvas, condition, basename)
        box, rng = place(basename, 64, canvas.shape[0], 0.15, 42)
        angle, offset = rng.uniform(0, 180), rng.uniform(-16, 16)  # the draws that follow the placement
        mask = ij.streak_mask(64, 2, angle, offset)
        before = canvas[box.slices()].astype(int)
        after = result.image[box.slices()].astype(int)
        assert np.all(after[~mask] == before[~mask]) and np.all(after[mask] >= before[mask])
        assert np.mean(after[mask] - before[mask]) == pytest.approx(0.2 * before.mean(), abs=1.0)
        # about 2 px thick along a chord of the patch: between 2 and 2 sqrt(2) times 64 pixels
        assert 2 * 64 * 0.8 <= mask.sum() <= 2 * 64 * math.sqrt(2) * 1.1
    horizontal = ij.streak_mask(64, 2, 0.0, 0.0)
    assert np.array_equal(np.flatnonzero(horizontal.any(axis=1)), [31, 32]) and horizontal[31:33].all()
