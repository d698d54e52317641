"""Learning checks (trained encoder against its random-init twin) and the token PCA, on planted inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesionsignal.analysis.learning import (
    LearningCheckError,
    disease_comparison,
    patient_resamples,
    retrieval_comparison,
    retrieval_hits,
)
from lesionsignal.analysis.stats import auc
from lesionsignal.features.token_maps import token_pca
from lesionsignal.paper.encoder_checks import learning_table


def subjects_and_vectors(n_subjects: int = 30, films: int = 2, spread: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_subjects, 16))
    subjects = np.repeat([f"s{i:03d}" for i in range(n_subjects)], films)
    vectors = np.repeat(centres, films, axis=0) + spread * rng.normal(size=(n_subjects * films, 16))
    return subjects, vectors


def test_retrieval_finds_the_other_film_of_a_planted_subject() -> None:
    subjects, vectors = subjects_and_vectors()
    queries, hits = retrieval_hits(vectors, subjects)
    assert queries.size == subjects.size and hits.all()
    noise = np.random.default_rng(1).normal(size=vectors.shape)
    _, random_hits = retrieval_hits(noise, subjects)
    assert random_hits.mean() < 0.2


def test_a_subject_with_one_image_is_not_a_query() -> None:
    subjects = np.array(["a", "a", "b"])
    queries, _ = retrieval_hits(np.eye(3), subjects)
    assert queries.tolist() == [0, 1]
    with pytest.raises(LearningCheckError, match="no subject has two images"):
        retrieval_hits(np.eye(2), np.array(["a", "b"]))


def test_paired_retrieval_interval_and_an_identical_twin() -> None:
    subjects, vectors = subjects_and_vectors()
    noise = np.random.default_rng(1).normal(size=vectors.shape)
    paired = retrieval_comparison(vectors, noise, subjects, n_boot=200, seed=0)
    row = paired.row()
    assert row["value"] == 1.0 and row["difference_ci_low"] > 0.5
    same = retrieval_comparison(vectors, vectors, subjects, n_boot=200, seed=0).row()
    assert same["difference"] == 0.0 and same["difference_ci_low"] == same["difference_ci_high"] == 0.0


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
    with pytest.raises(LearningCheckError, match="different test images"):
        disease_comparison(scores, "trained", "twin", "demo", n_boot=10, seed=0)


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
