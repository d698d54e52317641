"""Section 07's analyses of one encoder's depth features: on the controlled panel, per condition, the layer-wise
curves, the readouts (CLS, patch-mean, patch-local, attentive, k-NN) and the model-chosen ROIs; on a box cohort, per
lesion class, the image-level readouts and ROIs by lesion size.

Panel rows are the paired detection design (a clean image and its perturbed twin share a CV group; the oracle box is
the patch's box on both). Box-cohort rows are images, target "has a box of the class", folds grouped by patient; a
positive's oracle box is the union of its class boxes, a negative's the boxes of a positive of the same split drawn
with the seed, so both classes are pooled over a lesion-sized, lesion-placed region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesionsignal.analysis.attentive_probe import AttentiveConfig, attentive_probe
from lesionsignal.analysis.detection import PairedDesign, paired_design
from lesionsignal.analysis.knn_probe import KnnConfig, knn_probe
from lesionsignal.analysis.layerwise import LayerCell, layer_probes
from lesionsignal.analysis.lesion_probes import fit_problem
from lesionsignal.analysis.lesions import LesionImage, assign_strata, image_level_targets
from lesionsignal.analysis.probe import ProbeConfig
from lesionsignal.analysis.readouts import READOUT_COLUMNS, Readout, linear_readout, readout_row
from lesionsignal.analysis.rois import ROI_COLUMNS, RoiDesign, RoiKind, RoiRows, RoiSettings, compare_rois, roi_pool
from lesionsignal.core.box import Box
from lesionsignal.core.kinds import Pool
from lesionsignal.features.depth_units import ATTENTION, ROLLOUT, TOKENS, DepthFeatures, layer_key
from lesionsignal.features.geometry import Geometry

KEYS = ("model", "dataset", "perturbation")
SKIP_COLUMNS = (*KEYS, "part", "reason")
_POOLS = (Pool.CLS, Pool.PATCH_MEAN, Pool.PATCH_LOCAL)


@dataclass(frozen=True)
class DepthSettings:
    probe: ProbeConfig
    attentive: AttentiveConfig
    knn: KnnConfig
    rois: RoiSettings
    n_boot: int


@dataclass(frozen=True)
class CellResults:
    layers: pd.DataFrame
    readouts: pd.DataFrame
    rois: pd.DataFrame
    skipped: pd.DataFrame


def _frame(rows: Sequence[dict], keys: Mapping[str, str], columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame([{**keys, **r} for r in rows], columns=[*keys, *columns])
    return frame


def _maps(features: DepthFeatures, ids: Sequence[str]) -> dict[RoiKind, np.ndarray]:
    if not features.has_attention:
        return {}
    return {
        RoiKind.ATTENTION: features.per_image(ATTENTION, ids),
        RoiKind.ROLLOUT: features.per_image(ROLLOUT, ids),
    }


def _readouts(designs: Mapping[Readout, PairedDesign], tokens: PairedDesign, settings: DepthSettings) -> list[dict]:
    """CLS first (the reference of every paired difference), then the other linear pools, attentive, k-NN."""
    cls = linear_readout(Readout.CLS, designs[Readout.CLS], settings.probe)
    scored = [cls]
    scored += [linear_readout(r, designs[r], settings.probe) for r in (Readout.PATCH_MEAN, Readout.PATCH_LOCAL)]
    scored.append(attentive_probe(tokens, settings.attentive))
    scored.append(knn_probe(designs[Readout.CLS], settings.knn))
    boot, paired, seed = settings.n_boot, settings.rois.paired_n_boot, settings.probe.seed
    return [{c: readout_row(s, cls, boot, paired, seed)[c] for c in READOUT_COLUMNS} for s in scored]


def panel_condition(
    clean: DepthFeatures,
    perturbed: DepthFeatures,
    keys: Mapping[str, str],
    splits: Mapping[str, str],
    geometry: Geometry,
    canvas_size: int,
    settings: DepthSettings,
) -> CellResults:
    """Every analysis of one (encoder, cohort, condition) on the depth subset."""
    ids = [str(i) for i in perturbed.image_ids]
    boxes = [Box(*map(int, b)) for b in perturbed.boxes]
    where = list(zip(ids, boxes, strict=True))
    depth = perturbed.layers
    cells = []
    for layer in range(1, depth + 1):
        for pool in _POOLS:
            if pool is Pool.PATCH_LOCAL:
                x_clean, x_perturbed = clean.local_at(layer, where), perturbed.local_at(layer, where)
            else:
                name = layer_key(pool, layer)
                x_clean, x_perturbed = clean.per_image(name, ids), perturbed.per_image(name, ids)
            design = paired_design(x_clean, x_perturbed, ids, splits)
            cells.append((LayerCell(keys["model"], keys["dataset"], keys["perturbation"], pool, layer, depth), design))
    layers = layer_probes(cells, settings.probe, settings.n_boot)
    last = {c.pool: d for c, d in cells if c.layer == depth}
    tokens = paired_design(clean.per_image(TOKENS, ids), perturbed.per_image(TOKENS, ids), ids, splits)
    designs = {Readout.CLS: last[Pool.CLS], Readout.PATCH_MEAN: last[Pool.PATCH_MEAN]}
    designs[Readout.PATCH_LOCAL] = last[Pool.PATCH_LOCAL]
    readouts = _readouts(designs, tokens, settings)
    masks = np.stack([geometry.token_mask(b, canvas=canvas_size) for b in boxes])
    box = paired_design(masks, masks, ids, splits)
    clean_maps, perturbed_maps = _maps(clean, ids), _maps(perturbed, ids)
    maps = {k: paired_design(clean_maps[k], perturbed_maps[k], ids, splits) for k in clean_maps}
    roi_design = RoiDesign(
        tokens_train=tokens.x_train.astype(np.float32),
        tokens_test=tokens.x_test.astype(np.float32),
        cls_train=last[Pool.CLS].x_train,
        cls_test=last[Pool.CLS].x_test,
        maps_train={k: d.x_train for k, d in maps.items()},
        maps_test={k: d.x_test for k, d in maps.items()},
        box_train=box.x_train,
        box_test=box.x_test,
        y_train=tokens.y_train,
        y_test=tokens.y_test,
        groups_train=tokens.groups_train,
    )
    rois = compare_rois(roi_design, settings.probe, settings.rois)
    return CellResults(
        layers,
        _frame(readouts, keys, READOUT_COLUMNS),
        _frame(rois, keys, ROI_COLUMNS),
        pd.DataFrame(columns=list(SKIP_COLUMNS)),
    )


def _borrowed_boxes(
    targets: pd.DataFrame, images: Mapping[str, LesionImage], lesion_class: str, seed: int
) -> dict[str, tuple[Box, ...]]:
    """Each negative's oracle region: the class boxes of a positive of its split (any split when its own has none)."""
    rng = np.random.default_rng(seed)
    positives = targets.loc[targets["label"] == 1]
    chosen = {}
    for row in targets.itertuples(index=False):
        if row.label == 1:
            chosen[row.image_id] = images[row.image_id].boxes_of(lesion_class)
            continue
        donors = positives.loc[positives["split"] == row.split, "image_id"].tolist()
        donors = donors or positives["image_id"].tolist()
        chosen[row.image_id] = images[donors[int(rng.integers(len(donors)))]].boxes_of(lesion_class)
    return chosen


