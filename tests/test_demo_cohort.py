"""The demo cohort build on a small synthetic CT: determinism, caching, resume, splits, formats, labels."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from phantom import write_phantom_ct

from lesionsignal.data import demo_cohort as cohorts
from lesionsignal.demo.build import DemoCohort, build_demo_cohort
from lesionsignal.demo.config import (
    CalcificationClass,
    DemoCohortConfig,
    MassClass,
    NoduleClass,
    cohort_folder_name,
    output_parameters,
)
from lesionsignal.demo.ct import CtSource
from lesionsignal.demo.lesions import LesionKind
from lesionsignal.demo.prepare import PreparedCt, prepare_ct
from lesionsignal.demo.render import render_film
from lesionsignal.demo.sampling import plan_cohort

# Lesion sizes scaled to the phantom's small lungs; frequencies high so that ten films hold every case.
CONFIG = DemoCohortConfig(
    n_images=10,
    images_per_subject=2,
    p_cardiomegaly=0.5,
    p_edema=0.5,
    calcification=CalcificationClass(0.5, 0.5, 2, (3.0, 5.0), (400.0, 1000.0), 0.4, 0.1, (0, 0), 1.0),
    nodule=NoduleClass(0.5, 0.5, 2, (7.0, 11.0), (0.0, 60.0), 1.0, 0.25, (0, 1), 0.8),
    mass=MassClass(0.4, 0.0, 1, (16.0, 20.0), (10.0, 60.0), 1.5, 0.3, (1, 2), 0.5),
    workers=1,
)
CANVAS = 256
REAL_CT = Path(__file__).resolve().parents[1] / ".cache" / "data" / "ct"
# The prepared real CT is content-addressed (CT checksums + parameters): sharing the study's cache is safe and saves
# its ~15 s preparation on every run after the first.
REAL_PREPARED = Path(__file__).resolve().parents[1] / ".cache" / "work" / "cohorts" / "drr_prepared"


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> CtSource:
    return write_phantom_ct(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def prep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def prepared(ct: CtSource, prep_dir: Path) -> PreparedCt:
    return prepare_ct(ct, CONFIG.prep, prep_dir)


@pytest.fixture(scope="module")
def reference(ct: CtSource, prep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DemoCohort:
    """A finished build that tests read but never modify."""
    root = tmp_path_factory.mktemp("cohort") / "demo"
    return build_demo_cohort(CONFIG, ct, root, False, canvas=CANVAS, cache_dir=prep_dir)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _labels(root: Path) -> list[dict[str, str]]:
    with (root / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _boxes(root: Path) -> dict[str, dict]:
    out = {}
    for split in ("train", "test"):
        for item in json.loads((root / f"{split}.json").read_text()):
            assert item["file_name"] not in out
            out[item["file_name"]] = {**item, "split": split}
    return out


def test_same_parameters_give_identical_bytes_with_any_worker_count(
    reference: DemoCohort, ct: CtSource, prep_dir: Path, tmp_path: Path
) -> None:
    assert reference.complete and reference.rendered == reference.n_images == CONFIG.n_images
    other = build_demo_cohort(
        replace(CONFIG, workers=2), ct, tmp_path / "demo", False, canvas=CANVAS, cache_dir=prep_dir
    )
    assert other.rendered == CONFIG.n_images
    ours, theirs = _snapshot(reference.root), _snapshot(other.root)
    assert sorted(ours) == sorted(theirs)
    assert len([n for n in ours if n.startswith("images/")]) == CONFIG.n_images
    assert ours == theirs  # PNGs, labels.csv, train/test.json and provenance.json, byte for byte


def test_second_build_with_the_same_parameters_does_nothing(
    reference: DemoCohort, ct: CtSource, prep_dir: Path
) -> None:
    before = _mtimes(reference.root)
    again = build_demo_cohort(CONFIG, ct, reference.root, False, canvas=CANVAS, cache_dir=prep_dir)
    assert again.complete and again.rendered == 0 and again.n_images == CONFIG.n_images
    as_paths = SimpleNamespace(volume=ct.volume, mask=ct.mask, structures=ct.structures)  # like ct_paths()
    assert (
        build_demo_cohort(
            replace(CONFIG, workers=2), as_paths, reference.root, False, canvas=CANVAS, cache_dir=prep_dir
        ).rendered
        == 0
    )
    assert _mtimes(reference.root) == before
    folder = cohort_folder_name(CONFIG, CANVAS)
    assert folder == cohort_folder_name(replace(CONFIG, workers=3), CANVAS)
    assert folder != cohort_folder_name(replace(CONFIG, seed=1), CANVAS)
    assert folder != cohort_folder_name(CONFIG, 2 * CANVAS)  # the canvas decides the films as much as the config


def test_a_lost_film_is_rendered_again_alone(
    reference: DemoCohort, ct: CtSource, prep_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "demo"
    shutil.copytree(reference.root, root)
    lost = sorted((root / "images").iterdir())[3]
    lost.unlink()
    repaired = build_demo_cohort(CONFIG, ct, root, False, canvas=CANVAS, cache_dir=prep_dir)
    assert repaired.complete and repaired.rendered == 1
    assert _snapshot(root) == _snapshot(reference.root)


def test_a_folder_it_did_not_write_is_never_cleared(ct: CtSource, prep_dir: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "chestx-det10"
    (foreign / "images").mkdir(parents=True)
    (foreign / "train.json").write_text("[]")
    (foreign / "images" / "demo_s0001_f01.png").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="chestx-det10"):
        build_demo_cohort(CONFIG, ct, foreign, False, canvas=CANVAS, cache_dir=prep_dir)
    assert (foreign / "train.json").read_text() == "[]"
    assert (foreign / "images" / "demo_s0001_f01.png").read_bytes() == b"not ours"


def test_a_changed_parameter_rebuilds_from_scratch(
    reference: DemoCohort, ct: CtSource, prep_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "demo"
    shutil.copytree(reference.root, root)
    changed = build_demo_cohort(
        replace(CONFIG, seed=43, n_images=6), ct, root, False, canvas=CANVAS, cache_dir=prep_dir
    )
    assert changed.complete and changed.rendered == 6
    names = sorted(p.name for p in (root / "images").iterdir())
    assert names == sorted(row["image_id"] for row in _labels(root))  # no stale film of the old build is left
    assert len(names) == 6
    old = (reference.root / "images" / names[0]).read_bytes()
    assert (root / "images" / names[0]).read_bytes() != old


def test_an_interrupted_build_resumes_without_redoing_finished_films(
    reference: DemoCohort, ct: CtSource, prep_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "demo"
    partial = build_demo_cohort(CONFIG, ct, root, False, canvas=CANVAS, cache_dir=prep_dir, limit=4)
    assert not partial.complete and partial.rendered == 4
    assert not (root / "labels.csv").exists() and not (root / "provenance.json").exists()
    finished = _mtimes(root / "images")
    assert len(finished) == 4
    # What a crash leaves: a temporary file that was never renamed, and a film written without its record.
    pending = sorted(set(r["image_id"] for r in _labels(reference.root)) - set(finished))
    (root / "images" / f".{pending[0]}.abc123.tmp").write_bytes(b"half a png")
    (root / "images" / pending[1]).write_bytes(b"\x89PNG truncated")
    resumed = build_demo_cohort(CONFIG, ct, root, False, canvas=CANVAS, cache_dir=prep_dir)
    assert resumed.complete and resumed.rendered == CONFIG.n_images - 4
    assert {k: v for k, v in _mtimes(root / "images").items() if k in finished} == finished
    assert _snapshot(root) == _snapshot(reference.root)


def test_splits_are_patient_disjoint_and_near_80_20(prepared: PreparedCt, reference: DemoCohort) -> None:
    plans = plan_cohort(replace(CONFIG, n_images=120, images_per_subject=3), prepared, CANVAS)
    split_of: dict[str, set[str]] = {}
    for plan in plans:
        split_of.setdefault(plan.patient_id, set()).add(plan.split)
    assert all(len(s) == 1 for s in split_of.values())
    n_test = sum(s == {"test"} for s in split_of.values())
    assert len(split_of) == 40 and n_test == 8
    rows = _labels(reference.root)
    by_patient: dict[str, set[str]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], set()).add(row["split"])
        assert row["image_id"].startswith(row["patient_id"] + "_f")
    assert all(len(s) == 1 for s in by_patient.values())
    assert {"train", "test"} == {row["split"] for row in rows}


def test_outputs_follow_the_demo_and_chestxdet10_formats(reference: DemoCohort, ct: CtSource) -> None:
    root = reference.root
    header = (root / "labels.csv").read_text().splitlines()[0]
    assert header == "image_id,patient_id,split,view,cardiomegaly,edema,lung_lesion,ctr"
    rows = _labels(root)
    boxes = _boxes(root)
    assert sorted(boxes) == sorted(r["image_id"] for r in rows)  # every film, lesion-free ones included
    assert any(not b["syms"] for b in boxes.values()) and any(len(b["syms"]) > 1 for b in boxes.values())
    for row in rows:
        entry = boxes[row["image_id"]]
        assert row["view"] == "PA" and entry["split"] == row["split"]
        assert {row[c] for c in ("cardiomegaly", "edema", "lung_lesion")} <= {"0", "1"}
        assert len(entry["syms"]) == len(entry["boxes"])
        assert int(row["lung_lesion"]) == int(any(s in ("Nodule", "Mass") for s in entry["syms"]))
        for x1, y1, x2, y2 in entry["boxes"]:
            assert all(isinstance(v, int) for v in (x1, y1, x2, y2))
            assert 0 <= x1 < x2 <= CANVAS and 0 <= y1 < y2 <= CANVAS
    manifest = cohorts.read_demo(root)  # the reader that also serves the real ChestX-Det10
    assert len(manifest.records) == CONFIG.n_images
    provenance = json.loads((root / "provenance.json").read_text())
    assert {k: v["sha256"] for k, v in provenance["ct_source"].items()} == ct.checksums()
    assert {"numpy", "opencv", "nibabel"} <= set(provenance["packages"])
    assert provenance["parameters"] == json.loads(json.dumps(output_parameters(CONFIG, CANVAS)))


def test_boxes_sit_on_the_lesions_of_posed_deformed_films(prepared: PreparedCt) -> None:
    plans = [p for p in plan_cohort(CONFIG, prepared, CANVAS) if p.spec.lesions]
    assert plans
    for plan in plans[:3]:
        film = render_film(prepared, plan.spec)
        clean = render_film(prepared, replace(plan.spec, lesions=()))
        diff = np.abs(film.image.astype(int) - clean.image.astype(int))
        covered = np.zeros(diff.shape, bool)
        for box in (b.box for b in film.boxes):
            covered[max(0, box.y1 - 4) : box.y2 + 4, max(0, box.x1 - 4) : box.x2 + 4] = True
        # Away from the lesions only the auto-window moves a little (a lesion changes the film's histogram).
        background = diff[~covered].mean()
        for box in (b.box for b in film.boxes):
            inside = diff[box.y1 : box.y2, box.x1 : box.x2].mean()
            assert inside > 3.0 and inside > 4 * background, (plan.image_id, box, inside, background)


def test_class_box_sizes_are_ordered(prepared: PreparedCt) -> None:
    always = replace(
        CONFIG,
        n_images=4,
        calcification=replace(CONFIG.calcification, probability=1.0, max_count=1),
        nodule=replace(CONFIG.nodule, probability=1.0, max_count=1),
        mass=replace(CONFIG.mass, probability=1.0),
    )
    areas: dict[str, list[int]] = {}
    for plan in plan_cohort(always, prepared, CANVAS):
        for box in render_film(prepared, plan.spec).boxes:
            areas.setdefault(box.label, []).append(box.box.area)
    medians = [np.median(areas[k.value]) for k in LesionKind]
    assert medians[0] < medians[1] < medians[2]


def test_cardiomegaly_films_have_higher_ctr(reference: DemoCohort, prepared: PreparedCt) -> None:
    rows = {r["image_id"]: r for r in _labels(reference.root)}
    enlarged, normal = [], []
    for plan in plan_cohort(CONFIG, prepared, CANVAS):
        ctr = float(rows[plan.image_id]["ctr"])
        (enlarged if plan.spec.heart_scale > 1.0 else normal).append(ctr)
        assert rows[plan.image_id]["cardiomegaly"] == str(int(ctr > CONFIG.ctr_threshold))
    assert enlarged and normal
    assert min(enlarged) > max(normal)


def test_bad_configuration_names_the_field() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        DemoCohortConfig(test_fraction=1.0)
    with pytest.raises(ValueError, match="cardiomegaly_scale"):
        DemoCohortConfig(cardiomegaly_scale=(0.9, 1.2))
    with pytest.raises(ValueError, match="volume, mask, structures"):
        build_demo_cohort(CONFIG, (Path("a"), Path("b")), Path("x"))
    with pytest.raises(ValueError, match="canvas"):
        cohort_folder_name(CONFIG, 32)


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_CT / "cxr.nii.gz").is_file(), reason=f"real CT not extracted to {REAL_CT} (make data)")
def test_real_ct_builds_films_that_look_like_pa_chest_films(tmp_path: Path) -> None:
    source = CtSource(REAL_CT / "cxr.nii.gz", REAL_CT / "mask.nii.gz", REAL_CT / "structures.csv")
    config = DemoCohortConfig(n_images=6, images_per_subject=2, p_cardiomegaly=0.5, workers=2)
    cohort = build_demo_cohort(config, source, tmp_path / "demo", False, cache_dir=REAL_PREPARED)
    assert cohort.complete and cohort.n_images == 6
    prepared = prepare_ct(source, config.prep, REAL_PREPARED)
    plans = plan_cohort(config, prepared, 1024)
    spec = replace(plans[0].spec, lesions=(), edema=None, heart_scale=1.0)
    normal = render_film(prepared, spec)
    enlarged = render_film(prepared, replace(spec, heart_scale=1.4))
    assert normal.image.shape == (1024, 1024)
    assert enlarged.ctr > 0.5 > normal.ctr
    changed = np.argwhere(np.abs(enlarged.image.astype(int) - normal.image.astype(int)) > 20)
    assert changed[:, 1].mean() > 512  # the heart grows on the image's right (the patient's left)
    image = normal.image.astype(float)
    lungs = np.r_[image[300:600, 200:380].ravel(), image[300:600, 650:820].ravel()]
    spine = image[300:600, 490:530]
    assert spine.mean() > lungs.mean() + 40  # mediastinum white, lungs dark
    for row in _labels(cohort.root):
        assert 0.3 < float(row["ctr"]) < 0.85
    for entry in _boxes(cohort.root).values():
        for x1, y1, x2, y2 in entry["boxes"]:
            assert 0 <= x1 < x2 <= 1024 and 0 <= y1 < y2 <= 1024
