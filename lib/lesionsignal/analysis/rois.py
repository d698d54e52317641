"""Regions chosen by the model instead of the oracle box, each pooled and probed like the box, on the same rows.

For every image the ROI is the ``k`` tokens a map ranks highest; the ROI vector is their mean, and the linear probe
of protocol section 4 reads it. The maps:
- ``attention``: the last block's global-to-patch attention, heads averaged (the pooling head's for SigLIP);
- ``rollout``: attention rollout through every block;
- ``mil``: the multiple-instance token scorer (``analysis.mil``), trained on image labels only. Its training rows'
  maps come from scorers fitted without them (out of fold, on the probe's grouped folds), so the probe trained on
  them sees ROIs as good as the test rows get, not better.
The references are CLS and the oracle box (``patch_local``). A hit is an image whose ROI shares a token with the
true box (positives only: a negative has no lesion to hit). ResNets have no attention: they get the MIL ROI only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lesionsignal.analysis.lesions import LesionError, stratum_auc
from lesionsignal.analysis.mil import MilConfig, fit_mil
from lesionsignal.analysis.probe import ProbeConfig, fit_probe, grouped_stratified_folds
from lesionsignal.analysis.readouts import Scored, readout_row
from lesionsignal.analysis.stats import as_binary_labels

ROI_COLUMNS = (
    "roi",
    "auc",
    "ci_low",
    "ci_high",
    "delta_vs_cls",
    "p_vs_cls",
    "delta_vs_oracle",
    "hit_rate",
    "n_hits",
    "n_positive",
    "auc_small",
    "auc_large",
    "choice",
    "n_train",
    "n_test",
)


class RoiKind(enum.StrEnum):
    CLS = "cls"  # reference: the global vector, no region
    ORACLE = "oracle_box"  # reference: the true box (patch-local)
    ATTENTION = "attention"
    ROLLOUT = "rollout"
    MIL = "mil"
    MIL_SCORE = "mil_image_score"  # the scorer's own image score, no probe on top


def top_tokens(maps: np.ndarray, k: int) -> np.ndarray:
    """(n, g, g) bool: each image's k highest-ranked cells (a tie goes to the earlier cell, row-major)."""
    values = np.asarray(maps, dtype=np.float64)
    if values.ndim != 3 or values.shape[1] != values.shape[2]:
        raise ValueError(f"maps: expected (rows, grid, grid), got {values.shape}")
    flat = values.reshape(values.shape[0], -1)
    order = np.argsort(-flat, axis=1, kind="stable")[:, : min(k, flat.shape[1])]
    masks = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(masks, order, True, axis=1)
    return masks.reshape(values.shape)


