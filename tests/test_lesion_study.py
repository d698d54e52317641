"""The lesion study: design before pixels, pooling at exactly the design's boxes, caching and resume, the probes."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from lesionsignal.analysis import separation, sfdi
from lesionsignal.analysis.lesion_design import LesionDesign, lesion_design, source_design, visible_samples
from lesionsignal.analysis.lesion_probes import Level, fit_problem, fits_frame, paired_tests, study_source
from lesionsignal.analysis.lesions import BoxSample, NegativePlacement, box_level_strata
from lesionsignal.analysis.probe import ProbeConfig
from lesionsignal.core.box import Box, centred_window
from lesionsignal.data.manifest import LesionBox, Manifest, Record
from lesionsignal.features.encoder import load_encoder
from lesionsignal.features.extraction import (
    ExtractionError,
    PooledFeatures,
    box_plan,
    read_features,
    run_extraction,
    unit_store,
)
from lesionsignal.features.pools import EncoderFeatures, RawPixels
from lesionsignal.paper.registry import UMAP_CONDITIONS

CANVAS = 256
CLASSES = ("Nodule", "Mass")
N_IMAGES = 16
TEST_IMAGES = (3, 4, 7, 8, 11, 14)  # nodules: 5 train images, 1 test; masses: 2 train (1, 5), 3 test
MASS_IMAGES = (1, 3, 5, 7, 11)


def _boxes(i: int) -> tuple[LesionBox, ...]:
    """Nodules on every third image, masses on five; image 0 also has a nodule box in the top-left corner."""
    boxes = []
    if i % 3 == 0:
        boxes.append(LesionBox("Nodule", Box(40 + 4 * i, 60 + 3 * i, 52 + 5 * i, 70 + 4 * i)))
    if i in MASS_IMAGES:
        boxes.append(LesionBox("Mass", Box(100, 90 + i, 150 + i, 140 + 2 * i)))
    if i == 0:
        boxes.append(LesionBox("Nodule", Box(0, 0, 6, 6)))
    return tuple(boxes)


def _manifest(folder: Path, write: bool = True) -> Manifest:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS]
    records = []
    for i in range(N_IMAGES):
        path = folder / f"img_{i:02d}.png"
        if write:
            image = 90 + 60 * np.sin(xx / (9 + i)) * np.cos(yy / 13) + rng.normal(0, 8, xx.shape)
            cv2.imwrite(str(path), image.clip(0, 255).astype(np.uint8))
        boxes = _boxes(i)
        labels = tuple((name, int(any(b.label == name for b in boxes))) for name in CLASSES)
        split = "test" if i in TEST_IMAGES else "train"
        records.append(Record(path.name, path, f"p{i}", split, "PA", labels, boxes))
    return Manifest("toy", tuple(records), CLASSES)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return _manifest(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def design(manifest: Manifest) -> LesionDesign:
    return lesion_design(manifest, CLASSES, canvas_size=CANVAS, seed=3)


@pytest.fixture(scope="module")
def tiny_encoder() -> EncoderFeatures:
    torch.set_num_threads(1)
    return EncoderFeatures(load_encoder("demo-dinov2-vit", seed=0), batch_size=4, seed=0)


def _requested(design: LesionDesign, source) -> set[tuple[str, tuple[int, int, int, int]]]:
    chosen = source_design(design, source)
    return {(s.image_id, s.box.as_tuple()) for rows in chosen.samples.values() for s in rows}


def _extracted(features: PooledFeatures) -> set[tuple[str, tuple[int, int, int, int]]]:
    pairs = zip(features.box_image, features.boxes, strict=True)
    return {(str(features.image_ids[owner]), tuple(int(v) for v in box)) for owner, box in pairs}


@dataclass
class Extracted:
    features: PooledFeatures
    units_total: int
    units_cached: int
    images_encoded: int


def _extract(design: LesionDesign, source, work: Path, chunk_size: int = 5, **kwargs):
    """Box-plan extraction through the one engine, as the lesions stage runs it."""
    chosen = source_design(design, source)
    store = unit_store(work)
    plan = box_plan(store, source, design.cohort, design.items, chosen.boxes, CANVAS, chunk_size)
    (report,) = run_extraction([(source, plan)], store, progress=False, **kwargs)
    features = read_features(source, plan.units, store)
    return plan, Extracted(features, report.units_total, report.units_cached, report.images_encoded)


# ------------------------------------------------------------------------------------------------ design


def test_design_is_decided_from_the_manifest_alone_and_deterministic(tmp_path: Path, manifest: Manifest) -> None:
    # No image file exists behind this manifest: the design must not read pixels.
    blind = _manifest(tmp_path, write=False)
    first = lesion_design(blind, CLASSES, canvas_size=CANVAS, seed=3)
    again = lesion_design(manifest, CLASSES, canvas_size=CANVAS, seed=3)
    assert first.samples == again.samples
    other = lesion_design(manifest, CLASSES, canvas_size=CANVAS, seed=4)
    assert other.samples != first.samples
    for name in CLASSES:
        rows = first.samples[name]
        positives = [s for s in rows if s.label == 1]
        assert len(rows) == 3 * len(positives)  # two negatives per positive
        for s in rows:
            source = rows[s.source_box]
            # same size AND position (default placement), from a class-negative image of the same split
            assert s.box == source.box and s.split == source.split
            if s.label == 0:
                assert not any(b.label == name for b in _boxes(int(s.image_id[4:6])))
    uniform = lesion_design(manifest, CLASSES, canvas_size=CANVAS, seed=3, placement=NegativePlacement.UNIFORM)
    moved = [s for s in uniform.samples["Mass"] if s.label == 0]
    assert any(s.box != uniform.samples["Mass"][s.source_box].box for s in moved)
    assert all(s.box.width == uniform.samples["Mass"][s.source_box].box.width for s in moved)


def test_boxes_outside_the_crop_leave_with_their_negatives(design: LesionDesign, tiny_encoder) -> None:
    chosen = source_design(design, tiny_encoder)
    # The demo ViT crops 224 of 256: canvas pixels [16, 240) of 256 survive; the 6 px corner box does not.
    corner = Box(0, 0, 6, 6)
    assert any(s.box == corner for s in design.samples["Nodule"])
    assert not any(s.box == corner for s in chosen.samples["Nodule"])
    dropped = chosen.exclusions.loc[chosen.exclusions["lesion_class"] == "Nodule"]
    assert len(dropped) == 3 and set(dropped["label"]) == {0, 1}
    assert (dropped[["x1", "y1", "x2", "y2"]].to_numpy() == corner.as_tuple()).all()
    kept = chosen.samples["Nodule"]
    assert len(kept) == len(design.samples["Nodule"]) - 3
    for s in kept:
        assert kept[s.source_box].label == 1 and kept[s.source_box].box == s.box
    strata = box_level_strata(kept, "train")  # the renumbered rows still form valid, size-matched strata
    for row in strata.itertuples():
        assert row.stratum == strata.loc[row.source_box, "stratum"]
    pixels = source_design(design, RawPixels())
    assert pixels.exclusions.empty and pixels.samples == design.samples


def test_visible_samples_renumbers_and_drops_unseen_negatives() -> None:
    a, b = Box(0, 0, 4, 4), Box(10, 10, 14, 14)
    rows = [
        BoxSample("p1", "train", "N", a, 1, 0, "p1"),
        BoxSample("n1", "train", "N", a, 0, 0, "n1"),
        BoxSample("p2", "train", "N", b, 1, 2, "p2"),
        BoxSample("n2", "train", "N", b, 0, 2, "n2"),
        BoxSample("n3", "train", "N", Box(20, 20, 24, 24), 0, 2, "n3"),
    ]
    kept, dropped = visible_samples(rows, lambda box: box.x1 != 0 and box.x1 != 20)
    assert [s.image_id for s in kept] == ["p2", "n2"] and [s.source_box for s in kept] == [0, 0]
    assert [s.image_id for s in dropped] == ["p1", "n1", "n3"]


# -------------------------------------------------------------------------------------------- extraction


def test_raw_pixels_pool_at_exactly_the_design_boxes(tmp_path: Path, design: LesionDesign) -> None:
    source = RawPixels()
    _, result = _extract(design, source, tmp_path)
    features = result.features
    assert list(features.image_ids) == [item.image_id for item in design.items]
    assert _extracted(features) == _requested(design, source)
    for item in design.items:
        canvas = cv2.imread(str(item.path), cv2.IMREAD_UNCHANGED)
        small = cv2.resize(canvas, (64, 64), interpolation=cv2.INTER_AREA).reshape(-1) / np.float32(255)
        np.testing.assert_array_equal(features.global_matrix("raw_global", [item.image_id])[0], small)
    rows = [s for name in CLASSES for s in design.samples[name]]
    local = features.local_matrix([(s.image_id, s.box) for s in rows])
    paths = {item.image_id: item.path for item in design.items}
    for sample, vector in zip(rows, local, strict=True):
        canvas = cv2.imread(str(paths[sample.image_id]), cv2.IMREAD_UNCHANGED)
        expected = canvas[centred_window(sample.box, 32, CANVAS)].reshape(-1) / np.float32(255)
        np.testing.assert_array_equal(vector, expected)
    with pytest.raises(ExtractionError, match="was not extracted"):
        features.local_matrix([(rows[0].image_id, Box(1, 2, 3, 4))])


def test_encoder_pools_match_a_brute_force_pool(tmp_path: Path, design: LesionDesign, tiny_encoder) -> None:
    _, result = _extract(design, tiny_encoder, tmp_path, chunk_size=6)
    features = result.features
    assert _extracted(features) == _requested(design, tiny_encoder)
    geometry = tiny_encoder.spec.geometry
    for row, item in enumerate(design.items):
        canvas = cv2.imread(str(item.path), cv2.IMREAD_UNCHANGED)
        out = tiny_encoder.encoder.encode(canvas[None])
        tokens = out.patch_tokens[0].numpy()
        np.testing.assert_allclose(features.global_pools["cls"][row], out.global_vec[0].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(features.global_pools["patch_mean"][row], tokens.mean(axis=(0, 1)), atol=1e-5)
        for k in np.flatnonzero(features.box_image == row):
            box = tuple(int(v) for v in features.boxes[k])
            cells = geometry.token_mask(box, canvas=CANVAS)
            np.testing.assert_allclose(features.local[k], tokens[cells].mean(axis=0), rtol=1e-5, atol=1e-5)
            assert not np.allclose(features.local[k], tokens.mean(axis=(0, 1)), atol=1e-3)  # not the patch mean


def test_units_are_cached_resumed_and_byte_identical(tmp_path: Path, design: LesionDesign) -> None:
    source = RawPixels()
    plan, whole = _extract(design, source, tmp_path / "whole")
    whole_bytes = [unit_store(tmp_path / "whole").path(u.key).read_bytes() for u in plan.units]
    assert whole.units_cached == 0 and whole.images_encoded == N_IMAGES

    class Interrupt(Exception):
        pass

    done: list[int] = []

    def stop_after_two(unit) -> None:
        done.append(unit.index)
        if len(done) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        _extract(design, source, tmp_path / "resumed", on_unit_done=stop_after_two)
    _, resumed = _extract(design, source, tmp_path / "resumed")
    assert resumed.units_cached == 2 and resumed.images_encoded == N_IMAGES - 10
    assert [unit_store(tmp_path / "resumed").path(u.key).read_bytes() for u in plan.units] == whole_bytes
    _, again = _extract(design, source, tmp_path / "resumed")
    assert again.units_cached == again.units_total and again.images_encoded == 0
    np.testing.assert_array_equal(again.features.local, whole.features.local)


def test_unit_keys_follow_the_box_lists(design: LesionDesign) -> None:
    source = RawPixels()
    store = unit_store(Path("unused"))
    boxes = list(source_design(design, source).boxes)
    plan = box_plan(store, source, "toy", design.items, boxes, CANVAS, chunk_size=5)
    boxes[7] = (*boxes[7], Box(1, 1, 9, 9))
    changed = box_plan(store, source, "toy", design.items, boxes, CANVAS, chunk_size=5)
    assert [a.key == b.key for a, b in zip(plan.units, changed.units, strict=True)] == [True, False, True, True]
    with pytest.raises(ExtractionError, match="box lists"):
        box_plan(store, source, "toy", design.items, boxes[:-1], CANVAS)


# ------------------------------------------------------------------------------------------------ probes


def _features_with_signal(design: LesionDesign, signal: float = 6.0, seed: int = 0) -> PooledFeatures:
    """Noise globals; local vectors that carry the label in their first column (boxes of the design only)."""
    rng = np.random.default_rng(seed)
    ids = np.asarray([item.image_id for item in design.items])
    labels = {}
    for name in CLASSES:
        for s in design.samples[name]:
            labels[(s.image_id, s.box.as_tuple())] = s.label
    keys = sorted(labels)
    local = rng.normal(size=(len(keys), 5)).astype(np.float32)
    local[:, 0] += signal * np.asarray([labels[k] for k in keys], dtype=np.float32)
    position = {str(i): row for row, i in enumerate(ids)}
    return PooledFeatures(
        source_id="toy",
        image_ids=ids,
        global_pools={"cls": rng.normal(size=(len(ids), 5)), "patch_mean": rng.normal(size=(len(ids), 5))},
        local_name="patch_local",
        local=local,
        box_image=np.asarray([position[k[0]] for k in keys]),
        boxes=np.asarray([k[1] for k in keys]),
    )


def test_study_source_probes_every_pool_and_paired_test_uses_shared_resamples(design: LesionDesign) -> None:
    features = _features_with_signal(design)
    chosen = source_design(design, RawPixels())
    config = ProbeConfig(c_grid=(0.1, 1.0), folds=2, seed=42)
    fits, skipped = study_source(design, chosen, features, model="toy", config=config, n_boot=50)
    frame = fits_frame(fits)
    box = frame.loc[frame["level"] == "box"].set_index(["lesion_class", "pool"])
    assert set(box.index.get_level_values("pool")) == {"cls", "patch_mean", "patch_local"}
    image = frame.loc[frame["level"] == "image"]
    assert set(image["pool"]) == {"cls", "patch_mean"}
    mass = box.loc["Mass"]
    # two training masses only, yet the signal is strong: the local pool finds it, the noise globals do not
    assert mass.loc["patch_local", "auc"] >= 0.9 > mass.loc["cls", "auc"]
    assert mass.loc["patch_local", "n_test"] == mass.loc["cls", "n_test"] == 9  # 3 test masses, 2 negatives each
    # Nodule has one test positive only: probed, but without strata, and the table says why
    nodule = box.loc["Nodule"]
    assert nodule["gap"].isna().all() and nodule["strata_note"].str.contains("no large stratum").all()
    assert not skipped
    tests = paired_tests(fits, n_boot=200, seed=1)
    assert list(tests["lesion_class"]) == ["Nodule", "Mass"]
    row = tests.set_index("lesion_class").loc["Mass"]
    assert row["delta"] == pytest.approx(row["auc_patch_local"] - row["auc_cls"])
    assert row["ci_low"] <= row["delta"] <= row["ci_high"]
    assert (tests["q_bh"] >= tests["p"]).all()
    identical = [replace(f, pool="patch_local") if f.pool == "cls" else f for f in fits if f.pool != "patch_local"]
    same = paired_tests(identical, n_boot=100)
    assert (same["delta"] == 0).all() and (same["ci_low"] == 0).all() and (same["ci_high"] == 0).all()


def test_a_class_without_enough_training_groups_is_skipped_with_its_reason(design: LesionDesign) -> None:
    features = _features_with_signal(design)
    chosen = source_design(design, RawPixels())
    config = ProbeConfig(c_grid=(1.0,), folds=3, seed=42)
    fits, skipped = study_source(design, chosen, features, model="toy", config=config, n_boot=20)
    reasons = {(s.lesion_class, s.level): s.reason for s in skipped}
    # only 2 training images (1 and 5) have a mass: fewer than the 3 folds, at both levels
    assert "fewer than the 3 CV folds" in reasons[("Mass", Level.IMAGE)]
    assert "fewer than the 3 CV folds" in reasons[("Mass", Level.BOX)]
    assert {(f.lesion_class, f.level) for f in fits} == {("Nodule", Level.IMAGE), ("Nodule", Level.BOX)}


def test_fit_problem_names_the_missing_rows() -> None:
    y = np.array([0, 0, 1, 1])
    assert fit_problem(y, np.array(["a", "b", "c", "d"]), np.array([0, 1]), 2) == ""
    assert "positive rows come from 1 group" in fit_problem(y, np.array(["a", "b", "c", "c"]), np.array([0, 1]), 2)
    assert "test split: no positive rows" in fit_problem(y, np.array(["a", "b", "c", "d"]), np.array([0, 0]), 2)


# ------------------------------------------------------------------- summaries of sections 05 (SFDI) and 06


def _aucs(values: dict[tuple[str, str, str, str], float]) -> pd.DataFrame:
    rows = [(m, d, p, c, auc) for (m, d, p, c), auc in values.items()]
    return pd.DataFrame(rows, columns=["model", "dataset", "pool", "perturbation", "auc"])


def test_sfdi_over_a_partial_panel_says_so_and_uses_only_what_is_there() -> None:
    coverage = sfdi.panel_coverage(("C1", "C2", "S8"), ["S8", "C1", "iso_blur_8"])
    assert coverage.present == ("C1", "S8") and coverage.missing == ("C2",) and not coverage.complete
    assert "PARTIAL" in coverage.label and "C2" in coverage.label
    assert sfdi.panel_coverage(("C1",), ["C1"]).label.startswith("full panel")
    frame = _aucs({("m", "d", "cls", "C1"): 0.9, ("m", "d", "cls", "S8"): 0.4, ("m", "d", "cls", "iso_blur_8"): 0.7})
    table = sfdi.sfdi_report(frame, coverage, by=("model", "dataset", "pool"))
    assert table.loc[0, "sfdi"] == pytest.approx(math.sqrt(0.9 * 0.5)) and set(table["panel"]) == {"2/3"}
    with pytest.raises(sfdi.SfdiError, match="none of the panel"):
        sfdi.sfdi_report(frame, sfdi.panel_coverage(("C2",), ["C1"]))


def test_recovery_is_the_mean_local_minus_cls_gap_with_dataset_means() -> None:
    values = {}
    for dataset, shift in (("a", 0.0), ("b", 0.1)):
        values.update({("m", dataset, "cls", "C1"): 0.5, ("m", dataset, "patch_local", "C1"): 0.9 + shift / 2})
        values.update({("m", dataset, "cls", "S8"): 0.6, ("m", dataset, "patch_local", "S8"): 0.7 + shift / 2})
    table = sfdi.recovery_table(_aucs(values), ("C1", "S8")).set_index("dataset")
    assert table.loc["a", "recovery"] == pytest.approx((0.4 + 0.1) / 2)
    assert table.loc["b", "recovery"] == pytest.approx((0.45 + 0.15) / 2)
    assert table.loc["mean", "recovery"] == pytest.approx(0.275) and table.loc["mean", "n_datasets"] == 2
    del values[("m", "b", "patch_local", "S8")]
    with pytest.raises(sfdi.SfdiError, match="'dataset': 'b'"):
        sfdi.recovery_table(_aucs(values), ("C1", "S8"))


def test_umap_conditions_default_pair_and_absent_requests() -> None:
    pair = ("S8", "ground_glass_64")
    assert pair == UMAP_CONDITIONS
    assert separation.umap_conditions((), ["C1", "S8", "ground_glass_64"], pair) == (pair, ())
    assert separation.umap_conditions((), ["C1", "C2"], pair) == (("C1",), ())
    assert separation.umap_conditions(("C2", "L4"), ["C2"], pair) == (("C2",), ("L4",))


def test_separation_rows_and_their_rank_agreement_with_aucs() -> None:
    rng = np.random.default_rng(0)
    rows, aucs = [], {}
    for k, shift in enumerate((0.0, 0.5, 1.0, 2.0)):
        clean = rng.normal(size=(60, 4)) + 3.0
        perturbed = rng.normal(size=(60, 4)) + 3.0 + shift
        labels = {"model": "m", "dataset": "d", "pool": "cls", "perturbation": f"c{k}"}
        row = separation.separation_row(labels, clean, perturbed, max_points=100, seed=1, shrink=0.1)
        assert row == separation.separation_row(labels, clean, perturbed, max_points=100, seed=1, shrink=0.1)
        rows.append(row)
        aucs[("m", "d", "cls", f"c{k}")] = 0.5 + 0.1 * k
    frame = pd.DataFrame(rows)
    assert list(frame["n"]) == [120] * 4 and frame["mahalanobis"].is_monotonic_increasing
    agreement = separation.rank_agreement_table(frame, _aucs(aucs)).set_index(["scope", "measure"])
    assert agreement.loc[("all pools", "mahalanobis"), "spearman_rho"] == pytest.approx(1.0)
    assert agreement.loc[("pool cls", "silhouette"), "n_cells"] == 4
    few = separation.rank_agreement_table(frame.iloc[:2], _aucs(aucs))
    assert few["spearman_rho"].isna().all() and few["note"].str.contains("at least 3").all()
    with pytest.raises(separation.SeparationError, match="no probe AUC"):
        separation.rank_agreement_table(frame, _aucs(dict(list(aucs.items())[:3])))
    with pytest.raises(separation.SeparationError, match="perturbation=c9"):
        bad = {**labels, "perturbation": "c9"}
        separation.separation_row(bad, np.zeros((5, 4)), np.ones((5, 4)), max_points=10, seed=1, shrink=0.1)
