"""Canvases decoded once: the store gives the decoder's canvases, never decodes an image twice, misses when the file
changes, and an extraction reading from it writes the same bytes as one that decodes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from lesionsignal.core.canvas import Resample
from lesionsignal.data import canvas_store as cs
from lesionsignal.data.images import ImageItem, load_canvases
from lesionsignal.features.extraction import panel_plan, run_extraction, unit_store
from lesionsignal.features.pools import RawPixels
from lesionsignal.stimuli.panel import get_condition
from lesionsignal.stimuli.placement import Placement

CANVAS = 128


def _films(folder: Path, n: int) -> list[ImageItem]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    items = []
    for i in range(n):
        path = folder / f"film_{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (90 + 7 * i, 100), dtype=np.uint8))  # not square: padded
        items.append(ImageItem(path.name, path))
    return items


def test_the_store_gives_the_decoders_canvases_and_decodes_each_image_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _films(tmp_path / "films", 4)
    store = cs.canvas_store(tmp_path / "canvases")
    decoded: list[str] = []
    real = cs.load_canvases

    def counting(chosen, *args):
        decoded.extend(item.image_id for item in chosen)
        return real(chosen, *args)

    monkeypatch.setattr(cs, "load_canvases", counting)
    with ThreadPoolExecutor(2) as pool:
        expected = load_canvases(items, CANVAS, pool, Resample.FLOAT)
        first = cs.stored_canvases(items[:2], CANVAS, pool, Resample.FLOAT, store)
        both = cs.stored_canvases(items, CANVAS, pool, Resample.FLOAT, store)
        again = cs.stored_canvases(items, CANVAS, pool, Resample.FLOAT, store)
    np.testing.assert_array_equal(first, expected[:2])
    np.testing.assert_array_equal(both, expected)
    np.testing.assert_array_equal(again, expected)
    assert sorted(decoded) == sorted(item.image_id for item in items)  # each decoded once, over three calls
    assert len(list((tmp_path / "canvases").rglob("*.npy"))) == 4
    assert not list((tmp_path / "canvases").rglob("*.tmp"))


def test_a_changed_file_or_canvas_setting_is_decoded_again(tmp_path: Path) -> None:
    items = _films(tmp_path / "films", 1)
    store = cs.canvas_store(tmp_path / "canvases")
    with ThreadPoolExecutor(1) as pool:
        before = cs.stored_canvases(items, CANVAS, pool, Resample.FLOAT, store)
        cv2.imwrite(str(items[0].path), np.full((60, 80), 200, np.uint8))  # another image under the same name
        after = cs.stored_canvases(items, CANVAS, pool, Resample.FLOAT, store)
        other = cs.stored_canvases(items, CANVAS, pool, Resample.UINT8, store)
        np.testing.assert_array_equal(after, load_canvases(items, CANVAS, pool, Resample.FLOAT))
        np.testing.assert_array_equal(other, load_canvases(items, CANVAS, pool, Resample.UINT8))
    assert not np.array_equal(before, after)
    assert len(list((tmp_path / "canvases").rglob("*.npy"))) == 3


def test_films_of_one_name_and_size_in_two_folders_are_two_canvases(tmp_path: Path) -> None:
    # Two demo cohorts name their films alike (demo_s0001_f01.png); compressed films of one size are rare but not
    # impossible, and uncompressed ones of one shape always have one size.
    first, second = tmp_path / "a" / "film.png", tmp_path / "b" / "film.png"
    for path, value in ((first, 50), (second, 200)):
        path.parent.mkdir()
        cv2.imwrite(str(path), np.full((64, 64), value, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 0])
    assert first.stat().st_size == second.stat().st_size
    items = [ImageItem("film.png", first), ImageItem("film.png", second)]
    store = cs.canvas_store(tmp_path / "canvases")
    with ThreadPoolExecutor(1) as pool:
        a = cs.stored_canvases(items[:1], CANVAS, pool, Resample.FLOAT, store)
        b = cs.stored_canvases(items[1:], CANVAS, pool, Resample.FLOAT, store)
    assert a.max() < b.max()  # the second film's own pixels, not the first film's canvas
    assert items[0].fingerprint() != items[1].fingerprint()


def test_an_extraction_from_stored_canvases_writes_the_same_units(tmp_path: Path) -> None:
    items = _films(tmp_path / "films", 5)
    placement = Placement(canvas_size=CANVAS, margin=0.15, base_seed=42)
    conditions = [get_condition(n) for n in ("S8", "iso_blur_8")]
    canvases = cs.canvas_store(tmp_path / "canvases")
    units = {}
    for name, store_canvases in (("decoded", None), ("cold", canvases), ("warm", canvases)):
        store = unit_store(tmp_path / name)
        plan = panel_plan(store, RawPixels(), "toy", items, conditions, placement, chunk_size=2)
        run_extraction([(RawPixels(), plan)], store, progress=False, workers=1, canvases=store_canvases)
        units[name] = [store.path(u.key).read_bytes() for u in plan.units]
    assert units["cold"] == units["decoded"] and units["warm"] == units["decoded"]