def roi_pool(tokens: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(n, D): each image's mean token over its mask."""
    grid = np.asarray(tokens, dtype=np.float64)
    chosen = np.asarray(masks, dtype=bool)
    if grid.shape[:3] != chosen.shape or not chosen.reshape(len(chosen), -1).any(axis=1).all():
        raise ValueError(f"masks {chosen.shape} must select at least one cell of each grid {grid.shape[:3]}")
    weights = chosen.astype(np.float64) / chosen.sum(axis=(1, 2), keepdims=True)
    return np.einsum("ngh,nghd->nd", weights, grid)


def hits(masks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n,) whether each image's ROI shares a cell with its true box."""
    return (np.asarray(masks, bool) & np.asarray(truth, bool)).reshape(len(masks), -1).any(axis=1)


@dataclass(frozen=True, eq=False)
class RoiDesign:
    """The rows of one comparison. Token grids (n, g, g, D), CLS (n, D), maps (n, g, g) per map kind, and the
    oracle box's cells (n, g, g): the true box on a positive, a borrowed box of the same kind on a negative."""

    tokens_train: np.ndarray
    tokens_test: np.ndarray
    cls_train: np.ndarray
    cls_test: np.ndarray
    maps_train: Mapping[RoiKind, np.ndarray]
    maps_test: Mapping[RoiKind, np.ndarray]
    box_train: np.ndarray
    box_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    groups_train: np.ndarray
    strata_test: Sequence[str] | None = None  # small / large / negative per test row, when sizes are compared

    @classmethod
    def of_rows(
        cls,
        rows: RoiRows,
        train: np.ndarray,
        test: np.ndarray,
        strata_test: Sequence[str] | None = None,
    ) -> RoiDesign:
        """The design of ``rows`` split by the boolean row masks ``train`` and ``test``."""
        return cls(
            tokens_train=rows.tokens[train],
            tokens_test=rows.tokens[test],
            cls_train=rows.cls[train],
            cls_test=rows.cls[test],
            maps_train={k: v[train] for k, v in rows.maps.items()},
            maps_test={k: v[test] for k, v in rows.maps.items()},
            box_train=rows.box[train],
            box_test=rows.box[test],
            y_train=rows.y[train],
            y_test=rows.y[test],
            groups_train=rows.groups[train],
            strata_test=strata_test,
        )


@dataclass(frozen=True)
class RoiRows:
    """Every row of a comparison before the split: token grids, CLS, maps per kind, oracle box cells, labels and
    groups (shapes as in RoiDesign)."""

    tokens: np.ndarray
    cls: np.ndarray
    maps: Mapping[RoiKind, np.ndarray]
    box: np.ndarray
    y: np.ndarray
    groups: np.ndarray


@dataclass(frozen=True)
class RoiSettings:
    roi_tokens: int = 4
    mil: MilConfig = field(default_factory=MilConfig)
    n_boot: int = 1000
    paired_n_boot: int = 10000


def mil_maps(design: RoiDesign, mil: MilConfig, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MIL scorer's token maps: out of fold on the training rows, from a fit on all of them on the test rows;
    and its image scores on the test rows."""
    grid = design.tokens_train.shape[1]
    y = as_binary_labels(design.y_train)
    train_maps = np.empty(design.tokens_train.shape[:3])
    for train, val in grouped_stratified_folds(y, design.groups_train, folds, seed):
        model = fit_mil(design.tokens_train[train], y[train], mil)
        train_maps[val] = model.token_scores(design.tokens_train[val]).reshape(-1, grid, grid)
    model = fit_mil(design.tokens_train, y, mil)
    test_maps = model.token_scores(design.tokens_test).reshape(-1, grid, grid)
    return train_maps, test_maps, model.image_scores(design.tokens_test)


def _probe(name: str, x_train: np.ndarray, x_test: np.ndarray, design: RoiDesign, config: ProbeConfig) -> Scored:
    result = fit_probe(x_train, design.y_train, design.groups_train, x_test, design.y_test, config)
    return Scored(name, result.test_labels, result.test_scores, f"C={result.best_c:g}", result.n_train)


def compare_rois(design: RoiDesign, config: ProbeConfig, settings: RoiSettings) -> list[dict]:
    """One row per readout (CLS, oracle box, each model ROI, the MIL image score) on the same test rows."""
    k = settings.roi_tokens
    maps_train, maps_test = dict(design.maps_train), dict(design.maps_test)
    mil_train, mil_test, mil_image = mil_maps(design, settings.mil, config.folds, config.seed)
    maps_train[RoiKind.MIL], maps_test[RoiKind.MIL] = mil_train, mil_test
    cls = _probe(RoiKind.CLS, design.cls_train, design.cls_test, design, config)
    oracle_x = (roi_pool(design.tokens_train, design.box_train), roi_pool(design.tokens_test, design.box_test))
    oracle = _probe(RoiKind.ORACLE, *oracle_x, design, config)
    scored: list[tuple[Scored, np.ndarray | None]] = [(cls, None), (oracle, design.box_test)]
    for kind in (RoiKind.ATTENTION, RoiKind.ROLLOUT, RoiKind.MIL):
        if kind not in maps_test:
            continue
        chosen_train, chosen_test = top_tokens(maps_train[kind], k), top_tokens(maps_test[kind], k)
        x = (roi_pool(design.tokens_train, chosen_train), roi_pool(design.tokens_test, chosen_test))
        scored.append((_probe(kind, *x, design, config), chosen_test))
    labels = as_binary_labels(design.y_test)
    scored.append((Scored(RoiKind.MIL_SCORE, labels, mil_image, f"{settings.mil.pool}", cls.n_train), None))
    positive = labels == 1
    rows = []
    for result, chosen in scored:
        row = readout_row(result, cls, settings.n_boot, settings.paired_n_boot, config.seed)
        row["roi"] = row.pop("readout")
        row["delta_vs_oracle"] = result.auc - oracle.auc
        if chosen is not None:
            hit = hits(chosen[positive], design.box_test[positive])
            row["hit_rate"], row["n_hits"] = float(hit.mean()), int(hit.sum())
        row["n_positive"] = int(positive.sum())
        if design.strata_test is not None:
            try:
                strata = stratum_auc(labels, result.test_scores, design.strata_test)
            except LesionError:  # a stratum without positives (every area at the median): no size comparison
                strata = {}
            row["auc_small"], row["auc_large"] = strata.get("small", np.nan), strata.get("large", np.nan)
        rows.append({c: row.get(c, np.nan) for c in ROI_COLUMNS})
    return rows
