"""Learning checks (trained encoder against its random-init twin) and the token PCA, on planted inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesionsignal.analysis.learning import (
    LearningCheckError,
    RetrievalScore,
    disease_comparison,
    patient_resamples,
    retrieval_comparison,
    retrieval_rows,
    retrieval_scores,
)
from lesionsignal.analysis.stats import auc
from lesionsignal.features.token_maps import token_pca
from lesionsignal.paper.encoder_checks import learning_reading, learning_table


def subjects_and_vectors(n_subjects: int = 30, films: int = 2, spread: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_subjects, 16))
    subjects = np.repeat([f"s{i:03d}" for i in range(n_subjects)], films)
    vectors = np.repeat(centres, films, axis=0) + spread * rng.normal(size=(n_subjects * films, 16))
    return subjects, vectors


def test_retrieval_finds_the_other_film_of_a_planted_subject() -> None:
    subjects, vectors = subjects_and_vectors()
    queries, hits = retrieval_scores(vectors, subjects, RetrievalScore.TOP1)
    assert queries.size == subjects.size and hits.all()
    noise = np.random.default_rng(1).normal(size=vectors.shape)
    _, random_hits = retrieval_scores(noise, subjects, RetrievalScore.TOP1)
    assert random_hits.mean() < 0.2


def test_a_subject_with_one_image_is_not_a_query() -> None:
    subjects = np.array(["a", "a", "b"])
    queries, _ = retrieval_scores(np.eye(3), subjects, RetrievalScore.TOP1)
    assert queries.tolist() == [0, 1]
    with pytest.raises(LearningCheckError, match="no subject has two images"):
        retrieval_scores(np.eye(2), np.array(["a", "b"]), RetrievalScore.TOP1)


def test_paired_retrieval_interval_and_an_identical_twin() -> None:
    subjects, vectors = subjects_and_vectors()
    noise = np.random.default_rng(1).normal(size=vectors.shape)
    paired = retrieval_comparison(vectors, noise, subjects, n_boot=200, seed=0)
    row = paired.row()
    assert row["value"] == 1.0 and row["difference_ci_low"] > 0.5
    same = retrieval_comparison(vectors, vectors, subjects, n_boot=200, seed=0).row()
    assert same["difference"] == 0.0 and same["difference_ci_low"] == same["difference_ci_high"] == 0.0


def test_the_percentile_rank_counts_the_other_subjects_below_the_own_film() -> None:
    # Query 0 (subject a): its own film (row 1) at similarity 0.6; rows 2, 3 (subject b) at 0.8 and 0.2, and row 4
    # (subject c) tied at 0.6: one below, one tied, of three others -> (1 + 0.5) / 3.
    angles = np.arccos([1.0, 0.6, 0.8, 0.2, 0.6])
    signs = np.array([1, 1, -1, 1, -1])
    vectors = np.stack([np.cos(angles), signs * np.sin(angles)], axis=1)
    subjects = np.array(["a", "a", "b", "b", "c"])
    queries, ranks = retrieval_scores(vectors, subjects, RetrievalScore.PERCENTILE)
    assert queries.tolist() == [0, 1, 2, 3]
    assert ranks[0] == pytest.approx(1.5 / 3)
    _, hits = retrieval_scores(vectors, subjects, RetrievalScore.TOP1)
    assert hits[0] == 0.0  # row 2 (subject b) is nearer than the own film


def test_the_percentile_rank_sees_a_weak_subject_signal_that_top1_misses() -> None:
    subjects, vectors = subjects_and_vectors(n_subjects=100, spread=3.0, seed=2)
    noise = np.random.default_rng(3).normal(size=vectors.shape)
    _, ranks = retrieval_scores(vectors, subjects, RetrievalScore.PERCENTILE)
    _, hits = retrieval_scores(vectors, subjects, RetrievalScore.TOP1)
    _, noise_ranks = retrieval_scores(noise, subjects, RetrievalScore.PERCENTILE)
    assert hits.mean() < 0.2 and ranks.mean() > 0.6  # weak: rarely first, but usually above most others
    assert abs(noise_ranks.mean() - 0.5) < 0.05  # chance is one half
    rows = retrieval_rows("cls", "demo", "t", "r", vectors, noise, subjects, n_boot=200, seed=0)
    assert [r["check"] for r in rows] == [
        "same-subject retrieval: top-1 accuracy (cls)",
        "same-subject retrieval: percentile rank of the other film (cls)",
    ]
    assert rows[1]["difference_ci_low"] > 0.05 and rows[1]["n"] == 200 and rows[1]["patients"] == 100


def test_patient_resamples_keep_a_patients_rows_together() -> None:
    patients = np.array(["a", "a", "b", "b", "c"])
    for rows in patient_resamples(patients, 20, seed=4):
        counts = pd.Series(patients[rows]).value_counts()
        assert counts.get("a", 0) % 2 == 0 and counts.get("b", 0) % 2 == 0
    with pytest.raises(LearningCheckError):
        patient_resamples(np.array(["a", "a"]), 5, seed=0)


def scores_frame(model: str, separation: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for task in ("cardiomegaly", "edema"):
        labels = np.tile([0, 1], 20)
        scores = separation * labels + rng.normal(size=labels.size)
        for i, (y, s) in enumerate(zip(labels, scores, strict=True)):
            rows.append(
                {
                    "model": model,
                    "dataset": "demo",
                    "task": task,
                    "image_id": f"i{i:02d}",
                    "patient_id": f"p{i // 2}",
                    "label": int(y),
                    "score": float(s),
                }
            )
    return pd.DataFrame(rows)


def test_disease_comparison_is_the_mean_auc_over_tasks() -> None:
    scores = pd.concat([scores_frame("trained", 3.0, 0), scores_frame("twin", 0.0, 1)], ignore_index=True)
    paired = disease_comparison(scores, "trained", "twin", "demo", n_boot=300, seed=0)
    expected = np.mean([auc(g["label"], g["score"]) for _, g in scores[scores["model"] == "trained"].groupby("task")])
    assert paired.value == pytest.approx(expected)
    row = paired.row()
    assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["difference_ci_low"] > 0
    table = learning_table(
        pd.DataFrame(
            [{"check": "x", "dataset": "demo", "encoder": "trained", "twin": "twin", **row, "n": 40, "patients": 20}]
        ),
        {"trained": "Trained"},
    )
    assert table["interval excludes 0"].item() and table["trained encoder"].item() == "Trained"


def test_disease_comparison_refuses_different_test_images() -> None:
    twin = scores_frame("twin", 0.0, 1)
    twin["image_id"] = twin["image_id"] + "x"
    scores = pd.concat([scores_frame("trained", 3.0, 0), twin], ignore_index=True)
    with pytest.raises(LearningCheckError, match="twin was scored on other test images than trained"):
        disease_comparison(scores, "trained", "twin", "demo", n_boot=10, seed=0)


def test_the_pixel_reference_is_scored_on_the_same_images_and_resamples() -> None:
    frames = [scores_frame("trained", 1.0, 0), scores_frame("twin", 0.0, 1), scores_frame("pixels", 3.0, 2)]
    scores = pd.concat(frames, ignore_index=True)
    paired = disease_comparison(scores, "trained", "twin", "demo", n_boot=300, seed=0, pixels="pixels")
    pixels = frames[2]
    assert paired.pixels == pytest.approx(np.mean([auc(g["label"], g["score"]) for _, g in pixels.groupby("task")]))
    row = paired.row()
    assert row["pixels_ci_low"] <= row["pixels"] <= row["pixels_ci_high"] and row["pixels_ci_low"] > row["ci_high"]
    without = disease_comparison(scores, "trained", "twin", "demo", n_boot=300, seed=0).row()
    assert np.isnan(without["pixels"]) and np.isnan(without["pixels_ci_low"])
    assert {k: v for k, v in without.items() if not k.startswith("pixels")} == {
        k: v for k, v in row.items() if not k.startswith("pixels")
    }  # the reference changes neither encoder's numbers
    moved = pixels.assign(image_id=pixels["image_id"] + "x")
    with pytest.raises(LearningCheckError, match="pixels was scored on other test images"):
        disease_comparison(pd.concat([*frames[:2], moved]), "trained", "twin", "demo", 10, 0, pixels="pixels")


def test_retrieval_rows_carry_the_pixels_on_the_same_queries() -> None:
    subjects, vectors = subjects_and_vectors()
    noise = np.random.default_rng(1).normal(size=vectors.shape)
    rows = retrieval_rows("cls", "demo", "t", "r", noise, noise, subjects, n_boot=100, seed=0, pixel_vectors=vectors)
    assert [r["pixels"] for r in rows] == [1.0, 1.0]  # planted subjects: every other film first
    assert all(r["difference"] == 0.0 for r in rows)
    plain = retrieval_rows("cls", "demo", "t", "r", noise, noise, subjects, n_boot=100, seed=0)
    assert all(np.isnan(r["pixels"]) for r in plain)
    table = learning_table(pd.DataFrame(rows + plain), {})
    assert table.iloc[0, table.columns.get_loc("films' own pixels, 64 x 64 [95 % CI]")].startswith("1.000 [1.000")
    assert table.iloc[2, table.columns.get_loc("films' own pixels, 64 x 64 [95 % CI]")] == "n/a"
    assert learning_reading(pd.DataFrame(rows)).splitlines()[0].endswith("; the films' own pixels: 1.000")


def test_token_pca_colours_a_planted_region() -> None:
    rng = np.random.default_rng(0)
    tokens = 0.01 * rng.normal(size=(2, 8, 8, 12))
    tokens[:, 2:5, 2:5, 0] += 3.0  # a region whose tokens differ along one direction
    pca = token_pca(tokens)
    assert pca.maps.shape == (2, 8, 8, 3) and pca.maps.min() >= 0 and pca.maps.max() <= 1
    assert pca.explained[0] > 0.9
    first = pca.maps[..., 0]
    region = np.zeros(first.shape, bool)
    region[:, 2:5, 2:5] = True
    # the sign rule makes the planted direction's large loading positive: the region is bright
    assert first[region].mean() > first[~region].mean() + 0.5


def test_the_reading_follows_each_intervals_side_of_zero() -> None:
    base = {c: 0.0 for c in ("ci_low", "ci_high", "twin_ci_low", "twin_ci_high")}
    base.update(pixels=np.nan, pixels_ci_low=np.nan, pixels_ci_high=np.nan)
    rows = [
        {"check": "a", "value": 0.7, "twin_value": 0.6, "difference": 0.1, "difference_ci_low": 0.02},
        {"check": "b", "value": 0.5, "twin_value": 0.6, "difference": -0.1, "difference_ci_low": -0.2},
        {"check": "c", "value": 0.6, "twin_value": 0.58, "difference": 0.02, "difference_ci_low": -0.01},
    ]
    highs = {"a": 0.2, "b": -0.01, "c": 0.05}
    cells = pd.DataFrame(
        [
            {
                **base,
                **r,
                "difference_ci_high": highs[r["check"]],
                "dataset": "demo",
                "encoder": "t",
                "twin": "r",
                "n": 10,
                "patients": 5,
            }
            for r in rows
        ]
    )
    lines = learning_reading(cells).splitlines()
    assert lines[0].startswith("demo / a: 0.700 against the twin's 0.600, difference +0.100 [+0.020, +0.200]")
    assert lines[0].endswith("ahead (interval above 0)")
    assert lines[1].endswith("behind (interval below 0)")
    assert lines[2].endswith("not separated (interval includes 0)")
