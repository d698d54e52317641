"""The natural-lesion reporting beyond the paper: detectable differences, size strata at any percentiles, box jitter
of the patch-local probe, and the official split beside a patient-disjoint re-split."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from lesionsignal.analysis.box_jitter import (
    DRAWS_PER_BOX,
    jitter_box,
    jitter_draws,
    jitter_fits,
    jitter_frame,
    jitter_plan,
    jittered_samples,
    patch_pixels,
)
from lesionsignal.analysis.lesion_design import LesionDesign, lesion_design, source_design
from lesionsignal.analysis.lesion_probes import Level, fits_frame, study_source
from lesionsignal.analysis.lesion_reporting import operating_tables, size_strata_tables
from lesionsignal.analysis.lesions import BoxSample, assign_strata, box_level_strata, stratum_auc
from lesionsignal.analysis.operating_points import OperatingSettings
from lesionsignal.analysis.power import PowerSettings, detectable_gap, detectable_vs_chance, hanley_mcneil_variance
from lesionsignal.analysis.probe import ProbeConfig
from lesionsignal.analysis.size_strata import SHARED, StrataRows, StrataScheme, cut_values, scheme_strata, stratum_of
from lesionsignal.analysis.split_comparison import compare_splits
from lesionsignal.analysis.stats import auc
from lesionsignal.config.params import (
    Analysis,
    CohortKind,
    CohortParams,
    ExtractionParams,
    LesionParams,
    OperatingPointParams,
    PanelParams,
    Params,
    Paths,
    ProbeParams,
)
from lesionsignal.core.box import Box
from lesionsignal.core.kinds import RunKind
from lesionsignal.data.chestxdet10 import DetSplit, patient_disjoint_manifest, read_chestxdet10
from lesionsignal.data.manifest import LesionBox, Manifest, ManifestError, PatientIds, Record, SplitPolicy
from lesionsignal.data.validation import mixed_patients
from lesionsignal.features.encoder import load_encoder
from lesionsignal.features.extraction import (
    ExtractionError,
    PooledFeatures,
    box_plan,
    read_features,
    run_extraction,
    unit_store,
    with_local,
)
from lesionsignal.features.pools import EncoderFeatures, RawPixels
from lesionsignal.pipeline.catalog import Catalog
from lesionsignal.pipeline.lesions import (
    JITTER,
    SPLIT_COMPARISON,
    SPLITS_ANALYSED,
    Collected,
    Settings,
    SourceWork,
    analyse_cohort,
    plan_cohort,
    second_pass_boxes,
)
from lesionsignal.pipeline.stage import Run

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realdata" / "chestx-det10"
CANVAS = 256
CLASSES = ("Nodule",)
POWER = PowerSettings(alpha=0.05, power=0.8)
CONFIG = ProbeConfig(c_grid=(0.1, 1.0), folds=2, seed=42)


# ------------------------------------------------------------------------------------------------ power


def _binormal(rng: np.random.Generator, true_auc: float, n_pos: int, n_neg: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-variance normal scores whose AUC is ``true_auc`` (separation sqrt(2) Phi^-1(AUC))."""
    shift = np.sqrt(2) * norm.ppf(true_auc)
    return np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int), np.r_[
        rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)
    ]


def test_hanley_mcneil_at_chance_is_the_mann_whitney_null_variance() -> None:
    for n_pos, n_neg in ((5, 7), (30, 60), (200, 400)):
        assert hanley_mcneil_variance(0.5, n_pos, n_neg) == pytest.approx((n_pos + n_neg + 1) / (12 * n_pos * n_neg))
    assert hanley_mcneil_variance(1.0, 10, 10) == 0.0


def test_detectable_differences_shrink_with_more_lesions_and_vanish_with_too_few() -> None:
    sizes = [(10, 20), (30, 60), (100, 200), (400, 800)]
    chance = [detectable_vs_chance(p, n, POWER) for p, n in sizes]
    gaps = [detectable_gap((p, n), (p, n), 0.75, POWER) for p, n in sizes]
    assert chance == sorted(chance, reverse=True) and gaps == sorted(gaps, reverse=True)
    assert np.isnan(detectable_gap((2, 4), (2, 4), 0.75, POWER))  # no gap inside [0, 1] is detectable
    # halving alpha or raising the power asks for a larger difference
    assert detectable_vs_chance(30, 60, PowerSettings(0.01, 0.8)) > chance[1]
    assert detectable_vs_chance(30, 60, PowerSettings(0.05, 0.9)) > chance[1]


