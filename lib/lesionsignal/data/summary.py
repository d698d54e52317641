"""Cohort summaries for the paper's tables: label prevalence per split, lesion box sizes per class, and the
patients a split shares with another."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from lesionsignal.data.manifest import Manifest, PatientIds, Split, SplitPolicy


def describe(manifest: Manifest) -> pd.DataFrame:
    """Per split (and "all") and label: images, patients, positives and prevalence."""
    frame = manifest.frame()
    parts = [(name, frame[frame["split"] == name]) for name in _split_order(frame["split"])]
    rows = [
        {
            "split": split,
            "label": label,
            "images": len(part),
            "patients": part["patient_id"].nunique(),
            "positives": int(part[label].sum()),
            "prevalence": float(part[label].mean()) if len(part) else math.nan,
        }
        for split, part in [*parts, ("all", frame)]
        for label in manifest.label_names
    ]
    return pd.DataFrame(rows, columns=["split", "label", "images", "patients", "positives", "prevalence"])


def box_size_summary(manifest: Manifest) -> pd.DataFrame:
    """Per split (and "all") and box class: boxes, images, median / quartile area and median side in px."""
    boxes = manifest.boxes_frame()
    boxes["side"] = np.sqrt(boxes["area"].astype(float))
    classes = [c for c in manifest.label_names if c in set(boxes["label"])]
    classes += sorted(set(boxes["label"]) - set(classes))
    parts = [(name, boxes[boxes["split"] == name]) for name in _split_order(boxes["split"])]
    rows = []
    for split, part in [*parts, ("all", boxes)]:
        for label in classes:
            chosen = part[part["label"] == label]
            if chosen.empty:
                continue
            q1, median, q3 = np.percentile(chosen["area"], [25, 50, 75])
            rows.append(
                {
                    "split": split,
                    "label": label,
                    "is_target": label in manifest.label_names,
                    "boxes": len(chosen),
                    "images": chosen["image_id"].nunique(),
                    "area_median": float(median),
                    "area_q1": float(q1),
                    "area_q3": float(q3),
                    "area_iqr": float(q3 - q1),
                    "side_median": float(chosen["side"].median()),
                    "width_median": float(chosen["width"].median()),
                    "height_median": float(chosen["height"].median()),
                }
            )
    columns = ["split", "label", "is_target", "boxes", "images", "area_median", "area_q1", "area_q3"]
    columns += ["area_iqr", "side_median", "width_median", "height_median"]
    return pd.DataFrame(rows, columns=columns)


SPLIT_OVERLAP_COLUMNS = (
    "split",
    "images",
    "patients",
    "shared_patients",  # patients of this split with images in another split too
    "shared_images",  # this split's images of those patients
    "split_policy",
    "patient_ids",
)


def split_overlap(manifest: Manifest) -> pd.DataFrame:
    """Per split (and "all"): images, patients, and the patients (and their images) shared with another split.

    On "all", the shared counts are over every split. ``split_policy`` and ``patient_ids`` repeat the manifest's
    declarations, so the table says whether an overlap was allowed and whether patients could be seen at all.
    """
    frame = manifest.frame()[["patient_id", "split"]]
    splits_of_patient = frame.groupby("patient_id")["split"].nunique()
    shared = set(splits_of_patient[splits_of_patient > 1].index)
    parts = [(name, frame[frame["split"] == name]) for name in _split_order(frame["split"])]
    rows = [
        (
            split,
            len(part),
            part["patient_id"].nunique(),
            len(shared & set(part["patient_id"])),
            int(part["patient_id"].isin(shared).sum()),
            manifest.split_policy.value,
            manifest.patient_ids.value,
        )
        for split, part in [*parts, ("all", frame)]
    ]
    return pd.DataFrame(rows, columns=list(SPLIT_OVERLAP_COLUMNS))


def split_notes(manifest: Manifest) -> list[str]:
    """Sentences a report prints beside a cohort whose split or patient ids are not the usual guarantee."""
    notes = []
    unknown = manifest.patient_ids is PatientIds.PER_IMAGE
    if manifest.split_policy is SplitPolicy.OVERLAP_REPORTED and unknown:
        notes.append(
            f"{manifest.cohort}: the published split is kept; it may put a patient's images on both sides, "
            "which cannot be counted without patient ids."
        )
    elif manifest.split_policy is SplitPolicy.OVERLAP_REPORTED:
        table = split_overlap(manifest).set_index("split")
        per_split = ", ".join(f"{table.at[s, 'shared_images']:,} {s}" for s in table.index if s != "all")
        notes.append(
            f"{manifest.cohort}: the published split is kept although {table.at['all', 'shared_patients']:,} "
            f"patients have images on both sides ({per_split} images); results on it are not patient-disjoint."
        )
    if unknown:
        notes.append(
            f"{manifest.cohort}: the source names no patients, so each image is its own patient: grouped "
            "cross-validation cannot keep a patient's images together."
        )
    return notes


def _split_order(names: Iterable[str]) -> list[str]:
    """The known splits in their own order (train, validate, test), then any others by name."""
    known = [s.value for s in Split]
    present = set(names)
    return [s for s in known if s in present] + sorted(present - set(known))
