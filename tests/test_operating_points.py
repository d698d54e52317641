"""Operating points: sensitivity at a fixed specificity from out-of-fold training thresholds, PPV / NPV, paired gaps."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from lesionsignal.analysis.detection import CellSpec, run_cells
from lesionsignal.analysis.operating_points import (
    OperatingPointError,
    OperatingSettings,
    operating_points,
    predictive_values,
    rates_at,
    sensitivity_gap,
    threshold_at_specificity,
)
from lesionsignal.analysis.probe import ProbeConfig, fit_probe

SETTINGS = OperatingSettings(specificities=(0.9, 0.95), prevalence=0.03, n_boot=200, seed=7)


def roc_sensitivity(y: np.ndarray, scores: np.ndarray, specificity: float) -> float:
    """The largest true-positive rate of the ROC curve among its points with false-positive rate <= 1 - spec."""
    fpr, tpr, _ = roc_curve(y, scores)
    return float(tpr[fpr <= 1 - specificity + 1e-12].max())


def test_threshold_and_sensitivity_against_a_hand_computed_roc() -> None:
    # 20 negatives scored 1..20 and 10 positives scored 15.5, 16.5, ..., 24.5.
    negatives = np.arange(1.0, 21.0)
    positives = np.arange(15.5, 25.0, 1.0)
    y = np.r_[np.zeros(20, int), np.ones(10, int)]
    scores = np.r_[negatives, positives]
    # 90 % of 20 negatives = 18 must score below the threshold: it must exceed 18, and the lowest score above 18 is
    # 18.5. Positives >= 18.5 are 18.5 ... 24.5: 7 of 10. Two negatives (19, 20) are called: specificity 0.9.
    assert threshold_at_specificity(y, scores, 0.90) == 18.5
    assert rates_at(y, scores, 18.5) == (0.7, 0.9)
    # 95 %: 19 below, so above 19: 19.5; positives >= 19.5 are 6; one negative (20) is called: 0.95.
    assert threshold_at_specificity(y, scores, 0.95) == 19.5
    assert rates_at(y, scores, 19.5) == (0.6, 0.95)
    # 0.99 of 20 is 19.8, rounded up to all 20: above the top negative, 20.5, and 5 positives.
    assert threshold_at_specificity(y, scores, 0.99) == 20.5
    for target in (0.9, 0.95, 0.99):
        se = rates_at(y, scores, threshold_at_specificity(y, scores, target))[0]
        assert se == roc_sensitivity(y, scores, target)


def test_nothing_above_the_negatives_means_nothing_is_called() -> None:
    y = np.array([0, 0, 0, 1, 1])
    scores = np.array([1.0, 2.0, 9.0, 3.0, 4.0])
    assert threshold_at_specificity(y, scores, 0.95) == math.inf
    assert rates_at(y, scores, math.inf) == (0.0, 1.0)


def test_on_random_scores_the_rule_is_the_roc_point() -> None:
    rng = np.random.default_rng(0)
    for n_neg, n_pos in ((37, 11), (200, 60), (64, 64)):
        y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
        scores = np.round(np.r_[rng.normal(0, 1, n_neg), rng.normal(1, 1, n_pos)], 1)  # rounded: with ties
        for target in (0.8, 0.9, 0.95):
            threshold = threshold_at_specificity(y, scores, target)
            se, sp = rates_at(y, scores, threshold)
            assert sp >= target and se == roc_sensitivity(y, scores, target)


def test_the_threshold_never_sees_test_rows() -> None:
    rng = np.random.default_rng(1)
    y_train, y_test = rng.permutation(np.r_[np.zeros(60), np.ones(60)]).astype(int), np.r_[np.zeros(30), np.ones(30)]
    s_train = rng.normal(size=120) + y_train
    points = operating_points(y_train, s_train, y_test, rng.normal(size=60) + y_test, SETTINGS)
    other = operating_points(y_train, s_train, y_test, 100 + 5 * rng.normal(size=60), SETTINGS)
    for a, b in zip(points, other, strict=True):
        assert a.threshold == b.threshold == threshold_at_specificity(y_train, s_train, a.target_specificity)
        assert a.sensitivity.estimate != b.sensitivity.estimate  # the test rows move only the test rates
    # through the probe: the test matrix can be anything, the out-of-fold training scores do not move
    x_train = rng.normal(size=(120, 4)) + y_train[:, None]
    groups = np.arange(120)
    config = ProbeConfig(c_grid=(0.1, 1.0), folds=3, seed=3)
    first = fit_probe(x_train, y_train, groups, rng.normal(size=(60, 4)), y_test, config)
    second = fit_probe(x_train, y_train, groups, 50 * rng.normal(size=(60, 4)), y_test, config)
    assert np.array_equal(first.train_scores, second.train_scores)
    assert np.array_equal(first.train_labels, y_train)
    assert first.threshold == second.threshold


def test_test_rates_and_the_optimistic_sensitivity() -> None:
    rng = np.random.default_rng(2)
    y_train, y_test = np.r_[np.zeros(80), np.ones(80)].astype(int), np.r_[np.zeros(50), np.ones(50)].astype(int)
    s_train, s_test = rng.normal(size=160) + y_train, rng.normal(size=100) + 1.5 * y_test
    for point in operating_points(y_train, s_train, y_test, s_test, SETTINGS):
        se, sp = rates_at(y_test, s_test, point.threshold)
        assert (point.sensitivity.estimate, point.specificity.estimate) == (se, sp)
        assert point.train_specificity >= point.target_specificity
        assert point.sensitivity_optimistic == roc_sensitivity(y_test, s_test, point.target_specificity)
        assert point.sensitivity.low <= se <= point.sensitivity.high
        assert (point.n_test_positive, point.n_test_negative) == (50, 50)
        ppv, npv = predictive_values(se, sp, 0.03)
        assert (point.ppv.estimate, point.npv.estimate) == (float(ppv), float(npv))
    again = operating_points(y_train, s_train, y_test, s_test, SETTINGS)
    assert [p.row() for p in again] == [p.row() for p in operating_points(y_train, s_train, y_test, s_test, SETTINGS)]


def test_predictive_values_by_bayes_rule() -> None:
    # sensitivity 0.8, specificity 0.9, prevalence 0.1: of 1,000 films 100 diseased, 80 found; 900 healthy, 90 called.
    ppv, npv = predictive_values(0.8, 0.9, 0.1)
    assert float(ppv) == pytest.approx(80 / (80 + 90)) and float(npv) == pytest.approx(810 / (810 + 20))
    none_called, _ = predictive_values(0.0, 1.0, 0.1)
    assert math.isnan(float(none_called))


def test_sensitivity_gap_is_paired() -> None:
    rng = np.random.default_rng(3)
    y_train, y_test = np.r_[np.zeros(60), np.ones(60)].astype(int), np.r_[np.zeros(40), np.ones(40)].astype(int)
    base = rng.normal(size=80)
    strong = operating_points(y_train, rng.normal(size=120) + 2 * y_train, y_test, base + 2 * y_test, SETTINGS)
    weak = operating_points(y_train, rng.normal(size=120), y_test, base, SETTINGS)
    for a, b in zip(strong, weak, strict=True):
        gap = sensitivity_gap(a, b)
        assert gap["gap"] == a.sensitivity.estimate - b.sensitivity.estimate
        assert gap["gap_low"] <= gap["gap"] <= gap["gap_high"] and gap["gap_low"] > 0
        same = sensitivity_gap(a, a)
        assert same["gap"] == same["gap_low"] == same["gap_high"] == 0.0
    short = operating_points(y_train, rng.normal(size=120), y_test[:-1], base[:-1], SETTINGS)
    with pytest.raises(OperatingPointError, match="same rows"):
        sensitivity_gap(strong[0], short[0])


def test_settings_are_checked() -> None:
    with pytest.raises(OperatingPointError, match="specificities"):
        OperatingSettings(specificities=(1.0,))
    with pytest.raises(OperatingPointError, match="prevalence"):
        OperatingSettings(prevalence=3.0)


def test_detection_cells_report_operating_points_and_the_local_minus_cls_gap() -> None:
    rng = np.random.default_rng(4)
    ids = np.asarray([f"im{i:03d}.png" for i in range(80)])
    clean = rng.normal(size=(80, 6))
    arrays = {
        "image_ids": ids,
        "clean_cls": clean,
        "perturbed_cls": clean + 0.05 * rng.normal(size=(80, 6)),
        "clean_patch_local": clean,
        "perturbed_patch_local": clean + 2.0,
    }
    splits = {"d": {image_id: ("test" if i >= 56 else "train") for i, image_id in enumerate(ids)}}
    cells = [CellSpec("enc", "d", pool, "P", f"clean_{pool}", f"perturbed_{pool}") for pool in ("cls", "patch_local")]
    frames = run_cells(cells, lambda _c: arrays, splits, ProbeConfig(c_grid=(1.0,), folds=2), 50, False, SETTINGS)
    assert list(frames.results["pool"]) == ["cls", "patch_local"]
    ops = frames.operating.set_index(["pool", "target_specificity"])
    assert len(ops) == 4 and ops.loc[("patch_local", 0.95), "sensitivity"] > 0.9 > ops.loc[("cls", 0.95), "sensitivity"]
    gaps = frames.gaps.set_index("target_specificity")
    assert list(gaps.index) == [0.9, 0.95]
    expected = ops.loc[("patch_local", 0.95), "sensitivity"] - ops.loc[("cls", 0.95), "sensitivity"]
    assert gaps.loc[0.95, "gap"] == pytest.approx(expected) and gaps.loc[0.95, "gap_low"] > 0
    assert isinstance(frames.operating, pd.DataFrame) and frames.operating["prevalence"].eq(0.03).all()