def test_power_at_the_detectable_difference_matches_a_simulation() -> None:
    """At the MDD, a two-sided z-test (Hanley-McNeil standard errors) should reject about 80 % of the time."""
    rng = np.random.default_rng(2026)
    n_pos, n_neg, runs = 30, 60, 1500
    versus_chance = detectable_vs_chance(n_pos, n_neg, POWER)
    null_se = np.sqrt(hanley_mcneil_variance(0.5, n_pos, n_neg))
    hits = sum(
        abs(auc(*_binormal(rng, 0.5 + versus_chance, n_pos, n_neg)) - 0.5) / null_se > POWER.z_alpha
        for _ in range(runs)
    )
    assert hits / runs == pytest.approx(POWER.power, abs=0.05)
    gap = detectable_gap((n_pos, n_neg), (n_pos, n_neg), 0.75, POWER)
    hits = 0
    for _ in range(runs):
        low = auc(*_binormal(rng, 0.75 - gap / 2, n_pos, n_neg))
        high = auc(*_binormal(rng, 0.75 + gap / 2, n_pos, n_neg))
        se = np.sqrt(hanley_mcneil_variance(low, n_pos, n_neg) + hanley_mcneil_variance(high, n_pos, n_neg))
        hits += abs(high - low) / se > POWER.z_alpha
    assert hits / runs == pytest.approx(POWER.power, abs=0.06)
    # and at half the detectable gap the same test misses far more often
    hits = 0
    for _ in range(runs):
        low = auc(*_binormal(rng, 0.75 - gap / 4, n_pos, n_neg))
        high = auc(*_binormal(rng, 0.75 + gap / 4, n_pos, n_neg))
        se = np.sqrt(hanley_mcneil_variance(low, n_pos, n_neg) + hanley_mcneil_variance(high, n_pos, n_neg))
        hits += abs(high - low) / se > POWER.z_alpha
    assert hits / runs < 0.45


# ------------------------------------------------------------------------------------------- size strata


def test_schemes_name_their_cuts_and_put_ties_in_the_lower_stratum() -> None:
    assert [StrataScheme(c).name for c in ((0.5,), (1 / 3,), (2 / 3,), (1 / 3, 2 / 3))] == [
        "median",
        "p33",
        "p67",
        "p33-p67",
    ]
    areas = np.arange(1.0, 10.0)  # terciles of 1..9 fall at 3.67 and 6.33
    cuts = cut_values(areas, StrataScheme((1 / 3, 2 / 3)))
    assert list(stratum_of(areas, cuts)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    tied = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
    assert list(stratum_of(tied, cut_values(tied, StrataScheme((0.5,))))) == [0, 0, 0, 0, 1]  # the median is 2


def _image_rows(rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(40)],
            "split": "test",
            "label": [1] * 16 + [0] * 24,
            "area": [float(a) for a in rng.integers(20, 900, 16)] + [np.nan] * 24,
        }
    )
    return frame, rng.normal(size=40) + frame["label"].to_numpy()


