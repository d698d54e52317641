"""Embedding separation: shrinkage by hand, Mahalanobis and silhouette on planted clusters, subsampling, UMAP."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from lesionsignal.analysis.separation import (
    Separation,
    SeparationError,
    mahalanobis_distance,
    rank_agreement,
    separation,
    shrunk_covariance,
    silhouette_cosine,
    stratified_subsample,
    umap_embedding,
)
from lesionsignal.paper.figures import plot_umap_panels


def whitened(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n points whose sample covariance (divisor n - 1) is exactly the identity and whose mean is exactly 0."""
    raw = rng.normal(size=(n, d))
    q, _ = np.linalg.qr(raw - raw.mean(axis=0))
    return q * math.sqrt(n - 1)


def test_shrinkage_formula_by_hand() -> None:
    x_a = np.array([[0.0, 0.0], [2.0, 2.0]])  # scatter [[2, 2], [2, 2]]
    x_b = np.array([[0.0, 0.0], [0.0, 4.0]])  # scatter [[0, 0], [0, 8]]
    # S = [[2, 2], [2, 10]] / (4 - 2) = [[1, 1], [1, 5]]; tr S / d = 3; 0.9 S + 0.1 * 3 I:
    expected = np.array([[1.2, 0.9], [0.9, 4.8]])
    np.testing.assert_allclose(shrunk_covariance(x_a, x_b), expected, rtol=1e-12)
    np.testing.assert_allclose(shrunk_covariance(x_a, x_b, shrink=0.0), [[1.0, 1.0], [1.0, 5.0]], rtol=1e-12)
    # Centroid difference (1, -1): d^2 = (1, -1) inv(expected) (1, -1)^T = (4.8 + 2 * 0.9 + 1.2) / 4.95.
    assert mahalanobis_distance(x_a, x_b) == pytest.approx(math.sqrt(7.8 / 4.95), rel=1e-12)


def test_mahalanobis_equals_euclidean_under_identity_covariance() -> None:
    rng = np.random.default_rng(0)
    mu_a, mu_b = np.array([1.0, -2.0, 0.5, 3.0]), np.array([-1.0, 0.0, 0.5, 1.0])
    x_a, x_b = whitened(rng, 50, 4) + mu_a, whitened(rng, 70, 4) + mu_b
    np.testing.assert_allclose(shrunk_covariance(x_a, x_b), np.eye(4), atol=1e-12)
    assert mahalanobis_distance(x_a, x_b) == pytest.approx(float(np.linalg.norm(mu_a - mu_b)), rel=1e-12)


def test_mahalanobis_uses_the_covariance() -> None:
    rng = np.random.default_rng(1)
    scale = np.array([4.0, 1.0])
    x_a = rng.normal(size=(4000, 2)) * scale
    x_b = rng.normal(size=(4000, 2)) * scale + np.array([4.0, 0.0])  # 4 along the wide axis: ~1 sd
    shrunk_var = 0.9 * 16.0 + 0.1 * (16.0 + 1.0) / 2
    assert mahalanobis_distance(x_a, x_b) == pytest.approx(4.0 / math.sqrt(shrunk_var), rel=0.05)


def clusters(rng: np.random.Generator, centre_b: np.ndarray, n: int = 1500, sd: float = 0.5) -> np.ndarray:
    centre_a = np.zeros_like(centre_b)
    centre_a[0] = 10.0
    return np.concatenate(
        [rng.normal(centre_a, sd, size=(n, centre_b.size)), rng.normal(centre_b, sd, size=(n, centre_b.size))]
    )


def test_separated_and_identical_clusters() -> None:
    rng = np.random.default_rng(2)
    d = 6
    far = np.zeros(d)
    far[1] = 10.0  # orthogonal direction: cosine distance ~1 between groups, ~0 within
    x = clusters(rng, far)
    labels = np.repeat([0, 1], 1500)
    result = separation(x[:1500], x[1500:], max_points=1000, seed=3)
    assert isinstance(result, Separation) and result.n == 3000
    assert result.silhouette > 0.9
    assert result.mahalanobis == pytest.approx(10.0 * math.sqrt(2) / 0.5, rel=0.05)
    same = np.zeros(d)
    same[0] = 10.0
    y = clusters(rng, same, sd=1.0)
    twin = separation(y[:1500], y[1500:], max_points=1000, seed=3)
    assert abs(twin.silhouette) < 0.05
    assert twin.mahalanobis < 0.15  # sampling noise only: ~sqrt(2 d / n)
    assert silhouette_cosine(x, labels, max_points=1000, seed=3) == result.silhouette


