"""Cohort summaries for the paper's tables: label prevalence per split, and lesion box sizes per class."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from lesionsignal.data.manifest import Manifest, Split


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


def _split_order(names: Iterable[str]) -> list[str]:
    """The known splits in their own order (train, validate, test), then any others by name."""
    known = [s.value for s in Split]
    present = set(names)
    return [s for s in known if s in present] + sorted(present - set(known))
