"""Natural-lesion analyses on box-annotated images (protocol section 7): targets, size strata, box-level samples.

Image level: an image is positive for class c when it has at least one class-c box; its size is the median
area of those boxes. Box level: one positive row per class-c box and, for each, negatives of the same size cut
from class-c-negative images of the same split. Strata split positives at a median; `stratum_auc` scores each
stratum against its negatives, so the gap large - small says how much harder small lesions are.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from lesionsignal.core.box import Box

TARGET_COLUMNS = ("image_id", "split", "label", "area")
SAMPLE_COLUMNS = (
    "image_id",
    "split",
    "lesion_class",
    "x1",
    "y1",
    "x2",
    "y2",
    "area",
    "label",
    "source_box",
    "group",
)


class LesionError(ValueError):
    """Bad lesion annotations or analysis input; the message names the image, split, class or column."""


class NegativePlacement(enum.Enum):
    """Where a box-level negative sits in its negative image."""

    SAME_POSITION = "same_position"  # the positive's coordinates: matches size AND position (default)
    UNIFORM = "uniform"  # anywhere fully inside the canvas (the authors' choice; may land on background)


class Stratum(enum.StrEnum):
    SMALL = "small"
    LARGE = "large"
    NEGATIVE = "negative"  # image-level negatives: shared by both size strata


@dataclass(frozen=True)
class LesionImage:
    """One annotated image: its boxes as (class, box) pairs in annotation order."""

    image_id: str
    split: str
    boxes: tuple[tuple[str, Box], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.image_id, str) or not self.image_id:
            raise LesionError(f"image_id: expected a non-empty string, got {self.image_id!r}")
        if not isinstance(self.split, str) or not self.split:
            raise LesionError(f"{self.image_id}: split must be a non-empty string, got {self.split!r}")
        for position, entry in enumerate(self.boxes):
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise LesionError(f"{self.image_id}: box {position} must be a (class, Box) pair, got {entry!r}")
            name, box = entry
            if not isinstance(name, str) or not name:
                raise LesionError(f"{self.image_id}: box {position} has class {name!r}, expected a non-empty string")
            if not isinstance(box, Box):
                raise LesionError(f"{self.image_id}: box {position} is {type(box).__name__}, expected Box")

    def boxes_of(self, lesion_class: str) -> tuple[Box, ...]:
        return tuple(box for name, box in self.boxes if name == lesion_class)


@dataclass(frozen=True)
class BoxSample:
    """One box-level row. ``source_box`` is the list index of the positive a negative was drawn for (a
    positive points at itself); ``group`` is the image the pixels come from, for grouped CV folds."""

    image_id: str
    split: str
    lesion_class: str
    box: Box
    label: int
    source_box: int
    group: str

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise LesionError(f"{self.image_id}: label must be 0 or 1, got {self.label!r}")


# ---------------------------------------------------------------------------------------------- image level


def _check_unique_ids(images: Sequence[LesionImage]) -> None:
    if not images:
        raise LesionError("images: empty; need at least one annotated image")
    seen: set[str] = set()
    for image in images:
        if image.image_id in seen:
            raise LesionError(f"{image.image_id}: image id appears more than once")
        seen.add(image.image_id)


def _check_class_present(images: Sequence[LesionImage], lesion_class: str) -> None:
    # A misspelt class would otherwise turn every image into a negative without complaint.
    if not any(image.boxes_of(lesion_class) for image in images):
        present = sorted({name for image in images for name, _ in image.boxes})
        raise LesionError(
            f"lesion_class {lesion_class!r}: no image has a box of this class; classes present: {present}"
        )


def image_level_targets(images: Sequence[LesionImage], lesion_class: str) -> pd.DataFrame:
    """One row per image: image_id, split, label (has a class box), area (median class-box area, NaN if none)."""
    _check_unique_ids(images)
    _check_class_present(images, lesion_class)
    rows = []
    for image in images:
        areas = [box.area for box in image.boxes_of(lesion_class)]
        area = float(np.median(areas)) if areas else math.nan
        rows.append((image.image_id, image.split, int(bool(areas)), area))
    frame = pd.DataFrame(rows, columns=list(TARGET_COLUMNS))
    return frame.astype({"label": np.int64, "area": np.float64})


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise LesionError(f"{name}: missing columns {missing}; has {list(frame.columns)}")


def _median_split(areas: pd.Series, where: str) -> pd.Series:
    """small / large per positive. Tie rule: an area equal to the median is small (area <= median)."""
    if areas.isna().any():
        row = areas.index[areas.isna()][0]
        raise LesionError(f"{where}: positive row {row!r} has no area")
    if (areas <= 0).any():
        row = areas.index[areas <= 0][0]
        raise LesionError(f"{where}: positive row {row!r} has non-positive area {areas[row]}")
    median = float(np.median(areas.to_numpy(dtype=np.float64)))
    small = areas <= median
    if small.all():
        raise LesionError(f"{where}: every positive area is <= the median {median}; the large stratum is empty")
    return small.map({True: Stratum.SMALL.value, False: Stratum.LARGE.value})


def assign_strata(frame: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The rows of ``split`` with a ``stratum`` column: positives small (area <= median of the split's positive
    areas, so ties at the median go to small) or large (area > median); negatives "negative", shared by both.

    The original index is kept so the rows can be matched to scores computed on the full frame.
    """
    _require_columns(frame, TARGET_COLUMNS, "frame")
    rows = frame.loc[frame["split"] == split].copy()
    bad = ~rows["label"].isin((0, 1))
    if bad.any():
        raise LesionError(f"frame row {rows.index[bad][0]!r}: label must be 0 or 1")
    positives = rows["label"] == 1
    if not positives.any():
        raise LesionError(f"split {split!r}: no positive rows to split into strata")
    if not (~positives).any():
        raise LesionError(f"split {split!r}: no negative rows to score the strata against")
    rows["stratum"] = Stratum.NEGATIVE.value
    rows.loc[positives, "stratum"] = _median_split(rows.loc[positives, "area"], f"split {split!r}")
    return rows


