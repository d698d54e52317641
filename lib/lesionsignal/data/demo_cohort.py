"""The rendered demo cohort read into the common manifest: labels.csv, images/ and ChestX-Det10-style boxes.

The folder is written by ``lesionsignal.demo.build``; it carries the three disease labels in labels.csv and its
lesion boxes in train.json / test.json, the format of ChestX-Det10, so it exercises that reader's code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lesionsignal.data.chestxdet10 import LESION_CLASSES, BoxCorners, check_classes, class_labels, read_det_pair
from lesionsignal.data.manifest import DISEASES, Manifest, ManifestError, Problem, Record
from lesionsignal.data.tables import Row, parse_binary, parse_rows, read_table, require_unique, sorted_manifest

DEMO_COLUMNS = ("image_id", "patient_id", "split", "view", "cardiomegaly", "edema", "lung_lesion", "ctr")


def read_demo(folder: str | Path, *, classes: Sequence[str] = LESION_CLASSES, cohort: str = "demo") -> Manifest:
    """The rendered demo cohort: labels.csv, images/{image_id}.png, and ChestX-Det10-style train/test JSON.

    Labels: the three diseases from labels.csv, then one per lesion class in ``classes`` (from the boxes).
    The ``ctr`` column is required but not carried into the manifest.
    """
    folder = Path(folder)
    classes = check_classes(classes)
    table = read_table(folder / "labels.csv", DEMO_COLUMNS)
    if tuple(table.columns) != DEMO_COLUMNS:
        raise ManifestError(folder / "labels.csv", f"columns {list(table.columns)} != {list(DEMO_COLUMNS)}")
    require_unique(table, "image_id", folder / "labels.csv")
    # The generator writes each box as core.box.Box.as_tuple(): half-open, unlike ChestX-Det10's inclusive corners.
    entries = read_det_pair(folder / "train.json", folder / "test.json", corners=BoxCorners.HALF_OPEN)

    def record(row: Row) -> Record:
        image_id = row["image_id"]
        entry = entries.pop(image_id, None)  # what is left over afterwards has boxes but no row
        diseases = tuple((name, parse_binary(row[name], name)) for name in DISEASES)
        if entry is not None and entry.split != row["split"]:
            raise ValueError(f"split {row['split']!r} but listed in {entry.where}")
        boxes = entry.boxes if entry else ()
        name = image_id if Path(image_id).suffix else f"{image_id}.png"
        path = folder / "images" / name
        labels = diseases + class_labels(boxes, classes)
        return Record(path.name, path, row["patient_id"], row["split"], row["view"], labels, boxes)

    records, problems = parse_rows(table, record, lambda row: row["image_id"])
    problems += [Problem(e.where, name, "not in labels.csv") for name, e in entries.items()]
    if problems:
        raise ManifestError(folder, problems)
    return sorted_manifest(cohort, records, (*DISEASES, *classes))
