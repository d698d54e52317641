"""What a cohort says about its films: one record per film, labels.csv and the ChestX-Det10 box JSON.

The folder layout is the one :func:`lesionsignal.data.demo_cohort.read_demo` reads: ``images/{image_id}`` (the file name
is the image id), ``labels.csv``, and ``train.json`` / ``test.json`` in the ChestX-Det10 format.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lesionsignal.demo.lesions import LesionKind
from lesionsignal.demo.render import RenderedFilm
from lesionsignal.demo.sampling import FilmPlan

LABEL_COLUMNS = ("image_id", "patient_id", "split", "view", "cardiomegaly", "edema", "lung_lesion", "ctr")
LUNG_LESION_KINDS = frozenset({LesionKind.NODULE, LesionKind.MASS})


@dataclass(frozen=True)
class FilmRecord:
    """What a finished film contributes to labels.csv and the box JSON."""

    image_id: str
    patient_id: str
    split: str
    cardiomegaly: int
    edema: int
    lung_lesion: int
    ctr: float
    syms: tuple[str, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    sha256: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: Path) -> FilmRecord:
        try:
            data = json.loads(text)
            data["syms"] = tuple(data["syms"])
            data["boxes"] = tuple(tuple(b) for b in data["boxes"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{source}: unreadable film record ({err})") from None


def film_record(plan: FilmPlan, film: RenderedFilm, png: bytes, ctr_threshold: float) -> FilmRecord:
    """The labels of a rendered film: cardiomegaly from its measured CTR, lung lesion from its boxes' classes."""
    kinds = [b.label for b in film.boxes]
    return FilmRecord(
        image_id=plan.image_id,
        patient_id=plan.patient_id,
        split=plan.split,
        cardiomegaly=int(film.ctr > ctr_threshold),
        edema=int(plan.spec.edema is not None),
        lung_lesion=int(any(LesionKind(k) in LUNG_LESION_KINDS for k in kinds)),
        ctr=round(film.ctr, 4),
        syms=tuple(kinds),
        boxes=tuple(b.box.as_tuple() for b in film.boxes),
        sha256=hashlib.sha256(png).hexdigest(),
    )


def labels_csv(records: Sequence[FilmRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    for r in records:
        writer.writerow(
            [r.image_id, r.patient_id, r.split, "PA", r.cardiomegaly, r.edema, r.lung_lesion, f"{r.ctr:.4f}"]
        )
    return buffer.getvalue()


def box_json(records: Sequence[FilmRecord], split: str) -> str:
    """ChestX-Det10 records for every film of ``split``; lesion-free films have empty lists."""
    items = [
        {"file_name": r.image_id, "syms": list(r.syms), "boxes": [list(b) for b in r.boxes]}
        for r in records
        if r.split == split
    ]
    return json.dumps(items)


def summary(records: Sequence[FilmRecord]) -> dict:
    out: dict = {"images": len(records), "subjects": len({r.patient_id for r in records})}
    for split in ("train", "test"):
        rows = [r for r in records if r.split == split]
        out[split] = {
            "images": len(rows),
            "subjects": len({r.patient_id for r in rows}),
            "cardiomegaly": sum(r.cardiomegaly for r in rows),
            "edema": sum(r.edema for r in rows),
            "lung_lesion": sum(r.lung_lesion for r in rows),
            "lesion_free": sum(not r.syms for r in rows),
            "boxes": {k.value: sum(s == k.value for r in rows for s in r.syms) for k in LesionKind},
        }
    return out
