"""The cohort folder on disk: which files it holds, when it is complete, whose it is, and how a build resumes there.

A build is cached (a complete folder whose provenance digest matches is returned untouched), resumable and
repairable (each finished film leaves a record under ``.build/``, so an interrupted build, or a finished one that
lost a film, renders only what is missing) and restarts from scratch when its digest changes. It only ever clears a
folder that it wrote.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from lesionsignal.core.files import atomic_write_text
from lesionsignal.demo.outputs import FilmRecord
from lesionsignal.demo.sampling import FilmPlan

BUILD_DIR = ".build"
GENERATOR = "lesionsignal.demo_cohort"  # in provenance.json of every built cohort, the old ones included
_IMAGE_GLOBS = ("demo_s*_f*.png", ".demo_s*_f*.png.*.tmp")


def image_path(root: Path, name: str) -> Path:
    return root / "images" / name


def record_path(root: Path, name: str) -> Path:
    return root / BUILD_DIR / "records" / f"{name}.json"


def output_paths(root: Path) -> dict[str, Path]:
    return {
        "labels": root / "labels.csv",
        "train_json": root / "train.json",
        "test_json": root / "test.json",
        "provenance": root / "provenance.json",
    }


def completed_images(root: Path, digest: str) -> int | None:
    """The number of images of a finished build with this digest, or None."""
    out = output_paths(root)
    if not all(p.is_file() for p in out.values()):
        return None
    try:
        provenance = json.loads(out["provenance"].read_text())
    except ValueError:
        return None
    if provenance.get("digest") != digest:
        return None
    names = provenance.get("images", [])
    if not names or not all(image_path(root, n).is_file() for n in names):
        return None
    return len(names)


def check_owned(root: Path) -> None:
    """Refuse to clear a folder this generator did not write (for example a real ChestX-Det10 folder)."""
    if not root.exists() or not any(root.iterdir()):
        return
    if (root / BUILD_DIR / "state.json").is_file():
        return
    provenance = root / "provenance.json"
    try:
        if json.loads(provenance.read_text()).get("generator") == GENERATOR:
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise FileExistsError(f"{root}: exists, is not empty and is not a demo cohort folder; refusing to overwrite it")


def start_build(root: Path, digest: str) -> None:
    """Resume a build of the same digest; otherwise clear what this generator wrote and start afresh."""
    check_owned(root)
    state = root / BUILD_DIR / "state.json"
    images = root / "images"
    if state.is_file() and json.loads(state.read_text()).get("digest") == digest:
        for stray in images.glob(_IMAGE_GLOBS[1]):  # a rename that never happened
            stray.unlink()
        return
    for path in output_paths(root).values():
        path.unlink(missing_ok=True)
    shutil.rmtree(root / BUILD_DIR, ignore_errors=True)
    for pattern in _IMAGE_GLOBS:
        for path in images.glob(pattern):
            path.unlink()
    images.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state, json.dumps({"digest": digest}))


def finished_records(root: Path, plans: Sequence[FilmPlan]) -> dict[str, FilmRecord]:
    """The records of the planned films already on disk; a film without its record is rendered again."""
    done = {}
    for plan in plans:
        path = record_path(root, plan.image_id)
        if path.is_file() and image_path(root, plan.image_id).is_file():
            done[plan.image_id] = FilmRecord.from_json(path.read_text(), path)
    return done