def test_the_median_scheme_reproduces_the_median_strata_at_image_and_box_level() -> None:
    rng = np.random.default_rng(5)
    frame, scores = _image_rows(rng)
    expected = stratum_auc(frame["label"], scores, assign_strata(frame)["stratum"])
    labels = frame["label"].to_numpy()
    rows = StrataRows(labels, scores, frame["area"].to_numpy(), np.where(labels == 1, np.arange(40), SHARED))
    table, gap = scheme_strata(rows, StrataScheme((0.5,)), POWER, n_boot=50, seed=1)
    assert list(table["auc"]) == [expected["small"], expected["large"]] and gap["gap"] == expected["gap"]
    assert list(table["n_negative"]) == [24, 24]  # image level: every negative in every stratum
    # box level: each negative follows the positive it was drawn for
    samples = []
    for k in range(12):
        box = Box(0, 0, 4 + 3 * k, 4 + (7 * k) % 11)
        own = len(samples)
        samples += [BoxSample(f"p{k}", "test", "N", box, 1, own, f"p{k}")]
        samples += [BoxSample(f"n{k}{j}", "test", "N", box, 0, own, f"n{k}{j}") for j in range(2)]
    strata = box_level_strata(samples)
    box_scores = rng.normal(size=len(samples)) + strata["label"].to_numpy()
    expected = stratum_auc(strata["label"], box_scores, strata["stratum"])
    box_labels = strata["label"].to_numpy()
    areas = np.where(box_labels == 1, strata["area"].to_numpy(), np.nan)
    rows = StrataRows(box_labels, box_scores, areas, strata["source_box"].to_numpy())
    table, gap = scheme_strata(rows, StrataScheme((0.5,)), POWER, n_boot=50, seed=1)
    assert list(table["auc"]) == [expected["small"], expected["large"]]
    assert list(table["n_positive"] * 2) == list(table["n_negative"])  # two size-matched negatives each


def test_tercile_strata_count_their_rows_and_say_what_they_can_detect() -> None:
    rng = np.random.default_rng(6)
    frame, scores = _image_rows(rng)
    labels = frame["label"].to_numpy()
    rows = StrataRows(labels, scores, frame["area"].to_numpy(), np.where(labels == 1, np.arange(40), SHARED))
    table, gap = scheme_strata(rows, StrataScheme((1 / 3, 2 / 3)), POWER, n_boot=50, seed=1)
    assert list(table["stratum"]) == ["1 of 3", "2 of 3", "3 of 3"] and table["n_positive"].sum() == 16
    assert (table["area_high"].iloc[:-1].to_numpy() < table["area_low"].iloc[1:].to_numpy()).all()
    for row in table.itertuples():
        assert row.detectable_vs_chance == pytest.approx(detectable_vs_chance(row.n_positive, 24, POWER))
    counts = [(int(table["n_positive"].iloc[i]), 24) for i in (0, -1)]
    assert gap["detectable_gap"] == pytest.approx(
        detectable_gap(*counts, min(max(auc(labels, scores), 0.5), 0.99), POWER), nan_ok=True
    )
    assert gap["supported"] == (abs(gap["gap"]) >= gap["detectable_gap"])


# ------------------------------------------------------------------------------- a design with features


def _manifest(patients: dict[int, str] | None = None, folder: Path | None = None) -> Manifest:
    """24 images, a nodule on every even one, a quarter in test; with ``folder``, the images are written there."""
    records = []
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS]
    for i in range(24):
        boxes = (LesionBox("Nodule", Box(40 + 3 * i, 50 + 2 * i, 60 + 4 * i, 66 + 3 * i)),) if i % 2 == 0 else ()
        split = "test" if i % 4 in (2, 3) else "train"
        patient = (patients or {}).get(i, f"p{i}")
        labels = (("Nodule", int(bool(boxes))),)
        path = Path(f"img_{i:02d}.png") if folder is None else folder / f"img_{i:02d}.png"
        if folder is not None:
            image = 90 + 50 * np.sin(xx / (7 + i)) * np.cos(yy / 11) + rng.normal(0, 6, xx.shape)
            for box in boxes:
                image[box.box.slices()] += 60  # a bright lesion the encoder may or may not keep
            cv2.imwrite(str(path), image.clip(0, 255).astype(np.uint8))
        records.append(Record(path.name, path, patient, split, "PA", labels, boxes))
    return Manifest("toy", tuple(records), CLASSES)


def _vector(image_id: str, box: Box, lesions: dict[str, Box]) -> np.ndarray:
    """A local vector that carries how much of the image's lesion the box covers, plus noise fixed by the box."""
    seed = int(hashlib.sha256(f"{image_id}{box.as_tuple()}".encode()).hexdigest()[:8], 16)
    noise = np.random.default_rng(seed).normal(size=4)
    lesion = lesions.get(image_id)
    if lesion is None:
        return noise
    width = max(0, min(box.x2, lesion.x2) - max(box.x1, lesion.x1))
    height = max(0, min(box.y2, lesion.y2) - max(box.y1, lesion.y1))
    noise[0] += 4.0 * width * height / lesion.area
    return noise


