"""Section 07's readouts on planted signals: each must find a signal put where only it can look.

Layer-wise probing finds the block that carries a local signal; the attention ROI hits the box its map points at;
the multiple-instance scorer finds the planted token; the attentive probe recovers a one-token signal that the mean
pool dilutes; the k-NN probe reads a signal no hyperplane separates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionsignal.analysis.attentive_probe import AttentiveConfig, attentive_probe, fit_attentive
from lesionsignal.analysis.detection import PairedDesign, paired_design
from lesionsignal.analysis.knn_probe import KnnConfig, knn_probe
from lesionsignal.analysis.layerwise import LayerCell, layer_probes, peak_layers
from lesionsignal.analysis.mil import MilConfig, MilPool, fit_mil
from lesionsignal.analysis.probe import ProbeConfig
from lesionsignal.analysis.readouts import linear_readout
from lesionsignal.analysis.rois import (
    RoiDesign,
    RoiKind,
    RoiRows,
    RoiSettings,
    compare_rois,
    hits,
    roi_pool,
    top_tokens,
)
from lesionsignal.features.depth import attention_rollout, patch_map
from lesionsignal.features.pools import local_means

torch.set_num_threads(1)
PROBE = ProbeConfig(c_grid=(0.1, 1.0), folds=3, seed=0)
GRID, WIDTH = 8, 16
BOX = (slice(2, 4), slice(5, 7))  # the planted region: 2 x 2 cells


def _ids(n: int) -> list[str]:
    return [f"img{i:03d}.png" for i in range(n)]


def _splits(ids: list[str]) -> dict[str, str]:
    return {image: ("test" if i % 4 == 0 else "train") for i, image in enumerate(ids)}


def _box_mask() -> np.ndarray:
    mask = np.zeros((GRID, GRID), bool)
    mask[BOX] = True
    return mask


# ---------------------------------------------------------------------------------------------- layer-wise


def _layer_grids(n: int, layers: int, signal_layer: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clean and perturbed grids (layers, n, g, g, D): identical noise; the perturbed twin carries a fixed
    direction in the box's tokens of one block only."""
    rng = np.random.default_rng(seed)
    clean = rng.normal(size=(layers, n, GRID, GRID, WIDTH)).astype(np.float32)
    perturbed = clean.copy()
    direction = rng.normal(size=WIDTH).astype(np.float32)
    perturbed[signal_layer - 1][:, BOX[0], BOX[1], :] += 0.6 * direction
    return clean, perturbed


@pytest.mark.parametrize("signal_layer", [2, 4])
def test_layerwise_curve_peaks_where_only_the_local_tokens_carry_the_signal(signal_layer: int) -> None:
    n, layers = 80, 5
    ids = _ids(n)
    clean, perturbed = _layer_grids(n, layers, signal_layer)
    masks = [[_box_mask()] for _ in range(n)]
    cells = []
    for layer in range(1, layers + 1):
        c, p = torch.from_numpy(clean[layer - 1]), torch.from_numpy(perturbed[layer - 1])
        pools = {
            "patch_local": (local_means(c, masks).numpy(), local_means(p, masks).numpy()),
            "patch_mean": (c.mean(dim=(1, 2)).numpy(), p.mean(dim=(1, 2)).numpy()),
        }
        for pool, (x_clean, x_perturbed) in pools.items():
            design = paired_design(x_clean, x_perturbed, ids, _splits(ids))
            cells.append((LayerCell("planted", "synthetic", "box", pool, layer, layers), design))
    frame = layer_probes(cells, PROBE, n_boot=50)
    peaks = peak_layers(frame).set_index("pool")
    assert peaks.loc["patch_local", "peak_layer"] == signal_layer
    local = frame.loc[frame["pool"] == "patch_local"].set_index("layer")["auc"]
    assert local[signal_layer] > 0.95
    assert local.drop(signal_layer).max() < 0.75
    # The mean over 64 cells holds a sixteenth of the signal: weaker at the same block than the local pool.
    mean = frame.loc[frame["pool"] == "patch_mean"].set_index("layer")["auc"]
    assert mean[signal_layer] < local[signal_layer]
    if signal_layer < layers:
        assert peaks.loc["patch_local", "drop"] > 0.25


# ---------------------------------------------------------------------------------------------- ROIs


