"""Probes of the natural-lesion study (protocol section 7): image level, box level, size strata, paired tests.

Image-level probes (CLS, patch-mean) and box-level probes (CLS, patch-mean, patch-local) with their small / large
strata at the median positive area, and the paired bootstrap of patch-local minus CLS on shared resamples with
Benjamini-Hochberg over the (model x class) cells.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesionsignal.analysis.lesion_design import LesionDesign, LesionStudyError, SourceDesign
from lesionsignal.analysis.lesions import (
    BoxSample,
    Stratum,
    assign_strata,
    box_level_strata,
    image_level_targets,
    samples_frame,
    stratum_auc,
)
from lesionsignal.analysis.probe import ProbeConfig, ProbeError, fit_probe, grouped_stratified_folds
from lesionsignal.analysis.size_strata import SHARED, StrataRows
from lesionsignal.analysis.stats import benjamini_hochberg, bootstrap_auc_ci, paired_bootstrap_delta
from lesionsignal.core.kinds import Pool
from lesionsignal.features.extraction import PooledFeatures

TRAIN, TEST = "train", "test"
FIT_COLUMNS = (
    "model",
    "lesion_class",
    "level",
    "pool",
    "auc",
    "ci_low",
    "ci_high",
    "auc_small",
    "auc_large",
    "gap",
    "n_train",
    "n_test",
    "n_test_positive",
    "n_small",
    "n_large",
    "best_c",
    "strata_note",
)


class Level(enum.StrEnum):
    IMAGE = "image"  # target: the image has a box of the class; pools of the whole image
    BOX = "box"  # target: the box is a lesion; pools of the whole image and over the box


@dataclass(frozen=True, eq=False)
class PoolFit:
    """One probe's test result, its bootstrap CI, its size strata, and the test scores (for paired tests)."""

    model: str
    lesion_class: str
    level: Level
    pool: str
    auc: float
    ci_low: float
    ci_high: float
    strata: Mapping[str, float]  # small, large, gap (empty when the strata cannot be formed: see strata_note)
    n_small: int
    n_large: int
    strata_note: str
    best_c: float
    n_train: int
    n_test: int
    test_labels: np.ndarray
    test_scores: np.ndarray
    train_labels: np.ndarray  # the training rows' labels and out-of-fold scores: where thresholds are chosen
    train_scores: np.ndarray
    test_areas: np.ndarray  # per test row: the positive's area (NaN for a negative)
    test_owners: np.ndarray  # per test row: its positive (size_strata.SHARED for a negative every stratum uses)

    def strata_rows(self) -> StrataRows:
        return StrataRows(self.test_labels, self.test_scores, self.test_areas, self.test_owners)


@dataclass(frozen=True)
class Skipped:
    """A (model, class, level) that cannot be probed on this cohort, and why."""

    model: str
    lesion_class: str
    level: Level
    reason: str


@dataclass(frozen=True)
class CellData:
    """The rows of one (class, level): labels, CV groups, strata of the test rows, and a feature getter."""

    y_train: np.ndarray
    groups_train: np.ndarray
    y_test: np.ndarray
    strata_test: pd.DataFrame  # rows of the test split with "stratum" (or empty: see strata_note)
    strata_note: str
    features: Callable[[str, str], np.ndarray]  # (pool, split) -> matrix
    test_areas: np.ndarray  # per test row, aligned with y_test: the positive's area, NaN for a negative
    test_owners: np.ndarray  # per test row: the positive it belongs to (itself), or SHARED


def fit_problem(y_train: np.ndarray, groups_train: np.ndarray, y_test: np.ndarray, folds: int, seed: int = 42) -> str:
    """Why a probe cannot be fitted on these rows (empty string: it can)."""
    for label, name in ((1, "positive"), (0, "negative")):
        n_groups = np.unique(groups_train[y_train == label]).size
        if n_groups < folds:
            return f"train split: {name} rows come from {n_groups} group(s), fewer than the {folds} CV folds"
        if not (y_test == label).any():
            return f"test split: no {name} rows"
    try:
        # Enough groups per class can still leave a fold with one class; the probe's own fold maker decides.
        grouped_stratified_folds(y_train, groups_train, folds, seed)
    except ProbeError as err:
        return f"train split: {err}"
    return ""