def _features(design: LesionDesign, wanted: dict[str, set[Box]]) -> PooledFeatures:
    lesions = {img.image_id: img.boxes[0][1] for img in design.images if img.boxes}
    ids = np.asarray([item.image_id for item in design.items])
    keys = sorted((image_id, box.as_tuple()) for image_id, boxes in wanted.items() for box in boxes)
    rng = np.random.default_rng(0)
    row = {str(i): k for k, i in enumerate(ids)}
    return PooledFeatures(
        source_id="toy",
        image_ids=ids,
        global_pools={"cls": rng.normal(size=(len(ids), 4)), "patch_mean": rng.normal(size=(len(ids), 4))},
        local_name="patch_local",
        local=np.stack([_vector(i, Box(*b), lesions) for i, b in keys]).astype(np.float32),
        box_image=np.asarray([row[i] for i, _ in keys]),
        boxes=np.asarray([b for _, b in keys]),
    )


def _design_boxes(design: LesionDesign) -> dict[str, set[Box]]:
    wanted: dict[str, set[Box]] = {}
    for rows in design.samples.values():
        for sample in rows:
            wanted.setdefault(sample.image_id, set()).add(sample.box)
    return wanted


# ------------------------------------------------------------------------------------------------ jitter


def test_jitter_moves_boxes_within_bounds_and_zero_moves_nothing() -> None:
    box = Box(100, 80, 130, 100)
    rng = np.random.default_rng(0)
    for draw in rng.uniform(-1, 1, size=(200, DRAWS_PER_BOX)):
        assert jitter_box(box, draw, 0.0, CANVAS) == box
        for pixels in (8.0, 16.0, 32.0):
            moved = jitter_box(box, draw, pixels, CANVAS)
            assert 0 <= moved.x1 < moved.x2 <= CANVAS and 0 <= moved.y1 < moved.y2 <= CANVAS
            assert abs(moved.width - box.width) <= pixels + 1 and abs(moved.height - box.height) <= pixels + 1
            centre_shift = abs((moved.x1 + moved.x2) / 2 - (box.x1 + box.x2) / 2)
            assert centre_shift <= 1.5 * pixels + 1  # half the size change, plus the draw's own shift
    corner = jitter_box(Box(0, 0, 10, 10), np.array([-1.0, -1.0, 0.0, 0.0]), 32.0, CANVAS)
    assert corner == Box(0, 0, 10, 10)  # shifted back onto the canvas, never shrunk
    assert patch_pixels(28, 448, 1024) == 64.0 and patch_pixels(14, 518, 1024) == pytest.approx(27.675675)


def test_a_positive_and_its_negatives_move_alike_and_draws_do_not_depend_on_the_level() -> None:
    design = lesion_design(_manifest(), CLASSES, canvas_size=CANVAS, seed=3)
    draws = jitter_draws(design.samples, seed=11)
    again = jitter_draws(design.samples, seed=11)
    assert draws["Nodule"].keys() == again["Nodule"].keys()
    assert all(np.array_equal(draws["Nodule"][k], again["Nodule"][k]) for k in draws["Nodule"])
    rows = design.samples["Nodule"]
    half, double = (jittered_samples(rows, draws["Nodule"], p, CANVAS) for p in (8.0, 32.0))
    for original, a, b in zip(rows, half, double, strict=True):
        positive = rows[original.source_box]
        assert a.box == half[original.source_box].box  # same-position negatives keep their positive's box
        assert a.label == original.label and a.image_id == original.image_id
        draw = draws["Nodule"][(positive.image_id, positive.box.as_tuple())]
        assert b.box == jitter_box(original.box, draw, 32.0, CANVAS)
    assert jittered_samples(rows, draws["Nodule"], 0.0, CANVAS) == list(rows)