def test_top_tokens_and_hits_follow_the_map() -> None:
    maps = np.zeros((3, GRID, GRID))
    maps[0][BOX] = 1.0  # concentrated on the box
    maps[1][0, 0] = 1.0  # elsewhere
    maps[2][3, 6] = 2.0  # one cell of the box
    chosen = top_tokens(maps, 4)
    assert chosen.sum(axis=(1, 2)).tolist() == [4, 4, 4]
    assert chosen[0][BOX].all()
    truth = np.broadcast_to(_box_mask(), maps.shape)
    assert hits(chosen, truth).tolist() == [True, False, True]
    tokens = np.arange(3 * GRID * GRID * 2, dtype=np.float64).reshape(3, GRID, GRID, 2)
    np.testing.assert_allclose(roi_pool(tokens, chosen)[0], tokens[0][BOX].reshape(-1, 2).mean(axis=0))


def _roi_design(n: int, seed: int = 0) -> tuple[RoiDesign, int]:
    """Images whose positives carry a direction in the box's tokens; the attention map points at the box, the
    rollout at a fixed corner far from it; CLS carries nothing."""
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(n, GRID, GRID, WIDTH)).astype(np.float32)
    y = np.arange(n) % 2
    direction = rng.normal(size=WIDTH).astype(np.float32)
    for i in np.flatnonzero(y == 1):
        tokens[i][BOX] += 1.2 * direction
    attention = rng.uniform(0, 0.1, size=(n, GRID, GRID))
    attention[:, BOX[0], BOX[1]] += 1.0
    rollout = rng.uniform(0, 0.1, size=(n, GRID, GRID))
    rollout[:, :2, :2] += 1.0
    cls = rng.normal(size=(n, WIDTH))
    box = np.broadcast_to(_box_mask(), (n, GRID, GRID)).copy()
    test = (np.arange(n) // 2) % 4 == 0
    train = ~test
    maps = {RoiKind.ATTENTION: attention, RoiKind.ROLLOUT: rollout}
    design = RoiDesign.of_rows(RoiRows(tokens, cls, maps, box, y, np.arange(n)), train, test)
    return design, int(y[test].sum())


def test_attention_concentrated_on_the_box_makes_its_roi_hit_and_read_the_signal() -> None:
    design, positives = _roi_design(120)
    rows = {r["roi"]: r for r in compare_rois(design, PROBE, RoiSettings(roi_tokens=4, n_boot=50, paired_n_boot=50))}
    assert rows[RoiKind.ATTENTION]["hit_rate"] == 1.0 and rows[RoiKind.ATTENTION]["n_positive"] == positives
    assert rows[RoiKind.ROLLOUT]["hit_rate"] == 0.0
    assert rows[RoiKind.ORACLE]["hit_rate"] == 1.0
    assert rows[RoiKind.ATTENTION]["auc"] > 0.95 and rows[RoiKind.ORACLE]["auc"] > 0.95
    assert rows[RoiKind.ROLLOUT]["auc"] < 0.8 and rows[RoiKind.CLS]["auc"] < 0.8
    assert rows[RoiKind.ATTENTION]["delta_vs_cls"] > 0.2
    assert abs(rows[RoiKind.ATTENTION]["delta_vs_oracle"]) < 0.05
    # The MIL scorer was never shown the box, and still finds it; the probe on its ROIs (trained on out-of-fold
    # ROIs) reads the signal as well as the box does.
    assert rows[RoiKind.MIL]["hit_rate"] > 0.9
    assert rows[RoiKind.MIL]["auc"] > 0.95 and rows[RoiKind.MIL_SCORE]["auc"] > 0.9


def test_rollout_of_a_fixed_attention_pattern_points_where_cls_looks() -> None:
    n_tokens, target = 1 + GRID * GRID, 1 + 19
    layer = torch.full((2, 3, n_tokens, n_tokens), 1.0 / n_tokens)
    layer[:, :, 0, :] = 0.0
    layer[:, :, 0, target] = 1.0  # CLS attends to one patch in every block and head
    rolled = attention_rollout([layer, layer, layer])
    np.testing.assert_allclose(rolled.sum(dim=-1).numpy(), 1.0, atol=1e-6)
    cls_map = patch_map(rolled[:, 0, 1:], GRID)
    assert int(cls_map[0].flatten().argmax()) == target - 1
    identity = torch.eye(n_tokens).expand(1, 2, n_tokens, n_tokens)
    torch.testing.assert_close(attention_rollout([identity, identity])[0], torch.eye(n_tokens))


# ---------------------------------------------------------------------------------------------- MIL


@pytest.mark.parametrize("pool", [MilPool.MAX, MilPool.TOP_K])
def test_mil_scorer_finds_the_planted_token_from_image_labels_alone(pool: MilPool) -> None:
    rng = np.random.default_rng(1)
    n = 160
    tokens = rng.normal(size=(n, GRID, GRID, WIDTH)).astype(np.float32)
    y = np.arange(n) % 2
    direction = rng.normal(size=WIDTH).astype(np.float32)
    planted = rng.integers(0, GRID * GRID, size=n)
    for i in np.flatnonzero(y == 1):
        tokens[i].reshape(-1, WIDTH)[planted[i]] += 1.5 * direction
    train = np.arange(n) < 120
    model = fit_mil(tokens[train], y[train], MilConfig(pool=pool, top_k=2))
    test_pos = np.flatnonzero(~train & (y == 1))
    found = model.token_scores(tokens[test_pos]).argmax(axis=1)
    assert (found == planted[test_pos]).mean() > 0.9
    scores = model.image_scores(tokens[~train])
    assert scores[y[~train] == 1].mean() > scores[y[~train] == 0].max() - 1e-9 or (
        np.mean(scores[y[~train] == 1][:, None] > scores[y[~train] == 0][None, :]) > 0.95
    )


# ---------------------------------------------------------------------------------------------- learned aggregation


def _one_token_design(n: int, seed: int = 2) -> tuple[PairedDesign, PairedDesign]:
    """Paired clean / perturbed grids whose perturbed twin carries a direction in one cell (its place drawn per
    image): as token grids, and as patch means."""
    rng = np.random.default_rng(seed)
    grid = 12
    clean = rng.normal(size=(n, grid, grid, WIDTH)).astype(np.float32)
    perturbed = clean.copy()
    direction = rng.normal(size=WIDTH).astype(np.float32)
    direction *= 6.0 / np.linalg.norm(direction)
    where = rng.integers(0, grid, size=(n, 2))
    for i, (r, c) in enumerate(where):
        perturbed[i, r, c] += direction
    ids = _ids(n)
    tokens = paired_design(clean, perturbed, ids, _splits(ids))
    means = paired_design(clean.mean(axis=(1, 2)), perturbed.mean(axis=(1, 2)), ids, _splits(ids))
    return tokens, means


def test_attentive_probe_recovers_a_local_signal_the_mean_pool_dilutes() -> None:
    tokens, means = _one_token_design(160)
    attentive = attentive_probe(tokens, AttentiveConfig(weight_decays=(1e-3, 1e-1), steps=60, folds=3, seed=0))
    mean = linear_readout("patch_mean", means, PROBE)
    assert np.array_equal(attentive.test_labels, mean.test_labels)
    assert attentive.auc > 0.9
    assert mean.auc < 0.75
    assert attentive.choice.startswith("decay=")


def test_attentive_probe_starts_as_the_mean_pool_and_learns_to_look_at_the_signal() -> None:
    tokens, _ = _one_token_design(120)
    model = fit_attentive(tokens.x_train, tokens.y_train, weight_decay=1e-3, steps=60)
    weights = model.attention(tokens.x_train)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    positives = tokens.y_train == 1
    # Perturbed twins put most of the weight on their one signal cell; on clean images it stays spread.
    assert np.median(weights[positives].max(axis=1)) > 0.5
    assert np.median(weights[~positives].max(axis=1)) < 0.5


def test_knn_probe_reads_a_signal_no_hyperplane_separates() -> None:
    rng = np.random.default_rng(3)
    n = 300
    x = rng.normal(size=(n, 3))
    # Positives lie in two opposite quadrants of the first two features (an XOR of their signs): no hyperplane
    # separates them, while each row's nearest rows by angle share its class.
    labels = (x[:, 0] * x[:, 1] > 0).astype(int)
    ids = _ids(n)
    splits = _splits(ids)
    train = np.asarray([splits[i] == "train" for i in ids])
    design = PairedDesign(x[train], labels[train], np.arange(n)[train], x[~train], labels[~train], np.arange(n)[~train])
    knn = knn_probe(design, KnnConfig(ks=(5, 15), folds=3, seed=0))
    linear = linear_readout("cls", design, PROBE)
    assert knn.auc > 0.9
    assert linear.auc < 0.75
    assert knn.choice in ("k=5", "k=15")