def lesion_class_cells(
    features: DepthFeatures,
    images: Sequence[LesionImage],
    patients: Mapping[str, str],
    lesion_class: str,
    keys: Mapping[str, str],
    geometry: Geometry,
    canvas_size: int,
    settings: DepthSettings,
    seed: int,
) -> CellResults:
    """Image-level readouts and ROIs of one lesion class, with small / large strata of the test positives."""
    targets = image_level_targets(images, lesion_class)
    train = targets["split"].to_numpy() == "train"
    test = targets["split"].to_numpy() == "test"
    y = targets["label"].to_numpy()
    groups = np.asarray([patients[i] for i in targets["image_id"]])
    empty = CellResults(*(pd.DataFrame() for _ in range(3)), pd.DataFrame(columns=list(SKIP_COLUMNS)))
    problem = fit_problem(y[train], groups[train], y[test], settings.probe.folds, settings.probe.seed)
    if not problem and not (y[test] == 1).sum() >= 2:
        problem = "test split: fewer than two positives, no size strata"
    if problem:
        skipped = pd.DataFrame([{**keys, "part": "lesions", "reason": problem}], columns=list(SKIP_COLUMNS))
        return CellResults(empty.layers, empty.readouts, empty.rois, skipped)
    ids = targets["image_id"].tolist()
    by_id = {image.image_id: image for image in images}
    regions = _borrowed_boxes(targets, by_id, lesion_class, seed)
    masks = np.stack([np.any([geometry.token_mask(b, canvas=canvas_size) for b in regions[i]], axis=0) for i in ids])
    tokens = features.per_image(TOKENS, ids).astype(np.float32)
    last = features.layers
    cls = features.per_image(layer_key(Pool.CLS, last), ids)
    mean = features.per_image(layer_key(Pool.PATCH_MEAN, last), ids)
    local = roi_pool(tokens, masks)

    def design(x: np.ndarray) -> PairedDesign:
        return PairedDesign(x[train], y[train], groups[train], x[test], y[test], groups[test])

    designs = {Readout.CLS: design(cls), Readout.PATCH_MEAN: design(mean), Readout.PATCH_LOCAL: design(local)}
    readouts = _readouts(designs, design(tokens), settings)
    strata = assign_strata(targets, "test")["stratum"].tolist()
    maps = _maps(features, ids)
    roi_design = RoiDesign.of_rows(RoiRows(tokens, cls, maps, masks, y, groups), train, test, strata)
    rois = compare_rois(roi_design, settings.probe, settings.rois)
    return CellResults(
        empty.layers,
        _frame(readouts, keys, READOUT_COLUMNS),
        _frame(rois, keys, ROI_COLUMNS),
        empty.skipped,
    )