def test_jitter_zero_is_the_unjittered_patch_local_probe_exactly() -> None:
    design = lesion_design(_manifest(), CLASSES, canvas_size=CANVAS, seed=3)
    chosen = source_design(design, RawPixels())
    draws = jitter_draws(design.samples, seed=5)
    plan = jitter_plan(chosen.samples, draws, (0.0, 0.5, 2.0), 16.0, CANVAS, lambda box: True)
    wanted = _design_boxes(design)
    for image_id, boxes in plan.boxes_by_image().items():
        wanted.setdefault(image_id, set()).update(boxes)
    features = _features(design, wanted)
    fits, skipped = jitter_fits(plan, features, model="toy", config=CONFIG, n_boot=50)
    assert not skipped
    unjittered, _ = study_source(design, chosen, features, model="toy", config=CONFIG, n_boot=50)
    (local,) = [f for f in unjittered if f.level is Level.BOX and f.pool == "patch_local"]
    zero = fits[(0.0, "Nodule")]
    assert (zero.auc, zero.ci_low, zero.ci_high, zero.best_c) == (local.auc, local.ci_low, local.ci_high, local.best_c)
    assert np.array_equal(zero.test_scores, local.test_scores) and np.array_equal(zero.train_scores, local.train_scores)
    moved = fits[(2.0, "Nodule")]
    assert not np.array_equal(moved.test_scores, local.test_scores)  # the jittered boxes pool other vectors
    frame = jitter_frame(plan, fits)
    assert list(frame["jitter"]) == [0.0, 0.5, 2.0] and list(frame["jitter_px"]) == [0.0, 8.0, 32.0]
    assert (frame["rows_dropped"] == 0).all() and (frame["pool"] == "patch_local").all()


def test_lesion_fits_report_operating_points_and_strata_of_every_scheme() -> None:
    design = lesion_design(_manifest(), CLASSES, canvas_size=CANVAS, seed=3)
    chosen = source_design(design, RawPixels())
    features = _features(design, _design_boxes(design))
    fits, _ = study_source(design, chosen, features, model="toy", config=CONFIG, n_boot=50)
    points, gaps = operating_tables(fits, OperatingSettings(n_boot=50))
    assert len(points) == 2 * len(fits) and set(points["level"]) == {"image", "box"}
    assert list(gaps["target_specificity"]) == [0.9, 0.95] and (gaps["level"] == "box").all()
    schemes = [StrataScheme(c) for c in ((0.5,), (1 / 3, 2 / 3))]
    strata, strata_gaps = size_strata_tables(fits, schemes, POWER, 50, 1)
    assert len(strata) == len(fits) * 5 and len(strata_gaps) == len(fits) * 2
    median = strata.loc[(strata["scheme"] == "median") & (strata["level"] == "box") & (strata["pool"] == "cls")]
    (fit,) = [f for f in fits if f.level is Level.BOX and f.pool == "cls"]
    assert list(median["auc"]) == [fit.strata["small"], fit.strata["large"]]


# ------------------------------------------------------------------------------------ the two splits


def test_the_patient_disjoint_resplit_shares_no_patient() -> None:
    # patients cross: p0 has images 0 (train) and 2 (test); p1 has 1 (train) and 3 (test); p5 images 5 and 6
    patients = {2: "p0", 3: "p1", 6: "p5", 7: "p5"}
    crossing = _manifest(patients=patients)
    crossing = replace(crossing, split_policy=SplitPolicy.OVERLAP_REPORTED)
    assert mixed_patients([r.patient_id for r in crossing.records], [r.split for r in crossing.records])
    resplit = patient_disjoint_manifest(crossing, seed=4)
    assert resplit.split_policy is SplitPolicy.PATIENT_DISJOINT
    assert not mixed_patients([r.patient_id for r in resplit.records], [r.split for r in resplit.records])
    assert [r.image_id for r in resplit.records] == [r.image_id for r in crossing.records]
    moved = {r.patient_id for r, s in zip(crossing.records, resplit.records, strict=True) if r.split != s.split}
    assert moved <= {"p0", "p1", "p5"}  # only the patients who crossed may move
    with pytest.raises(ManifestError, match="patient ids"):
        patient_disjoint_manifest(replace(crossing, patient_ids=PatientIds.PER_IMAGE), seed=4)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"no public metadata files at {REAL}")
