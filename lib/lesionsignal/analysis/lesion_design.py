"""The natural-lesion design (protocol section 7), decided from the manifest alone before any pixel is read.

The image-level targets and, per class, the box-level rows (each positive box and its size-matched negatives,
``lesions.box_level_samples``); then, per feature source, the rows it can pool and the boxes each image must be
pooled at. An encoder whose centre crop cuts a box away entirely cannot pool there (an error for that sample, never
a fall-back): such rows leave that encoder's analysis with everything drawn for them, and are listed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import pandas as pd

from lesionsignal.analysis.lesions import (
    BoxSample,
    LesionImage,
    NegativePlacement,
    box_level_samples,
)
from lesionsignal.core.box import Box
from lesionsignal.data.images import ImageItem
from lesionsignal.data.manifest import Manifest
from lesionsignal.features.pools import FeatureSource

EXCLUSION_COLUMNS = ("model", "lesion_class", "image_id", "split", "label", "x1", "y1", "x2", "y2", "reason")


class LesionStudyError(ValueError):
    """Input the lesion study cannot use; the message names the cohort, source, image, box or class."""


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
            boxes = tuple((b.label, b.box.checked()) for b in record.boxes)
        except ValueError as err:
            raise LesionStudyError(f"cohort {manifest.cohort!r}, image {record.image_id}: bad box ({err})") from err
        images.append(LesionImage(record.image_id, record.split, boxes))
    return images


def lesion_design(
    manifest: Manifest,
    classes: Sequence[str],
    *,
    negatives_per_positive: int = 2,
    placement: NegativePlacement = NegativePlacement.SAME_POSITION,
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
        items=tuple(r.item for r in manifest.records),
        patients=tuple(r.patient_id for r in manifest.records),
        samples=samples,
        classes=tuple(classes),
        canvas_size=canvas_size,
    )


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
            seen[box] = source.can_pool(box, design.canvas_size)
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
