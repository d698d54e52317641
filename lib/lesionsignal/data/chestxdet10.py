"""ChestX-Det10 read into the common manifest: train/test JSON of lesion boxes, and the images.

Its JSON records ({file_name, syms, boxes}) are also the box format of the rendered demo cohort, so the record
reader (``read_det_pair``) and the class-label helpers serve ``demo_cohort.read_demo`` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lesionsignal.core.box import Box
from lesionsignal.data.manifest import LesionBox, Manifest, ManifestError, Problem, Record, Split, load_json, repeats
from lesionsignal.data.tables import locate_images, sorted_manifest

CHESTXDET10_CLASSES = (
    "Atelectasis",
    "Calcification",
    "Consolidation",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Fracture",
    "Mass",
    "Nodule",
    "Pneumothorax",
)
LESION_CLASSES = ("Calcification", "Nodule", "Mass")  # the three small-lesion classes of protocol section 7


def read_chestxdet10(
    train_json: str | Path,
    test_json: str | Path,
    image_dir: Path | Sequence[Path],
    *,
    classes: Sequence[str] = LESION_CLASSES,
    cohort: str = "chestx-det10",
) -> Manifest:
    """ChestX-Det10 with one 0/1 label per class in ``classes`` (the image has a box of it) and every box.

    Boxes of the other ChestX-Det10 classes stay on their records; ``Manifest.boxes_frame`` marks them with
    ``is_target`` False. Patient id is the NIH file-name prefix before '_'.
    """
    classes = check_classes(classes)
    entries = read_det_pair(Path(train_json), Path(test_json))
    names = sorted(entries)
    no_patient = [
        Problem(entries[n].where, n, "file name has no NIH patient prefix ('_')") for n in names if "_" not in n
    ]
    if no_patient:
        raise ManifestError(f"{train_json} / {test_json}", no_patient)
    paths = locate_images(names, image_dir, f"{train_json} / {test_json}")
    records = (
        Record(
            name,
            path,
            name.split("_", 1)[0],
            entries[name].split,
            "",
            class_labels(entries[name].boxes, classes),
            entries[name].boxes,
        )
        for name, path in zip(names, paths, strict=True)
    )
    return sorted_manifest(cohort, records, classes)


@dataclass(frozen=True)
class DetEntry:
    """One image's record in a ChestX-Det10-style JSON file."""

    file_name: str
    split: str
    where: str  # "train.json[12]": the record's place in its file, for messages
    boxes: tuple[LesionBox, ...]


def read_det_pair(train_json: Path, test_json: Path) -> dict[str, DetEntry]:
    """The records of both files by file name, in file order; a name listed more than once is an error."""
    entries = _read_det_json(train_json, Split.TRAIN.value) + _read_det_json(test_json, Split.TEST.value)
    listed = [
        Problem(entries[i].where, name, f"listed {len(rows)} times ({', '.join(entries[j].where for j in rows)})")
        for name, rows in repeats(e.file_name for e in entries).items()
        for i in rows
    ]
    if listed:
        raise ManifestError(f"{train_json} / {test_json}", listed)
    return {entry.file_name: entry for entry in entries}


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """``classes`` as a tuple, after checking they are distinct ChestX-Det10 classes."""
    unknown = [c for c in classes if c not in CHESTXDET10_CLASSES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct ChestX-Det10 classes {CHESTXDET10_CLASSES}, got {list(classes)}")
    return tuple(classes)


def class_labels(boxes: Sequence[LesionBox], classes: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """One 0/1 label per class: whether any box is of that class."""
    present = {box.label for box in boxes}
    return tuple((name, int(name in present)) for name in classes)


def _read_det_json(path: Path, split: str) -> list[DetEntry]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    items = load_json(path)
    if not isinstance(items, list):
        raise ManifestError(path, "expected a list of {file_name, syms, boxes} records")
    entries, problems = [], []
    for index, item in enumerate(items):
        where = f"{path.name}[{index}]"
        name = item.get("file_name", "") if isinstance(item, dict) else ""
        try:
            entries.append(_det_entry(item, split, where))
        except ValueError as err:
            problems.append(Problem(where, str(name), str(err)))
    if problems:
        raise ManifestError(path, problems)
    return entries


def _det_entry(item: object, split: str, where: str) -> DetEntry:
    if not isinstance(item, dict) or not isinstance(item.get("file_name"), str):
        raise ValueError("expected an object with a string 'file_name'")
    syms, boxes = item.get("syms"), item.get("boxes")
    if not isinstance(syms, list) or not isinstance(boxes, list):
        raise ValueError("'syms' and 'boxes' must be lists")
    if len(syms) != len(boxes):
        raise ValueError(f"{len(syms)} syms but {len(boxes)} boxes")
    parsed = []
    for k, (sym, box) in enumerate(zip(syms, boxes, strict=True)):
        if sym not in CHESTXDET10_CLASSES:
            raise ValueError(f"syms[{k}] {sym!r} is not a ChestX-Det10 class {CHESTXDET10_CLASSES}")
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"boxes[{k}] {box!r} is not [x1, y1, x2, y2]")
        parsed.append(LesionBox(sym, Box(*(_corner(v) for v in box))))
    return DetEntry(item["file_name"], split, where, tuple(parsed))


def _corner(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"box corner {value!r} is not a number")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"box corner {value!r} is not a whole pixel")
    return int(value)
