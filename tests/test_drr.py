"""DRR rendering on a small synthetic chest phantom: orientation, preparation, edits, boxes, determinism."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
from phantom import phantom_volumes, write_phantom_ct

from lesionsignal.core.canvas import to_canvas
from lesionsignal.demo import prepare
from lesionsignal.demo.ct import CtError, CtSource, load_ct, read_structures
from lesionsignal.demo.edema import Edema
from lesionsignal.demo.edits import RenderError
from lesionsignal.demo.film import Exposure
from lesionsignal.demo.lesions import Blob, Lesion, LesionKind
from lesionsignal.demo.prep_params import PrepParams
from lesionsignal.demo.prepare import PreparedCt, prepare_ct
from lesionsignal.demo.projection import Pose, canvas_affine, warp_to_canvas
from lesionsignal.demo.render import FilmSpec, render_film

CANVAS = 256
EXPOSURE = Exposure(bone_contrast=2.0, compression=0.6, contrast=2.5, window=(1.0, 99.5), noise_seed=7)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> CtSource:
    return write_phantom_ct(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def prepared(phantom: CtSource, tmp_path_factory: pytest.TempPathFactory) -> PreparedCt:
    return prepare_ct(phantom, PrepParams(), tmp_path_factory.mktemp("prep"))


def _spec(**changes) -> FilmSpec:
    return replace(FilmSpec(canvas=CANVAS, exposure=EXPOSURE), **changes)


def _deep_site(prepared: PreparedCt, rank: float = 0.0) -> tuple[float, float, float]:
    index = int(rank * (len(prepared.sites) - 1))
    return tuple(float(v) for v in np.unravel_index(int(prepared.sites[index]), prepared.geometry.shape))


def _lesion(prepared: PreparedCt, kind: LesionKind, diameter_mm: float, hu: float, rank: float = 0.0):
    r = diameter_mm / 2
    return Lesion(kind, _deep_site(prepared, rank), (Blob(radii_mm=(r, r, r)),), hu, 0.5)


def test_film_is_upright_with_the_heart_on_the_image_right(phantom: CtSource, prepared: PreparedCt) -> None:
    # Ground truth from the stored file's affine: the heart is on the patient's left (-x in RAS) and inferior.
    mask = nib.load(str(phantom.mask))
    labels = np.asarray(mask.dataobj)
    heart = nib.affines.apply_affine(mask.affine, np.argwhere(labels == 51).mean(axis=0))
    lungs = nib.affines.apply_affine(mask.affine, np.argwhere(np.isin(labels, (10, 12))).mean(axis=0))
    assert heart[0] < lungs[0] and heart[2] < lungs[2]
    normal = render_film(prepared, _spec())
    enlarged = render_film(prepared, _spec(heart_scale=1.3))
    assert normal.image.shape == (CANVAS, CANVAS) and normal.image.dtype == np.uint8
    changed = np.argwhere(np.abs(enlarged.image.astype(int) - normal.image.astype(int)) > 20)
    row, col = changed.mean(axis=0)
    assert col > CANVAS / 2  # PA film as viewed: the patient's left is on the image's right
    assert row > CANVAS / 2  # superior is up


def test_preparation_removes_contrast_table_and_the_source_nodule(phantom: CtSource, prepared: PreparedCt) -> None:
    raw_hu, raw_labels = phantom_volumes()
    heart = raw_labels == 51
    assert raw_hu[heart].min() == 300
    assert int(np.asarray(prepared.hu)[heart].max()) <= PrepParams().contrast_cap_hu
    table = raw_hu == 300
    table &= raw_labels == 0
    assert np.all(np.asarray(prepared.hu)[table] == -1000)
    assert len(prepared.geometry.erased) == 1
    lung = raw_labels == 10
    assert np.count_nonzero(np.asarray(prepared.hu)[lung] > -400) == 0
    spine = raw_labels == 38
    assert np.asarray(prepared.hu)[spine].min() == 700  # bone keeps its HU


def test_prepared_ct_is_cached_by_checksum(phantom: CtSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = prepare._prepare
    monkeypatch.setattr(prepare, "_prepare", lambda *a: calls.append(a[2]) or original(*a))
    first = prepare_ct(phantom, PrepParams(), tmp_path)
    second = prepare_ct(phantom, PrepParams(), tmp_path)
    assert len(calls) == 1 and second.key == first.key
    np.testing.assert_array_equal(second.slabs, first.slabs)
    prepare_ct(phantom, PrepParams(n_slabs=4), tmp_path)  # other parameters: another cache entry
    assert len(calls) == 2 and len(list(tmp_path.iterdir())) == 2


def test_loader_reorients_any_stored_orientation(phantom: CtSource, tmp_path: Path) -> None:
    ct = load_ct(phantom)
    image = nib.load(str(phantom.volume))
    ras = nib.as_closest_canonical(image)  # the same voxels stored R, A, S instead of L, A, S
    mask = nib.as_closest_canonical(nib.load(str(phantom.mask)))
    other = CtSource(tmp_path / "v.nii.gz", tmp_path / "m.nii.gz", phantom.structures)
    nib.save(ras, str(other.volume))
    nib.save(mask, str(other.mask))
    again = load_ct(other)
    np.testing.assert_array_equal(again.hu, ct.hu)
    assert again.spacing == pytest.approx(ct.spacing)


def test_bad_inputs_name_the_file(phantom: CtSource, tmp_path: Path) -> None:
    table = tmp_path / "structures.csv"
    table.write_text("group,original_idx,structure,id\norgans,1,lung_upper_lobe_left,10\n")
    with pytest.raises(CtError, match=r"structures\.csv.*lung_right"):
        read_structures(table)
    table.write_text("group,structure\norgans,heart\n")
    with pytest.raises(CtError, match="missing column"):
        read_structures(table)
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(small))
    with pytest.raises(CtError, match=r"small\.nii\.gz.*does not match"):
        load_ct(CtSource(phantom.volume, small, phantom.structures))


def test_render_is_deterministic(prepared: PreparedCt) -> None:
    spec = _spec(lesions=(_lesion(prepared, LesionKind.NODULE, 10.0, 40.0),), edema=Edema())
    a, b = render_film(prepared, spec), render_film(prepared, spec)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.boxes == b.boxes
    c = render_film(prepared, replace(spec, exposure=replace(EXPOSURE, noise_seed=8)))
    assert c.image.tobytes() != a.image.tobytes()


def test_lesion_box_sits_on_the_lesion(prepared: PreparedCt) -> None:
    lesion = _lesion(prepared, LesionKind.NODULE, 12.0, 40.0)
    pose = Pose(rotation_deg=2.0, magnification=1.04, shift=(0.02, -0.01))
    with_lesion = render_film(prepared, _spec(lesions=(lesion,), pose=pose))
    without = render_film(prepared, _spec(pose=pose))
    (lesion_box,) = with_lesion.boxes
    assert lesion_box.label == "Nodule"
    box = lesion_box.box
    assert 0 <= box.x1 < box.x2 <= CANVAS and 0 <= box.y1 < box.y2 <= CANVAS
    diff = np.abs(with_lesion.image.astype(int) - without.image.astype(int))
    inside = diff[box.y1 : box.y2, box.x1 : box.x2].mean()
    outside = diff.copy()
    outside[max(0, box.y1 - 8) : box.y2 + 8, max(0, box.x1 - 8) : box.x2 + 8] = 0
    assert inside > 8.0
    assert inside > 10 * outside.mean()
    # The lesion is denser than the lung it replaces: brighter inside its box.
    region = (slice(box.y1, box.y2), slice(box.x1, box.x2))
    assert with_lesion.image[region].mean() > without.image[region].mean() + 5


def test_box_sizes_follow_lesion_sizes(prepared: PreparedCt) -> None:
    areas = {}
    for kind, diameter, hu in (
        (LesionKind.CALCIFICATION, 4.0, 800.0),
        (LesionKind.NODULE, 9.0, 40.0),
        (LesionKind.MASS, 18.0, 40.0),
    ):
        film = render_film(prepared, _spec(lesions=(_lesion(prepared, kind, diameter, hu),)))
        areas[kind] = film.boxes[0].box.area
    calcification, nodule, mass = (areas[k] for k in LesionKind)
    assert calcification < nodule < mass


def test_heart_scale_drives_the_cardiothoracic_ratio(prepared: PreparedCt) -> None:
    ctr = [render_film(prepared, _spec(heart_scale=s)).ctr for s in (0.85, 1.0, 1.3)]
    assert ctr[0] < ctr[1] < ctr[2]
    assert ctr[2] > 1.15 * ctr[1]


def test_edema_raises_lung_density(prepared: PreparedCt) -> None:
    spec = _spec(exposure=replace(EXPOSURE, photons=1e7))
    clear = render_film(prepared, spec)
    wet = render_film(prepared, replace(spec, edema=Edema(peak_hu=300.0)))
    lungs = prepared.lung_any.any(axis=0).astype(np.float32)  # [z, x] on the projection grid
    frame = cv2.resize(lungs, (prepared.frame_shape[1], prepared.frame_shape[0]), interpolation=cv2.INTER_NEAREST)
    mask = to_canvas((frame * 255).astype(np.uint8), CANVAS) > 128
    assert wet.image[mask].mean() > clear.image[mask].mean() + 5
    # Both lungs, not one: the rise is bilateral.
    half = CANVAS // 2
    for side in (slice(0, half), slice(half, CANVAS)):
        m = np.zeros_like(mask)
        m[:, side] = mask[:, side]
        assert wet.image[m].mean() > clear.image[m].mean() + 3


def test_canvas_map_is_the_canvas_rule() -> None:
    """With no pose, the frame-to-canvas affine reproduces canvas.to_canvas (symmetric pad, Lanczos-4 resize)."""
    rows, cols = 71, 80  # not square and odd: the pad is exercised
    rng = np.random.default_rng(0)
    frame = np.rint(cv2.GaussianBlur(rng.uniform(0, 255, (rows, cols)).astype(np.float32), (0, 0), 1.0))
    mapped = warp_to_canvas(frame, canvas_affine((rows, cols), CANVAS, Pose()), CANVAS, cv2.INTER_LANCZOS4)
    reference = to_canvas(frame.astype(np.uint8), CANVAS).astype(np.float32)
    inner = (slice(24, -24), slice(8, -8))  # away from the pad edges, where the two differ only by clipping
    assert np.abs(mapped - reference)[inner].mean() < 0.6
    # A one-pixel misalignment would be far above that: the check can fail.
    assert np.abs(mapped[1:] - reference[:-1])[inner].mean() > 2.0


def test_lesion_outside_lung_is_an_error(prepared: PreparedCt) -> None:
    outside = Lesion(LesionKind.NODULE, (2.0, 2.0, 2.0), (Blob(radii_mm=(4, 4, 4)),), 40.0)
    with pytest.raises(RenderError, match="Nodule"):
        render_film(prepared, _spec(lesions=(outside,)))
