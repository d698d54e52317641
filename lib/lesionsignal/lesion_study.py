"""The natural-lesion study (SPEC section 7) on box-annotated cohorts: extraction at the analysis boxes, probes.

The design comes first and from the manifest alone: the image-level targets and, per class, the box-level rows
(each positive box and its size-matched negatives, `lesions.box_level_samples`). Only then is each image encoded,
once per feature source, and pooled globally and at exactly the boxes the design asks of that image. Units of
image chunks are content-keyed by the source, the images AND their box lists, written atomically and resumed like
the panel extraction (`lesionsignal.extract`).

An encoder whose centre crop cuts a box away entirely cannot pool there (SPEC section 3: an error for that
sample, never a fall-back). Such rows leave that encoder's analysis with everything drawn for them, and are listed.

On top of the vectors: image-level probes (CLS, patch-mean) and box-level probes (CLS, patch-mean, patch-local)
with their small / large strata at the median positive area, and the paired bootstrap of patch-local minus CLS
on shared resamples with Benjamini-Hochberg over the (model x class) cells.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lesionsignal import extract
from lesionsignal.arrays import load_arrays, save_arrays
from lesionsignal.extract import ImageItem, code_digest, load_canvases, repeated
from lesionsignal.features import EncoderFeatures, FeatureSource, stable_digest
from lesionsignal.geometry import BoxOutsideCrop
from lesionsignal.lesions import (
    BoxSample,
    LesionImage,
    Placement,
    Stratum,
    assign_strata,
    box_level_samples,
    box_level_strata,
    image_level_targets,
    samples_frame,
    stratum_auc,
)
from lesionsignal.manifest import Manifest
from lesionsignal.perturb import Box
from lesionsignal.probe import ProbeConfig, ProbeError, fit_probe, grouped_stratified_folds
from lesionsignal.stats import benjamini_hochberg, bootstrap_auc_ci, paired_bootstrap_delta

# Bump when the layout of a unit file changes; the pooled values themselves are covered by extract.code_digest().
UNIT_FORMAT = 1
TRAIN, TEST = "train", "test"
LOCAL_POOL = "patch_local"
GLOBAL_POOL = "cls"
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
EXCLUSION_COLUMNS = ("model", "lesion_class", "image_id", "split", "label", "x1", "y1", "x2", "y2", "reason")


class LesionStudyError(ValueError):
    """Input the lesion study cannot use; the message names the cohort, source, image, box or class."""


class Level(enum.StrEnum):
    IMAGE = "image"  # target: the image has a box of the class; pools of the whole image
    BOX = "box"  # target: the box is a lesion; pools of the whole image and over the box


# ---------------------------------------------------------------------------------------------------- design


@dataclass(frozen=True)
class LesionDesign:
    """Everything decided before any pixel is read: images, their patients, and the box-level rows per class."""

    cohort: str
    images: tuple[LesionImage, ...]
    items: tuple[ImageItem, ...]  # aligned with ``images``
    patients: tuple[str, ...]  # aligned with ``images``: CV folds of image-level probes are grouped by patient
    samples: Mapping[str, tuple[BoxSample, ...]]  # per lesion class, in ``classes`` order
    classes: tuple[str, ...]
    canvas_size: int


def lesion_images(manifest: Manifest) -> list[LesionImage]:
    """Each record as a LesionImage carrying every box of every class (other classes' boxes are harmless)."""
    images = []
    for record in manifest.records:
        try:
            boxes = tuple((b.label, Box(b.x1, b.y1, b.x2, b.y2)) for b in record.boxes)
        except ValueError as err:
            raise LesionStudyError(f"cohort {manifest.cohort!r}, image {record.image_id}: bad box ({err})") from err
        images.append(LesionImage(record.image_id, record.split, boxes))
    return images


def lesion_design(
    manifest: Manifest,
    classes: Sequence[str],
    *,
    negatives_per_positive: int = 2,
    placement: Placement = Placement.SAME_POSITION,
    seed: int = 42,
    canvas_size: int = 1024,
) -> LesionDesign:
    """The study's rows, from the manifest alone: deterministic for fixed inputs and seed."""
    if not classes:
        raise LesionStudyError(f"cohort {manifest.cohort!r}: no lesion classes to analyse")
    images = lesion_images(manifest)
    samples = {
        name: tuple(
            box_level_samples(
                images,
                name,
                negatives_per_positive=negatives_per_positive,
                placement=placement,
                canvas=canvas_size,
                seed=seed,
            )
        )
        for name in classes
    }
    return LesionDesign(
        cohort=manifest.cohort,
        images=tuple(images),
        items=tuple(ImageItem(r.image_id, r.path, r.window) for r in manifest.records),
        patients=tuple(r.patient_id for r in manifest.records),
        samples=samples,
        classes=tuple(classes),
        canvas_size=canvas_size,
    )


def box_visible(source: FeatureSource, box: Box, canvas_size: int) -> bool:
    """Whether ``source`` can pool at ``box``: an encoder needs some of the box left after its resize and crop."""
    if not isinstance(source, EncoderFeatures):
        return True  # pixel windows are shifted onto the canvas, never lost
    try:
        source.spec.geometry.token_mask(box.as_tuple(), canvas=canvas_size)
    except BoxOutsideCrop:
        return False
    return True


def visible_samples(
    samples: Sequence[BoxSample], visible: Callable[[Box], bool]
) -> tuple[list[BoxSample], list[BoxSample]]:
    """(kept, dropped): a positive the source cannot see leaves with its negatives; an unseen negative alone.

    ``source_box`` of the kept rows is renumbered to positions in the kept list.
    """
    positions: dict[int, int] = {}
    kept: list[BoxSample] = []
    dropped: list[BoxSample] = []
    for position, sample in enumerate(samples):
        if sample.label == 1:
            if visible(sample.box):
                positions[position] = len(kept)
                kept.append(replace(sample, source_box=len(kept)))
            else:
                dropped.append(sample)
        elif sample.source_box in positions and visible(sample.box):
            kept.append(replace(sample, source_box=positions[sample.source_box]))
        else:
            dropped.append(sample)
    return kept, dropped


@dataclass(frozen=True)
class SourceDesign:
    """One source's share of the design: the rows it can pool, the boxes per image, and what it had to drop."""

    samples: Mapping[str, tuple[BoxSample, ...]]
    boxes: tuple[tuple[Box, ...], ...]  # aligned with design.items: sorted, unique boxes to pool at
    exclusions: pd.DataFrame


def source_design(design: LesionDesign, source: FeatureSource) -> SourceDesign:
    """Filter the design's rows to what ``source`` can see and list every box each image must be pooled at."""
    seen: dict[Box, bool] = {}

    def visible(box: Box) -> bool:
        if box not in seen:
            seen[box] = box_visible(source, box, design.canvas_size)
        return seen[box]

    kept_by_class: dict[str, tuple[BoxSample, ...]] = {}
    excluded = []
    for name in design.classes:
        kept, dropped = visible_samples(design.samples[name], visible)
        kept_by_class[name] = tuple(kept)
        for s in dropped:
            reason = (
                "box wholly outside the encoder's crop"
                if not visible(s.box)
                else "drawn for a positive box outside the encoder's crop"
            )
            excluded.append((source.source_id, name, s.image_id, s.split, s.label, *s.box.as_tuple(), reason))
    wanted: dict[str, set[Box]] = {item.image_id: set() for item in design.items}
    for rows in kept_by_class.values():
        for sample in rows:
            wanted[sample.image_id].add(sample.box)
    boxes = tuple(tuple(sorted(wanted[item.image_id], key=Box.as_tuple)) for item in design.items)
    exclusions = pd.DataFrame(excluded, columns=list(EXCLUSION_COLUMNS))
    return SourceDesign(kept_by_class, boxes, exclusions)


# ------------------------------------------------------------------------------------------------ extraction


@dataclass(frozen=True)
class LesionUnit:
    index: int
    items: tuple[ImageItem, ...]
    boxes: tuple[tuple[Box, ...], ...]  # aligned with items
    key: str


@dataclass(frozen=True)
class LesionPlan:
    source_id: str
    cohort: str
    canvas_size: int
    units: tuple[LesionUnit, ...]


def make_lesion_plan(
    source: FeatureSource,
    cohort: str,
    items: Sequence[ImageItem],
    boxes: Sequence[Sequence[Box]],
    canvas_size: int = 1024,
    chunk_size: int = 64,
) -> LesionPlan:
    """Cut the images into units of ``chunk_size``; each unit's key covers the source, images and box lists."""
    if not items:
        raise LesionStudyError(f"cohort {cohort!r}: no images to extract")
    if len(boxes) != len(items):
        raise LesionStudyError(f"cohort {cohort!r}: {len(boxes)} box lists for {len(items)} images")
    duplicates = repeated(item.image_id for item in items)
    if duplicates:
        raise LesionStudyError(f"cohort {cohort!r}: duplicate image ids {duplicates[:10]}")
    if chunk_size < 1:
        raise LesionStudyError(f"chunk_size must be positive, got {chunk_size}")
    code = code_digest()
    units = []
    for start in range(0, len(items), chunk_size):
        chunk = tuple(items[start : start + chunk_size])
        chunk_boxes = tuple(tuple(b) for b in boxes[start : start + chunk_size])
        described = [
            (*item.fingerprint(), item.window, [b.as_tuple() for b in image_boxes])
            for item, image_boxes in zip(chunk, chunk_boxes, strict=True)
        ]
        key = stable_digest("lesion-unit", UNIT_FORMAT, source.key, canvas_size, described, code)
        units.append(LesionUnit(len(units), chunk, chunk_boxes, key))
    return LesionPlan(source.source_id, cohort, canvas_size, tuple(units))


def lesion_unit_path(work: Path, plan: LesionPlan, unit: LesionUnit) -> Path:
    return work / "lesion_units" / plan.source_id / unit.key[:2] / f"{unit.key}.npz"


@dataclass(frozen=True, eq=False)
class LesionFeatures:
    """One source's vectors over a cohort: global pools per image, and the local pool at each extracted box."""

    source_id: str
    image_ids: np.ndarray  # (N,)
    global_pools: Mapping[str, np.ndarray]  # name -> (N, D)
    local_name: str
    local: np.ndarray  # (M, D)
    box_image: np.ndarray  # (M,) row of image_ids each local vector belongs to
    boxes: np.ndarray  # (M, 4) x1, y1, x2, y2
    _image_rows: dict[str, int] = field(init=False, repr=False)
    _box_rows: dict[tuple[str, tuple[int, int, int, int]], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        image_rows = {str(i): row for row, i in enumerate(self.image_ids)}
        box_rows = {
            (str(self.image_ids[owner]), tuple(int(v) for v in box)): row
            for row, (owner, box) in enumerate(zip(self.box_image, self.boxes, strict=True))
        }
        object.__setattr__(self, "_image_rows", image_rows)
        object.__setattr__(self, "_box_rows", box_rows)

    @property
    def pools(self) -> tuple[str, ...]:
        return (*self.global_pools, self.local_name)

    def global_matrix(self, pool: str, image_ids: Sequence[str]) -> np.ndarray:
        """Rows of a global pool for the given images, in their order."""
        if pool not in self.global_pools:
            raise LesionStudyError(f"{self.source_id}: no global pool {pool!r} (have {list(self.global_pools)})")
        missing = [i for i in image_ids if i not in self._image_rows]
        if missing:
            raise LesionStudyError(f"{self.source_id}: images not extracted: {missing[:5]}")
        return self.global_pools[pool][[self._image_rows[i] for i in image_ids]]

    def local_matrix(self, samples: Sequence[BoxSample]) -> np.ndarray:
        """The local pool at each sample's box in its own image."""
        rows = []
        for sample in samples:
            row = self._box_rows.get((sample.image_id, sample.box.as_tuple()))
            if row is None:
                raise LesionStudyError(
                    f"{self.source_id}: box {sample.box.as_tuple()} of {sample.image_id} was not extracted"
                )
            rows.append(row)
        return self.local[rows]

    def matrix(self, pool: str, samples: Sequence[BoxSample]) -> np.ndarray:
        """Box-level rows of any pool: the image's global vector, or the local vector at the box."""
        if pool == self.local_name:
            return self.local_matrix(samples)
        return self.global_matrix(pool, [s.image_id for s in samples])


@dataclass(frozen=True)
class LesionExtraction:
    features: LesionFeatures
    units_total: int
    units_cached: int
    images_encoded: int
    seconds: float


def _unit_arrays(source: FeatureSource, canvases: np.ndarray, unit: LesionUnit) -> dict[str, np.ndarray]:
    pooled = source.pool(canvases, [list(b) for b in unit.boxes])
    arrays = {name: np.asarray(v, dtype=np.float32) for name, v in pooled.global_pools.items()}
    arrays["image_ids"] = np.asarray([item.image_id for item in unit.items])
    counts = [len(b) for b in unit.boxes]
    arrays["box_image"] = np.repeat(np.arange(len(unit.items), dtype=np.int32), counts)
    flat = [b.as_tuple() for image_boxes in unit.boxes for b in image_boxes]
    arrays["boxes"] = np.asarray(flat, dtype=np.int32).reshape(len(flat), 4)
    if pooled.local.shape[0] != len(flat):
        found = pooled.local.shape[0]
        raise LesionStudyError(f"{source.source_id}: pooled {found} local vectors for {len(flat)} boxes")
    arrays[source.local_name] = np.asarray(pooled.local, dtype=np.float32)
    return arrays


def _check_jobs(jobs: Sequence[tuple[FeatureSource, LesionPlan]]) -> None:
    if not jobs:
        raise LesionStudyError("no feature sources to extract")
    first = jobs[0][1]
    for source, plan in jobs:
        if source.source_id != plan.source_id:
            raise LesionStudyError(f"plan for {plan.source_id!r} paired with source {source.source_id!r}")
        same = plan.canvas_size == first.canvas_size and [[i.image_id for i in u.items] for u in plan.units] == [
            [i.image_id for i in u.items] for u in first.units
        ]
        if not same:
            raise LesionStudyError(f"{plan.source_id}: plans extracted together must share images and chunks")


def run_lesion_extraction(
    jobs: Sequence[tuple[FeatureSource, LesionPlan]],
    work: Path,
    *,
    workers: int = 2,
    progress: bool = True,
    on_unit_done: Callable[[LesionUnit], None] | None = None,
) -> list[LesionExtraction]:
    """Compute every missing unit (each chunk decoded once for all sources), then read every source's vectors."""
    _check_jobs(jobs)
    first = jobs[0][1]
    pending = [
        [j for j, (_, plan) in enumerate(jobs) if not lesion_unit_path(work, plan, plan.units[u]).is_file()]
        for u in range(len(first.units))
    ]
    todo = [u for u in range(len(first.units)) if pending[u]]
    cached = [sum(1 for u in range(len(first.units)) if j not in pending[u]) for j in range(len(jobs))]
    encoded = [0] * len(jobs)
    geometry = extract.Placement(canvas_size=first.canvas_size)  # load_canvases reads only the canvas size
    started = time.perf_counter()
    bar = _progress(sum(len(first.units[u].items) for u in todo), first, progress, len(jobs))
    # `ahead` decodes the next chunk while the models run; it waits on `pool`, so it must not be one of its threads.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as ahead:

        def decode(u: int) -> np.ndarray:
            return load_canvases(first.units[u].items, geometry, pool)

        upcoming: Future | None = ahead.submit(decode, todo[0]) if todo else None
        for position, u in enumerate(todo):
            canvases = upcoming.result()
            upcoming = ahead.submit(decode, todo[position + 1]) if position + 1 < len(todo) else None
            for j in pending[u]:
                source, plan = jobs[j]
                unit = plan.units[u]
                save_arrays(lesion_unit_path(work, plan, unit), _unit_arrays(source, canvases, unit))
                encoded[j] += len(unit.items)
                if on_unit_done is not None:
                    on_unit_done(unit)
            if bar is not None:
                bar.update(len(first.units[u].items))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    return [
        LesionExtraction(read_lesion_features(source, plan, work), len(plan.units), cached[j], encoded[j], seconds)
        for j, (source, plan) in enumerate(jobs)
    ]


def _progress(total: int, plan: LesionPlan, enabled: bool, sources: int) -> object | None:
    if not enabled or not total:
        return None
    from tqdm.auto import tqdm

    label = plan.source_id if sources == 1 else f"{sources} sources"
    return tqdm(total=total, desc=f"{label} / {plan.cohort} lesions", unit="img", smoothing=0.1)


def read_lesion_features(source: FeatureSource, plan: LesionPlan, work: Path) -> LesionFeatures:
    """Join a plan's units (all must exist) into one source's vectors."""
    missing = [u for u in plan.units if not lesion_unit_path(work, plan, u).is_file()]
    if missing:
        raise LesionStudyError(f"{plan.source_id} / {plan.cohort}: {len(missing)} lesion units not extracted yet")
    required = ("image_ids", "box_image", "boxes", source.local_name, *source.global_names)
    parts = [load_arrays(lesion_unit_path(work, plan, u), required) for u in plan.units]
    offsets = np.cumsum([0] + [len(p["image_ids"]) for p in parts[:-1]])
    return LesionFeatures(
        source_id=plan.source_id,
        image_ids=np.concatenate([p["image_ids"] for p in parts]),
        global_pools={name: np.concatenate([p[name] for p in parts]) for name in source.global_names},
        local_name=source.local_name,
        local=np.concatenate([p[source.local_name] for p in parts]),
        box_image=np.concatenate([p["box_image"] + off for p, off in zip(parts, offsets, strict=True)]),
        boxes=np.concatenate([p["boxes"] for p in parts]),
    )


# ---------------------------------------------------------------------------------------------------- probes


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


def image_level_data(design: LesionDesign, features: LesionFeatures, lesion_class: str) -> CellData:
    """Image-level rows: every image of train / test, target "has a box of the class", folds grouped by patient."""
    targets = image_level_targets(design.images, lesion_class)
    patients = np.asarray(design.patients)
    train = targets["split"].to_numpy() == TRAIN
    test_rows = targets.loc[targets["split"] == TEST]
    strata, note = _strata_or_note(lambda: assign_strata(targets, TEST), test_rows)
    ids = {TRAIN: targets.loc[train, "image_id"].tolist(), TEST: test_rows["image_id"].tolist()}
    return CellData(
        y_train=targets.loc[train, "label"].to_numpy(),
        groups_train=patients[train],
        y_test=test_rows["label"].to_numpy(),
        strata_test=strata,
        strata_note=note,
        features=lambda pool, split: features.global_matrix(pool, ids[split]),
    )


def box_level_data(samples: Sequence[BoxSample], features: LesionFeatures) -> CellData:
    """Box-level rows: each positive box and its size-matched negatives, folds grouped by source image."""
    frame = samples_frame(samples)
    split_of = frame["split"].to_numpy()
    by_split = {name: [s for s, sp in zip(samples, split_of, strict=True) if sp == name] for name in (TRAIN, TEST)}
    test_rows = frame.loc[frame["split"] == TEST]
    strata, note = _strata_or_note(lambda: box_level_strata(samples, TEST), test_rows)
    return CellData(
        y_train=frame.loc[frame["split"] == TRAIN, "label"].to_numpy(),
        groups_train=frame.loc[frame["split"] == TRAIN, "group"].to_numpy(),
        y_test=test_rows["label"].to_numpy(),
        strata_test=strata,
        strata_note=note,
        features=lambda pool, split: features.matrix(pool, by_split[split]),
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
            )
        )
    return fits


def study_source(
    design: LesionDesign,
    chosen: SourceDesign,
    features: LesionFeatures,
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
    pool_a: str = LOCAL_POOL,
    pool_b: str = GLOBAL_POOL,
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


# --------------------------------------------------------------------------------------------------- figures

_POOL_COLOURS = {"cls": "#4c72b0", "patch_mean": "#55a868", "patch_local": "#c44e52"}
_FALLBACK_COLOURS = ("#8172b2", "#937860", "#da8bc3", "#8c8c8c")


def _colour(pool: str, order: Sequence[str]) -> str:
    return _POOL_COLOURS.get(pool, _FALLBACK_COLOURS[list(order).index(pool) % len(_FALLBACK_COLOURS)])


def plot_pool_aucs(frame: pd.DataFrame, level: Level, title: str) -> Figure:
    """Test AUC with its 95 % CI by pool and model, one panel per lesion class (rows of ``fits_frame``)."""
    part = frame.loc[frame["level"] == level.value]
    if part.empty:
        raise LesionStudyError(f"no {level.value}-level results to plot")
    classes = list(dict.fromkeys(part["lesion_class"]))
    models = list(dict.fromkeys(part["model"]))
    pools = list(dict.fromkeys(part["pool"]))
    figure = Figure(figsize=(1.2 + 1.1 * len(models) * len(classes), 3.6), layout="constrained")
    axes = figure.subplots(1, len(classes), squeeze=False, sharey=True)[0]
    width = 0.8 / len(pools)
    for ax, name in zip(axes, classes, strict=True):
        for k, pool in enumerate(pools):
            rows = part.loc[(part["lesion_class"] == name) & (part["pool"] == pool)].set_index("model")
            x = np.arange(len(models)) + (k - (len(pools) - 1) / 2) * width
            auc = rows["auc"].reindex(models).to_numpy(dtype=float)
            low = auc - rows["ci_low"].reindex(models).to_numpy(dtype=float)
            high = rows["ci_high"].reindex(models).to_numpy(dtype=float) - auc
            ax.bar(x, auc - 0.5, width, bottom=0.5, color=_colour(pool, pools), label=pool)
            ax.errorbar(x, auc, yerr=[low, high], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_title(name)
        ax.set_ylim(0.3, 1.0)
    axes[0].set_ylabel("test AUC (95 % CI)")
    axes[-1].legend(fontsize="small", loc="lower right")
    figure.suptitle(title)
    return figure


def plot_stratum_gaps(frame: pd.DataFrame, title: str) -> Figure:
    """Gap AUC(large) - AUC(small) by pool and model, one row of panels per level, one column per class."""
    part = frame.dropna(subset=["gap"])
    if part.empty:
        raise LesionStudyError("no stratum gaps to plot (no class had both a small and a large stratum)")
    levels = [lv for lv in (Level.IMAGE.value, Level.BOX.value) if (part["level"] == lv).any()]
    classes = list(dict.fromkeys(part["lesion_class"]))
    models = list(dict.fromkeys(part["model"]))
    pools = list(dict.fromkeys(part["pool"]))
    figure = Figure(figsize=(1.2 + 1.1 * len(models) * len(classes), 2.9 * len(levels)), layout="constrained")
    axes = figure.subplots(len(levels), len(classes), squeeze=False, sharey=True)
    width = 0.8 / len(pools)
    for r, level in enumerate(levels):
        for c, name in enumerate(classes):
            ax = axes[r, c]
            cell = part.loc[(part["level"] == level) & (part["lesion_class"] == name)]
            for k, pool in enumerate(pools):
                gaps = cell.loc[cell["pool"] == pool].set_index("model")["gap"].reindex(models)
                x = np.arange(len(models)) + (k - (len(pools) - 1) / 2) * width
                ax.bar(x, gaps.to_numpy(dtype=float), width, color=_colour(pool, pools), label=pool)
            ax.axhline(0.0, color="grey", linewidth=0.8)
            ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{name}, {level} level", fontsize=9)
        axes[r, 0].set_ylabel("AUC(large) - AUC(small)")
    axes[0, -1].legend(fontsize="small")
    figure.suptitle(title)
    return figure