def stratum_auc(
    y: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, strata: Sequence[str]
) -> dict[str, float]:
    """AUC of each size stratum against its negatives, and gap = large - small.

    A stratum's rows are its own positives, any negatives labelled with that stratum (box level: size-matched),
    and every row labelled "negative" (image level: shared by both strata).
    """
    labels = np.asarray(y)
    values = np.asarray(scores, dtype=np.float64)
    names = np.asarray([str(s) for s in strata], dtype=object)
    if not (labels.ndim == values.ndim == names.ndim == 1 and labels.size == values.size == names.size):
        raise LesionError(
            f"y, scores, strata: need three 1-D sequences of one length, got {labels.shape}, "
            f"{values.shape}, {names.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise LesionError(f"y: labels must be 0 or 1; row {int(np.flatnonzero(~np.isin(labels, (0, 1)))[0])} is not")
    if not np.isfinite(values).all():
        raise LesionError(f"scores: row {int(np.flatnonzero(~np.isfinite(values))[0])} is not finite")
    known = {s.value for s in Stratum}
    unknown = sorted(set(names) - known)
    if unknown:
        raise LesionError(f"strata: unknown values {unknown}; expected {sorted(known)}")
    wrong = np.flatnonzero((labels == 1) & (names == Stratum.NEGATIVE.value))
    if wrong.size:
        raise LesionError(f"strata: row {int(wrong[0])} is a positive labelled {Stratum.NEGATIVE.value!r}")
    result: dict[str, float] = {}
    for stratum in (Stratum.SMALL, Stratum.LARGE):
        rows = (names == stratum.value) | (names == Stratum.NEGATIVE.value)
        n_pos = int(labels[rows].sum())
        if n_pos == 0 or n_pos == int(rows.sum()):
            raise LesionError(
                f"stratum {stratum.value!r}: needs positives and negatives, has {n_pos} of {int(rows.sum())}"
            )
        result[stratum.value] = float(roc_auc_score(labels[rows], values[rows]))
    result["gap"] = result[Stratum.LARGE.value] - result[Stratum.SMALL.value]
    return result


# ------------------------------------------------------------------------------------------------ box level


def _check_inside(image: LesionImage, box: Box, canvas: int) -> None:
    if box.x1 < 0 or box.y1 < 0 or box.x2 > canvas or box.y2 > canvas:
        raise LesionError(f"{image.image_id}: box {box.as_tuple()} is not inside the {canvas} x {canvas} canvas")


def _negative_pool(images: Sequence[LesionImage], lesion_class: str) -> Mapping[str, tuple[LesionImage, ...]]:
    """Per split, the images without any box of the class (other classes' boxes are allowed)."""
    pool: dict[str, list[LesionImage]] = {}
    for image in images:
        pool.setdefault(image.split, [])
        if not image.boxes_of(lesion_class):
            pool[image.split].append(image)
    return {split: tuple(members) for split, members in pool.items()}


def _draw_images(rng: np.random.Generator, n_candidates: int, k: int) -> np.ndarray:
    """k candidate indices, all different when k <= n_candidates; otherwise every candidate is used before any
    repeats (successive permutations), so a small pool is spread as evenly as it can be."""
    rounds = -(-k // n_candidates)
    return np.concatenate([rng.permutation(n_candidates) for _ in range(rounds)])[:k]


def _place(rng: np.random.Generator, positive: Box, placement: NegativePlacement, canvas: int) -> Box:
    if placement is NegativePlacement.SAME_POSITION:
        return positive
    # y then x, as everywhere else in the project.
    y1 = int(rng.integers(0, canvas - positive.height + 1))
    x1 = int(rng.integers(0, canvas - positive.width + 1))
    return Box(x1, y1, x1 + positive.width, y1 + positive.height)


def box_level_samples(
    images: Sequence[LesionImage],
    lesion_class: str,
    *,
    negatives_per_positive: int = 2,
    placement: NegativePlacement = NegativePlacement.SAME_POSITION,
    canvas: int = 1024,
    seed: int = 42,
) -> list[BoxSample]:
    """Each class box as a positive row, followed by its negatives: boxes of the same size from distinct random
    class-negative images of the same split, at the positive's coordinates or (UNIFORM) anywhere in the canvas.

    One generator, ``default_rng(seed)``, is consumed positive by positive in input order, so the result depends
    only on the inputs and the seed.
    """
    if (
        isinstance(negatives_per_positive, bool)
        or not isinstance(negatives_per_positive, int)
        or negatives_per_positive < 1
    ):
        raise LesionError(f"negatives_per_positive: must be a positive integer, got {negatives_per_positive!r}")
    if not isinstance(placement, NegativePlacement):
        raise LesionError(f"placement: expected a NegativePlacement, got {placement!r}")
    if canvas < 1:
        raise LesionError(f"canvas: must be positive, got {canvas}")
    _check_unique_ids(images)
    _check_class_present(images, lesion_class)
    pool = _negative_pool(images, lesion_class)
    rng = np.random.default_rng(seed)
    samples: list[BoxSample] = []
    for image in images:
        for box in image.boxes_of(lesion_class):
            _check_inside(image, box, canvas)
            candidates = pool[image.split]
            if not candidates:
                raise LesionError(
                    f"split {image.split!r}, class {lesion_class!r}: no class-negative image to draw negatives from"
                )
            own = len(samples)
            samples.append(BoxSample(image.image_id, image.split, lesion_class, box, 1, own, image.image_id))
            for pick in _draw_images(rng, len(candidates), negatives_per_positive):
                negative = candidates[int(pick)]
                where = _place(rng, box, placement, canvas)
                samples.append(
                    BoxSample(negative.image_id, negative.split, lesion_class, where, 0, own, negative.image_id)
                )
    return samples


def samples_frame(samples: Sequence[BoxSample]) -> pd.DataFrame:
    """The samples as a table, one row per sample, indexed by the sample's position in the list."""
    rows = [
        (s.image_id, s.split, s.lesion_class, *s.box.as_tuple(), s.box.area, s.label, s.source_box, s.group)
        for s in samples
    ]
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS)).astype({"area": np.float64})


def box_level_strata(samples: Sequence[BoxSample], split: str = "test") -> pd.DataFrame:
    """The samples of ``split`` (see `samples_frame`, index = position in ``samples``) with a ``stratum`` column.

    Positives are small (box area <= median positive box area of the split; ties go to small) or large; each
    negative takes the stratum of the positive it was drawn for, so both strata are size-matched.
    """
    frame = samples_frame(samples)
    rows = frame.loc[frame["split"] == split].copy()
    positives = rows["label"] == 1
    if not positives.any():
        raise LesionError(f"split {split!r}: no positive box samples to split into strata")
    rows["stratum"] = ""
    rows.loc[positives, "stratum"] = _median_split(rows.loc[positives, "area"], f"split {split!r}")
    negatives = rows.index[~positives]
    sources = rows.loc[negatives, "source_box"].to_numpy()
    orphan = [
        int(n) for n, s in zip(negatives, sources, strict=True) if s not in rows.index or rows.at[s, "label"] != 1
    ]
    if orphan:
        raise LesionError(f"sample {orphan[0]}: its source_box is not a positive sample of split {split!r}")
    rows.loc[negatives, "stratum"] = rows.loc[sources, "stratum"].to_numpy()
    return rows