def test_the_resplit_of_the_real_official_split_is_the_readers_patient_disjoint_split(tmp_path: Path) -> None:
    import json

    first = (REAL / "train_v20200617.json", REAL / "test_v20200617.json")
    for path in first:
        for record in json.loads(path.read_text()):
            (tmp_path / record["file_name"]).touch()
    official = read_chestxdet10(*first, [tmp_path])
    assert len(mixed_patients([r.patient_id for r in official.records], [r.split for r in official.records])) == 271
    resplit = patient_disjoint_manifest(official, seed=42)
    read = read_chestxdet10(*first, [tmp_path], split=DetSplit.PATIENT_DISJOINT, seed=42)
    assert [r.split for r in resplit.records] == [r.split for r in read.records]
    assert not mixed_patients([r.patient_id for r in resplit.records], [r.split for r in resplit.records])
    assert sum(r.split == "test" for r in resplit.records) in (541, 542)


def test_compare_splits_sets_each_probe_beside_itself_on_the_other_split() -> None:
    patients = {2: "p0", 3: "p1", 6: "p5", 7: "p5", 10: "p8", 11: "p9"}
    crossing = replace(_manifest(patients=patients), split_policy=SplitPolicy.OVERLAP_REPORTED)
    resplit = patient_disjoint_manifest(crossing, seed=1)
    designs = [lesion_design(m, CLASSES, canvas_size=CANVAS, seed=3) for m in (crossing, resplit)]
    wanted = _design_boxes(designs[0])
    for image_id, boxes in _design_boxes(designs[1]).items():
        wanted.setdefault(image_id, set()).update(boxes)
    features = _features(designs[0], wanted)
    official, _ = study_source(
        designs[0], source_design(designs[0], RawPixels()), features, model="toy", config=CONFIG, n_boot=50
    )
    other, _ = study_source(
        designs[1], source_design(designs[1], RawPixels()), features, model="toy", config=CONFIG, n_boot=50
    )
    table = compare_splits(official, other, n_boot=100, seed=2)
    assert len(table) == len(official)
    for row, fit in zip(table.itertuples(), official, strict=True):
        match = next(f for f in other if (f.lesion_class, f.level, f.pool) == (fit.lesion_class, fit.level, fit.pool))
        assert row.auc_difference == pytest.approx(match.auc - fit.auc)
        assert row.auc_difference_low <= row.auc_difference_high
    same = compare_splits(official, official, n_boot=100, seed=2)
    assert (same["auc_difference"] == 0).all()
    assert ((same["auc_difference_low"] <= 0) & (same["auc_difference_high"] >= 0)).all()


# ------------------------------------------------------------------------------------- the second pass


def test_the_second_pass_adds_only_new_boxes_and_never_changes_a_first_pass_row() -> None:
    design = lesion_design(_manifest(), CLASSES, canvas_size=CANVAS, seed=3)
    chosen = source_design(design, RawPixels())
    plan = jitter_plan(chosen.samples, jitter_draws(design.samples, 5), (0.0, 1.0), 16.0, CANVAS, lambda b: True)
    extra = second_pass_boxes(design, SourceWork(chosen, plan, None))
    first = {item.image_id: set(boxes) for item, boxes in zip(design.items, chosen.boxes, strict=True)}
    wanted = plan.boxes_by_image()
    for image_id, boxes in wanted.items():
        assert set(extra.get(image_id, ())) == boxes - first.get(image_id, set())
    base = _features(design, _design_boxes(design))
    more_boxes = {image_id: set(boxes) for image_id, boxes in extra.items()}
    more_boxes[next(iter(first))] |= first[next(iter(first))]  # one box both passes hold
    more = _features(design, more_boxes)
    more = replace(more, local=more.local + 100.0)  # so a row taken from the second pass would show
    joined = with_local(base, more)
    rows = [(i, b) for i, boxes in first.items() for b in boxes]
    assert np.array_equal(joined.local_matrix(rows), base.local_matrix(rows))
    added = [(i, b) for i, boxes in extra.items() for b in boxes]
    assert np.array_equal(joined.local_matrix(added), more.local_matrix(added))
    assert joined.global_pools is base.global_pools
    stranger = replace(more, image_ids=np.asarray([f"x{k}" for k in range(len(more.image_ids))]))
    with pytest.raises(ExtractionError, match="without global pools"):
        with_local(base, stranger)