def test_stratified_subsample() -> None:
    labels = np.array([0] * 700 + [1] * 300)
    rows = stratified_subsample(labels, 100, seed=4)
    assert rows.size == 100 and np.all(np.diff(rows) > 0)
    assert (labels[rows] == 0).sum() == 70 and (labels[rows] == 1).sum() == 30
    np.testing.assert_array_equal(rows, stratified_subsample(labels, 100, seed=4))
    assert not np.array_equal(rows, stratified_subsample(labels, 100, seed=5))
    np.testing.assert_array_equal(stratified_subsample(labels, 1000, seed=4), np.arange(1000))
    thirds = stratified_subsample(np.repeat(["a", "b", "c"], 5), 10, seed=0)
    assert thirds.size == 10  # 10/3 each: the leftover goes to the first label
    with pytest.raises(SeparationError, match="too rare"):
        stratified_subsample(np.array([0] * 999 + [1]), 10, seed=0)


def test_silhouette_is_computed_on_the_stratified_subsample() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(600, 5)) + 3.0
    labels = np.repeat([0, 1], [400, 200])
    rows = stratified_subsample(labels, 150, seed=9)
    expected = silhouette_score(x[rows], labels[rows], metric="cosine")
    assert silhouette_cosine(x, labels, max_points=150, seed=9) == expected


def test_separation_errors() -> None:
    x = np.ones((10, 3))
    with pytest.raises(SeparationError, match="two groups"):
        silhouette_cosine(x, np.zeros(10))
    with pytest.raises(SeparationError, match="row 2 is all zeros"):
        silhouette_cosine(np.where(np.arange(10)[:, None] == 2, 0.0, 1.0) * np.ones((10, 3)), np.arange(10) % 2)
    with pytest.raises(SeparationError, match="feature counts"):
        mahalanobis_distance(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(SeparationError, match="not positive definite"):
        mahalanobis_distance(np.ones((4, 3)), np.zeros((4, 3)))
    with pytest.raises(SeparationError, match="x_a: row 1"):
        shrunk_covariance(np.array([[0.0, 1.0], [np.nan, 1.0]]), np.ones((3, 2)))
    with pytest.raises(SeparationError, match="shrink"):
        shrunk_covariance(np.eye(3), np.eye(3), shrink=1.5)


def test_rank_agreement() -> None:
    separations = [0.1, 0.5, 0.2, 3.0, 1.0]
    rho, p = rank_agreement(separations, [0.51, 0.70, 0.60, 0.99, 0.80])
    assert rho == pytest.approx(1.0)
    assert p < 0.05
    assert rank_agreement(separations, [0.9, 0.5, 0.8, 0.1, 0.3])[0] == pytest.approx(-1.0)
    with pytest.raises(SeparationError, match="at least 3"):
        rank_agreement([1.0, 2.0], [0.5, 0.6])
    with pytest.raises(SeparationError, match="all values are equal"):
        rank_agreement([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])


@pytest.mark.slow  # numba compiles umap on first use (~15 s)
def test_umap_deterministic_with_shapes() -> None:
    rng = np.random.default_rng(7)
    x = clusters(rng, np.array([0.0, 10.0, 0.0, 0.0]), n=100)
    coords, rows = umap_embedding(x, n_neighbors=15, seed=42)
    assert coords.shape == (200, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    np.testing.assert_array_equal(rows, np.arange(200))
    again, _ = umap_embedding(x, n_neighbors=15, seed=42)
    assert coords.tobytes() == again.tobytes()
    # The two planted groups stay apart in the picture.
    assert silhouette_score(coords, np.repeat([0, 1], 100)) > 0.5
    with pytest.raises(SeparationError, match="too few"):
        umap_embedding(x[:10], n_neighbors=15)


def test_plot_umap_panels() -> None:
    rng = np.random.default_rng(8)
    labels = np.repeat([0, 1], 20)
    panels = [(f"cell {i}", rng.normal(size=(40, 2)), labels) for i in range(4)]
    figure = plot_umap_panels(panels, "demo")
    visible = [ax for ax in figure.axes if ax.axison]
    assert [ax.get_title() for ax in visible] == ["cell 0", "cell 1", "cell 2", "cell 3"]
    assert len(figure.axes) == 6
    assert all(len(ax.collections[0].get_offsets()) == 40 for ax in visible)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
    with pytest.raises(SeparationError, match=r"'bad'.*n x 2"):
        plot_umap_panels([("bad", np.zeros((40, 3)), labels)], "demo")
    with pytest.raises(SeparationError, match="clean"):
        plot_umap_panels([("bad", np.zeros((40, 2)), labels + 1)], "demo")