def _strata_or_note(make: Callable[[], pd.DataFrame], split_rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The strata of the test rows, or (empty frame, why not) when the positives cannot be split at a median."""
    positives = split_rows.loc[split_rows["label"] == 1, "area"]
    note = ""
    if not (split_rows["label"] == 0).any():
        note = "no test negatives"
    elif positives.size < 2 or not (positives > float(np.median(positives))).any():
        note = f"no large stratum: {positives.size} test positive(s), none above their median area"
    if note:
        return split_rows.iloc[0:0].assign(stratum=[]), note
    return make(), ""


def image_level_data(design: LesionDesign, features: PooledFeatures, lesion_class: str) -> CellData:
    """Image-level rows: every image of train / test, target "has a box of the class", folds grouped by patient."""
    targets = image_level_targets(design.images, lesion_class)
    patients = np.asarray(design.patients)
    train = targets["split"].to_numpy() == TRAIN
    test_rows = targets.loc[targets["split"] == TEST]
    strata, note = _strata_or_note(lambda: assign_strata(targets, TEST), test_rows)
    ids = {TRAIN: targets.loc[train, "image_id"].tolist(), TEST: test_rows["image_id"].tolist()}
    labels = test_rows["label"].to_numpy()
    return CellData(
        y_train=targets.loc[train, "label"].to_numpy(),
        groups_train=patients[train],
        y_test=labels,
        strata_test=strata,
        strata_note=note,
        features=lambda pool, split: features.global_matrix(pool, ids[split]),
        test_areas=test_rows["area"].to_numpy(dtype=np.float64),
        test_owners=np.where(labels == 1, np.arange(labels.size), SHARED),
    )


def box_rows(features: PooledFeatures, pool: str, samples: Sequence[BoxSample]) -> np.ndarray:
    """Box-level rows of any pool: the image's global vector, or the local vector at the box."""
    if pool == features.local_name:
        return features.local_matrix([(s.image_id, s.box) for s in samples])
    return features.global_matrix(pool, [s.image_id for s in samples])


def box_level_data(samples: Sequence[BoxSample], features: PooledFeatures) -> CellData:
    """Box-level rows: each positive box and its size-matched negatives, folds grouped by source image."""
    frame = samples_frame(samples)
    split_of = frame["split"].to_numpy()
    by_split = {name: [s for s, sp in zip(samples, split_of, strict=True) if sp == name] for name in (TRAIN, TEST)}
    test_rows = frame.loc[frame["split"] == TEST]
    strata, note = _strata_or_note(lambda: box_level_strata(samples, TEST), test_rows)
    labels = test_rows["label"].to_numpy()
    return CellData(
        y_train=frame.loc[frame["split"] == TRAIN, "label"].to_numpy(),
        groups_train=frame.loc[frame["split"] == TRAIN, "group"].to_numpy(),
        y_test=labels,
        strata_test=strata,
        strata_note=note,
        features=lambda pool, split: box_rows(features, pool, by_split[split]),
        test_areas=np.where(labels == 1, test_rows["area"].to_numpy(dtype=np.float64), np.nan),
        test_owners=test_rows["source_box"].to_numpy(),
    )


def fit_cell(
    data: CellData,
    pools: Sequence[str],
    *,
    model: str,
    lesion_class: str,
    level: Level,
    config: ProbeConfig,
    n_boot: int,
) -> list[PoolFit] | Skipped:
    """One probe per pool on the same rows; every pool is scored on the same test rows and strata."""
    reason = fit_problem(data.y_train, data.groups_train, data.y_test, config.folds, config.seed)
    if reason:
        return Skipped(model, lesion_class, level, reason)
    fits = []
    for pool in pools:
        result = fit_probe(
            data.features(pool, TRAIN), data.y_train, data.groups_train, data.features(pool, TEST), data.y_test, config
        )
        interval = bootstrap_auc_ci(result.test_labels, result.test_scores, n_boot=n_boot, seed=config.seed)
        strata: dict[str, float] = {}
        counts = {Stratum.SMALL.value: 0, Stratum.LARGE.value: 0}
        if not data.strata_note:
            labels = data.strata_test["stratum"].to_numpy()
            strata = stratum_auc(result.test_labels, result.test_scores, labels)
            positives = data.strata_test["label"].to_numpy() == 1
            counts = {name: int(np.sum(positives & (labels == name))) for name in counts}
        fits.append(
            PoolFit(
                model=model,
                lesion_class=lesion_class,
                level=level,
                pool=pool,
                auc=result.auc,
                ci_low=interval.low,
                ci_high=interval.high,
                strata=strata,
                n_small=counts[Stratum.SMALL.value],
                n_large=counts[Stratum.LARGE.value],
                strata_note=data.strata_note,
                best_c=result.best_c,
                n_train=result.n_train,
                n_test=result.n_test,
                test_labels=result.test_labels,
                test_scores=result.test_scores,
                train_labels=result.train_labels,
                train_scores=result.train_scores,
                test_areas=data.test_areas,
                test_owners=data.test_owners,
            )
        )
    return fits


def study_source(
    design: LesionDesign,
    chosen: SourceDesign,
    features: PooledFeatures,
    *,
    model: str,
    config: ProbeConfig,
    n_boot: int,
) -> tuple[list[PoolFit], list[Skipped]]:
    """Image-level (global pools) and box-level (global and local pools) probes for every class of one source."""
    fits: list[PoolFit] = []
    skipped: list[Skipped] = []

    def collect(outcome: list[PoolFit] | Skipped) -> None:
        if isinstance(outcome, Skipped):
            skipped.append(outcome)
        else:
            fits.extend(outcome)

    settings = {"model": model, "config": config, "n_boot": n_boot}
    for name in design.classes:
        image_data = image_level_data(design, features, name)
        collect(fit_cell(image_data, tuple(features.global_pools), lesion_class=name, level=Level.IMAGE, **settings))
        if not chosen.samples[name]:
            skipped.append(Skipped(model, name, Level.BOX, "no box-level rows left for this source"))
            continue
        box_data = box_level_data(chosen.samples[name], features)
        collect(fit_cell(box_data, features.pools, lesion_class=name, level=Level.BOX, **settings))
    return fits, skipped


def fits_frame(fits: Sequence[PoolFit]) -> pd.DataFrame:
    """One row per probe (FIT_COLUMNS); stratum AUCs are NaN where the strata could not be formed."""
    rows = [
        (
            f.model,
            f.lesion_class,
            f.level.value,
            f.pool,
            f.auc,
            f.ci_low,
            f.ci_high,
            f.strata.get(Stratum.SMALL.value, math.nan),
            f.strata.get(Stratum.LARGE.value, math.nan),
            f.strata.get("gap", math.nan),
            f.n_train,
            f.n_test,
            int(f.test_labels.sum()),
            f.n_small,
            f.n_large,
            f.best_c,
            f.strata_note,
        )
        for f in fits
    ]
    return pd.DataFrame(rows, columns=list(FIT_COLUMNS))


def skipped_frame(skipped: Sequence[Skipped]) -> pd.DataFrame:
    return pd.DataFrame(
        [(s.model, s.lesion_class, s.level.value, s.reason) for s in skipped],
        columns=["model", "lesion_class", "level", "reason"],
    )


def paired_tests(
    fits: Sequence[PoolFit],
    *,
    pool_a: str = Pool.PATCH_LOCAL,
    pool_b: str = Pool.CLS,
    level: Level = Level.BOX,
    n_boot: int = 10000,
    seed: int = 42,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Delta AUC(pool_a) - AUC(pool_b) per (model, class), both scored on the SAME bootstrap resamples,
    with BH q-values over all the (model x class) cells tested together."""
    by_cell: dict[tuple[str, str], dict[str, PoolFit]] = {}
    for fit in fits:
        if fit.level is level:
            by_cell.setdefault((fit.model, fit.lesion_class), {})[fit.pool] = fit
    rows = []
    for (model, name), pools in by_cell.items():
        if pool_a not in pools or pool_b not in pools:
            continue
        a, b = pools[pool_a], pools[pool_b]
        if not np.array_equal(a.test_labels, b.test_labels):
            raise LesionStudyError(f"{model} / {name}: {pool_a} and {pool_b} were not scored on the same test rows")
        delta = paired_bootstrap_delta(a.test_labels, a.test_scores, b.test_scores, n_boot=n_boot, seed=seed)
        rows.append((model, name, a.auc, b.auc, delta.estimate, delta.low, delta.high, delta.p, a.n_test))
    columns = ["model", "lesion_class", f"auc_{pool_a}", f"auc_{pool_b}", "delta", "ci_low", "ci_high", "p", "n_test"]
    frame = pd.DataFrame(rows, columns=columns)
    rejected, q = benjamini_hochberg(frame["p"].to_numpy(), alpha=alpha)
    frame["q_bh"] = q
    frame["significant"] = rejected
    return frame


def design_summary(design: LesionDesign) -> pd.DataFrame:
    """Per class and split: images with the class, boxes, box-level negatives, and the median positive box area."""
    rows = []
    for name in design.classes:
        targets = image_level_targets(design.images, name)
        frame = samples_frame(design.samples[name])
        for split in sorted(set(targets["split"])):
            part = frame.loc[frame["split"] == split]
            positives = part.loc[part["label"] == 1, "area"]
            rows.append(
                {
                    "lesion_class": name,
                    "split": split,
                    "images": int((targets["split"] == split).sum()),
                    "positive_images": int(((targets["split"] == split) & (targets["label"] == 1)).sum()),
                    "positive_boxes": int(positives.size),
                    "negative_boxes": int((part["label"] == 0).sum()),
                    "median_box_area": float(np.median(positives)) if positives.size else math.nan,
                }
            )
    return pd.DataFrame(rows)
