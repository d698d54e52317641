"""The one extraction engine, on the panel: clean twin pooled at its perturbed twin's box, kill-and-resume, shards,
partial recompute, several sources at once. (Box plans, for the lesion study, are tested in test_lesion_study.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from lesionsignal.core.box import Box, centred_window
from lesionsignal.core.files import load_arrays
from lesionsignal.data.images import ImageError, ImageItem
from lesionsignal.features.extraction import (
    ExtractionError,
    assemble_panel,
    panel_plan,
    read_features,
    run_extraction,
    unit_store,
)
from lesionsignal.features.pools import RawPixels
from lesionsignal.stimuli.convention import Convention, PanelSwitches, PlacementBound
from lesionsignal.stimuli.inject import apply
from lesionsignal.stimuli.panel import get_condition
from lesionsignal.stimuli.placement import Placement, patch_box

CANVAS = 256
PLACEMENT = Placement(canvas_size=CANVAS, margin=0.15, base_seed=42)
CONDITIONS = [get_condition(n) for n in ("S8", "iso_blur_8", "reticular_fine_32", "ground_glass_64")]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[ImageItem]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    items = []
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS]
    for i in range(7):
        image = (60 + 80 * np.sin(xx / (20 + i)) ** 2 + 40 * yy / CANVAS + rng.normal(0, 6, xx.shape)).clip(0, 255)
        path = folder / f"img_{i:02d}.png"
        cv2.imwrite(str(path), image.astype(np.uint8))
        items.append(ImageItem(path.name, path))
    return items


@dataclasses.dataclass
class Done:
    units_total: int
    units_cached: int
    units_computed: int
    files: dict[str, Path]  # assembled files; empty until every unit exists


def _run(work: Path, images: list[ImageItem], conditions=CONDITIONS, source=None, **kwargs):
    source = source or RawPixels()
    store = unit_store(work)
    plan = panel_plan(store, source, "toy", images, conditions, PLACEMENT, chunk_size=3)
    (report,) = run_extraction([(source, plan)], store, progress=False, workers=2, **kwargs)
    files = assemble_panel(source, plan, store, work / "assembled") if report.complete else {}
    return plan, Done(report.units_total, report.units_cached, report.units_computed, files)


def _bytes(files: dict[str, Path]) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in files.items()}


def test_assembled_files_hold_clean_and_perturbed_pools(tmp_path: Path, images: list[ImageItem]) -> None:
    plan, report = _run(tmp_path, images)
    assert report.units_computed == len(plan.units) == 3 * (1 + len(CONDITIONS))
    arrays = load_arrays(report.files["reticular_fine_32"])
    assert list(arrays["image_ids"]) == [i.image_id for i in images]
    assert arrays["clean_raw_global"].shape == (7, 64 * 64)
    assert arrays["perturbed_raw_oracle"].shape == (7, 32 * 32)
    # the clean twin is pooled at its perturbed twin's box, and that box is the seeded placement
    for row, item in enumerate(images):
        box = patch_box(item.image_id, 32, CANVAS, 0.15, 42)
        assert tuple(arrays["boxes"][row]) == box.as_tuple()
        canvas = cv2.imread(str(item.path), cv2.IMREAD_UNCHANGED)
        window = centred_window(box, 32, CANVAS)
        np.testing.assert_array_equal(arrays["clean_raw_oracle"][row], canvas[window].reshape(-1) / np.float32(255))
        perturbed = apply(canvas, "reticular_fine_32", item.image_id, margin=0.15, base_seed=42).image
        np.testing.assert_array_equal(
            arrays["perturbed_raw_oracle"][row], perturbed[window].reshape(-1) / np.float32(255)
        )
    assert not np.array_equal(arrays["clean_raw_oracle"], arrays["perturbed_raw_oracle"])


def test_second_run_is_all_cache_hits_and_same_bytes(tmp_path: Path, images: list[ImageItem]) -> None:
    _, first = _run(tmp_path, images)
    before = _bytes(first.files)
    _, second = _run(tmp_path, images)
    assert second.units_computed == 0 and second.units_cached == second.units_total
    assert _bytes(second.files) == before


def test_killed_run_resumes_to_identical_arrays(tmp_path: Path, images: list[ImageItem]) -> None:
    _, reference = _run(tmp_path / "whole", images)

    class Killed(Exception):
        pass

    done = []

    def kill_after_four(unit) -> None:
        done.append(unit)
        if len(done) == 4:
            raise Killed

    with pytest.raises(Killed):
        _run(tmp_path / "resumed", images, on_unit_done=kill_after_four)
    leftovers = [p for p in (tmp_path / "resumed").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    _, resumed = _run(tmp_path / "resumed", images)
    assert resumed.units_cached == 4
    assert resumed.units_computed == resumed.units_total - 4
    assert _bytes(resumed.files) == _bytes(reference.files)


def test_two_shards_merge_to_the_unsplit_bytes(tmp_path: Path, images: list[ImageItem]) -> None:
    _, whole = _run(tmp_path / "whole", images)
    _, first = _run(tmp_path / "sharded", images, shard=(0, 2))
    assert first.files == {}  # the other shard's units are still missing
    _, second = _run(tmp_path / "sharded", images, shard=(1, 2))
    assert first.units_computed + second.units_computed == len(CONDITIONS) * 3 + 3
    assert _bytes(second.files).keys() == _bytes(whole.files).keys()
    for name in whole.files:
        assert second.files[name].read_bytes() == whole.files[name].read_bytes(), name


def test_changing_one_condition_recomputes_only_it(tmp_path: Path, images: list[ImageItem]) -> None:
    _run(tmp_path, images)
    changed = [dataclasses.replace(c, amplitude=0.2) if c.name == "ground_glass_64" else c for c in CONDITIONS]
    plan, report = _run(tmp_path, images, conditions=changed)
    assert report.units_computed == len(plan.chunks)  # one unit per chunk: the changed condition only
    assert report.units_cached == len(plan.units) - len(plan.chunks)


def test_assembly_refuses_missing_units(tmp_path: Path, images: list[ImageItem]) -> None:
    plan, done = _run(tmp_path, images, shard=(1, 3))
    assert done.files == {}
    with pytest.raises(ExtractionError, match="not extracted yet"):
        read_features(RawPixels(), plan.units, unit_store(tmp_path))


def test_bad_inputs_are_named(tmp_path: Path, images: list[ImageItem]) -> None:
    store = unit_store(tmp_path / "w")
    with pytest.raises(ExtractionError, match="duplicate image ids"):
        panel_plan(store, RawPixels(), "toy", [images[0], images[0]], CONDITIONS, PLACEMENT)
    ghost = ImageItem("ghost.png", tmp_path / "ghost.png")
    with pytest.raises(ImageError, match=r"ghost\.png"):
        panel_plan(store, RawPixels(), "toy", [ghost], CONDITIONS, PLACEMENT)
    broken = tmp_path / "broken.png"
    broken.write_bytes(images[0].path.read_bytes()[:100])
    plan = panel_plan(store, RawPixels(), "toy", [ImageItem("broken.png", broken)], CONDITIONS[:1], PLACEMENT)
    with pytest.raises(ImageError, match=r"broken\.png"):
        run_extraction([(RawPixels(), plan)], store, progress=False)
    with pytest.raises(ExtractionError, match="no feature sources"):
        run_extraction([], store, progress=False)


def test_oracle_window_stays_on_canvas() -> None:
    rows, cols = centred_window(Box(0, 0, 4, 4), 32, 256)
    assert (rows.start, cols.start) == (0, 0) and rows.stop - rows.start == 32
    rows, cols = centred_window(Box(250, 250, 256, 256), 32, 256)
    assert (rows.stop, cols.stop) == (256, 256)


def test_sources_extracted_together_equal_separate_runs(tmp_path: Path, images: list[ImageItem]) -> None:
    small = RawPixels(global_side=16)

    class Renamed(RawPixels):
        @property
        def source_id(self) -> str:
            return "raw-pixels-32"

    big = Renamed(global_side=32)
    store = unit_store(tmp_path / "together")
    plans = [panel_plan(store, s, "toy", images, CONDITIONS, PLACEMENT, chunk_size=3) for s in (small, big)]
    together = run_extraction(list(zip((small, big), plans, strict=True)), store, progress=False)
    for source, plan, report in zip((small, big), plans, together, strict=True):
        assert report.units_computed == len(plan.units) and report.complete
        files = assemble_panel(source, plan, store, tmp_path / "together" / source.source_id)
        _, alone = _run(tmp_path / f"alone-{source.source_id}", images, source=source)
        assert _bytes(files) == _bytes(alone.files)


def test_sources_that_differ_in_images_are_refused(tmp_path: Path, images: list[ImageItem]) -> None:
    store = unit_store(tmp_path)
    first = panel_plan(store, RawPixels(), "toy", images, CONDITIONS, PLACEMENT, chunk_size=3)
    fewer = panel_plan(store, RawPixels(global_side=16), "toy", images[:-1], CONDITIONS, PLACEMENT, chunk_size=3)
    with pytest.raises(ExtractionError, match="must share images and views"):
        run_extraction([(RawPixels(), first), (RawPixels(global_side=16), fewer)], store, progress=False)


def test_the_panel_convention_enters_every_unit_key(tmp_path: Path, images: list[ImageItem]) -> None:
    store = unit_store(tmp_path / "units")
    authors = dataclasses.replace(PLACEMENT, switches=PanelSwitches.for_convention(Convention.AUTHORS))
    truncating = PLACEMENT.switches.with_overrides({"texture_cast": "truncate"})
    one_switch = dataclasses.replace(PLACEMENT, switches=truncating)
    keys = [
        {u.key for u in panel_plan(store, RawPixels(), "toy", images, CONDITIONS, p, chunk_size=3).units}
        for p in (PLACEMENT, authors, one_switch)
    ]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    plan = panel_plan(store, RawPixels(), "toy", images, CONDITIONS, authors, chunk_size=3)
    for unit in plan.of("S8"):
        for item, (box,) in zip(plan.chunks[unit.chunk], unit.boxes, strict=True):
            assert box == patch_box(item.image_id, 8, CANVAS, 0.15, 42, PlacementBound.AUTHORS)
    (report,) = run_extraction([(RawPixels(), plan)], store, progress=False, workers=1)
    assert report.complete