# ----------------------------------------------------------------------- the stage, end to end on one cohort


def test_the_lesion_stage_runs_jitter_and_the_resplit_without_touching_the_first_pass(tmp_path: Path) -> None:
    patients = {2: "p0", 3: "p1", 6: "p4", 7: "p5", 10: "p8", 15: "p13"}  # six patients on both sides
    records = replace(_manifest(patients, tmp_path), split_policy=SplitPolicy.OVERLAP_REPORTED)
    cohort = CohortParams(
        "toy", CohortKind.CHESTXDET10, uses=(Analysis.LESIONS,), train_json=Path("t.json"),
        test_json=Path("s.json"), image_dirs=(tmp_path,), seed=1,
    )  # fmt: skip
    params = Params(
        name="toy",
        run=RunKind.SMOKE,
        paths=Paths(cache=tmp_path / "cache", work=tmp_path / "work"),
        panel=PanelParams(canvas_size=CANVAS),
        cohorts=(cohort,),
        extraction=ExtractionParams(device="cpu", workers=1, chunk_size=8, canvas_store=False),
        probe=ProbeParams(c_grid=(1.0,), folds=2, n_boot=30, workers=1, finetuned_cnn=False),
        operating_points=OperatingPointParams(n_boot=30),
        lesions=LesionParams(classes=CLASSES, n_boot=50, jitter=(0.0, 1.0)),
    )
    run = Run(params, Catalog(params, tmp_path), progress=False)
    torch.set_num_threads(1)
    source = EncoderFeatures(load_encoder("demo-dinov2-vit", seed=0), batch_size=8, seed=0)
    out = Collected()
    cohort = plan_cohort(run, "toy", records, [source])
    assert cohort.second is not None
    units = unit_store(run.catalog.units)
    reports = [run_extraction(list(s.jobs), units, workers=1, progress=False) for s in cohort.sets]
    assert analyse_cohort(cohort, reports, units, Settings.of(params), out)
    steps = [t["step"] for t in out.timings]
    assert "second-pass extraction (jittered and re-split boxes)" in steps
    # the first pass is the design's boxes alone: its probes are those of a run without any of the reporting
    design = lesion_design(records, CLASSES, canvas_size=CANVAS, seed=params.lesions.seed)
    chosen = source_design(design, source)
    store = unit_store(run.catalog.units)
    plan = box_plan(store, source, "toy", design.items, chosen.boxes, CANVAS, 8)
    alone, _ = study_source(
        design, chosen, read_features(source, plan.units, store), model=source.source_id,
        config=Settings.of(params).config, n_boot=30,
    )  # fmt: skip
    pd.testing.assert_frame_equal(out.fits[0].drop(columns="cohort"), fits_frame(alone))
    jitter = out.reporting[JITTER][0].set_index("jitter")
    local = fits_frame(alone).set_index(["level", "pool"]).loc[("box", "patch_local")]
    geometry = source.encoder.spec.geometry
    assert jitter.loc[0.0, "auc"] == local["auc"]  # jitter 0 is the unjittered probe, through the stage too
    assert jitter.loc[1.0, "jitter_px"] == patch_pixels(geometry.patch, geometry.resize, CANVAS)
    analysed = out.reporting[SPLITS_ANALYSED][0].set_index(["analysed_split", "split"])
    assert analysed.loc[("as read", "test"), "patients_in_another_split"] == 6
    assert (analysed.loc["patient-disjoint re-split", "patients_in_another_split"] == 0).all()
    comparison = out.reporting[SPLIT_COMPARISON][0]
    assert len(comparison) == len(alone) and comparison["auc_official"].tolist() == [f.auc for f in alone]
