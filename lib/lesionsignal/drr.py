"""Digitally reconstructed PA chest radiographs from one real CT, with findings and lesions made in the CT.

Design, and why it is fast enough for hundreds of films on two cores:

* A parallel-beam PA projection is a sum of attenuation along the antero-posterior (AP) axis, so it is LINEAR in
  the attenuation volume. The CT is therefore prepared once (cached as ``.npy`` files keyed by the CT checksums
  and the preparation parameters): contrast removed, table and blankets cut away, the one solid nodule of the
  source CT erased, and the AP axis cut into ``n_slabs`` depth slabs. For every slab the line integrals of three
  tissue classes (soft tissue, lung, bone above 150 HU) are stored. A subject is a weighted sum of these
  (habitus, inspiration, bone mineral), with no 3-D pass over the whole volume.
* Edits are made in the CT, at native resolution, but only inside the block they touch, and added to the slab
  line integrals as deltas (exact by linearity): an enlarged heart (the heart label scaled about an anchor on its
  right border, growing into lung and mediastinal soft tissue, never into bone or abdominal organs), a diffuse
  bilateral perihilar rise of lung attenuation (edema-like), and soft-edged ellipsoid lesions that REPLACE lung
  parenchyma (partial volume along z from sub-slice sampling).
* Anatomical deformation is a smooth random 3-D displacement field with no AP component that is piecewise
  constant in depth over the slabs (a common field plus a depth-proportional one, a global thorax width/height
  scale, and the shear that a small rotation about the vertical axis or a lordotic tilt produces). For such a
  field the projection of the deformed volume is exactly the sum of the slab projections, each warped in 2-D, so
  the deformation costs one ``cv2.remap`` per slab instead of a 3-D resampling. The in-plane resolution stays
  native (0.7 mm); the CT's 2.5 mm slice spacing is what limits vertical sharpness.
* Pose in the detector plane (rotation, magnification, shift) is one affine map composed with the canvas rule of
  :mod:`lesionsignal.canvas` (symmetric zero pad to a square, resize to the canvas), applied once with Lanczos-4.
  Lesion boxes are the bounding boxes of each lesion's own projected delta pushed through the SAME slab warps and
  affine map, thresholded at a fraction of its peak.
* The film: Beer-Lambert transmission, heel-effect gradient, scatter (a broad blur of the primary), quantum noise
  (Gaussian approximation of Poisson counts), detector blur, log, unsharp-mask edge enhancement and dynamic-range
  compression as in CR processing, a percentile window and a sigmoid tone curve: bones white, lungs dark.

Array convention: volumes are ``[z, y, x]`` with z from superior to inferior, y from anterior to posterior and x
from the patient's right to left, so a projection ``[z, x]`` is already a PA film as it is viewed (the heart on the
image's right).
"""

from __future__ import annotations

import csv
import enum
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from lesionsignal.manifest import LesionBox
from lesionsignal.validate import FieldError

PREP_VERSION = 1  # bump when preparation changes its output: it is part of the cache key
CANONICAL_AXES = ("I", "P", "L")  # array axes point inferior, posterior, patient-left
REFERENCE_CANVAS = 1024  # film-processing lengths are given for this canvas and scaled to others
_STRUCTURE_COLUMNS = ("group", "structure", "id")
_BONE_GROUPS = frozenset({"vertebrae", "ribs", "skeleton"})
_HEART_NAMES = frozenset({"heart", "atrial_appendage_left"})
_MEDIASTINAL_NAMES = frozenset({"trachea", "esophagus"})
_AIR_HU = -1000


class CtError(ValueError):
    """A CT input is unusable: the message names the file and what is wrong with it."""

    def __init__(self, source: str | Path, reason: str) -> None:
        super().__init__(f"{source}: {reason}")


class RenderError(RuntimeError):
    """A film specification cannot be rendered as asked (for example a lesion that ends up outside the lung)."""


class Tissue(enum.IntEnum):
    """Tissue classes whose line integrals are kept apart, so a subject can rescale each one."""

    SOFT = 0
    LUNG = 1
    BONE = 2  # attenuation above the bone split (the soft part of a bone voxel stays in SOFT)


class Flag(enum.IntFlag):
    LUNG = 1
    HEART = 2
    GROW = 4  # the heart may grow into this voxel: lung or mediastinal soft tissue, not bone or abdomen


class LesionKind(enum.Enum):
    CALCIFICATION = "Calcification"
    NODULE = "Nodule"
    MASS = "Mass"


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class CtSource:
    """The three files of a labelled CT: HU volume, organ mask (same grid) and the table naming the labels."""

    volume: Path
    mask: Path
    structures: Path

    def files(self) -> dict[str, Path]:
        return {"volume": Path(self.volume), "mask": Path(self.mask), "structures": Path(self.structures)}

    def checksums(self) -> dict[str, str]:
        """sha256 of each file, by role."""
        out = {}
        for role, path in self.files().items():
            if not path.is_file():
                raise CtError(path, f"CT {role} file not found")
            out[role] = _sha256(path)
        return out


@dataclass(frozen=True)
class Structures:
    """Mask label ids grouped by the role they play in the rendering."""

    lung_left: tuple[int, ...]
    lung_right: tuple[int, ...]
    heart: tuple[int, ...]
    cardiac: tuple[int, ...]  # heart and great vessels: the blood pool whose contrast is removed
    bone: tuple[int, ...]
    mediastinal: tuple[int, ...]  # airway and oesophagus: they shape the thoracic cavity

    @property
    def lung(self) -> tuple[int, ...]:
        return self.lung_left + self.lung_right


@dataclass(frozen=True)
class CtVolume:
    hu: np.ndarray  # int16 [z, y, x]
    labels: np.ndarray  # uint8 [z, y, x]
    spacing: tuple[float, float, float]  # mm along z, y, x
    structures: Structures


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_structures(path: Path) -> tuple[Structures, dict[int, str]]:
    """Parse structures.csv (columns group, structure, id) into label roles; every problem names file and row."""
    path = Path(path)
    if not path.is_file():
        raise CtError(path, "structures table not found")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _STRUCTURE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CtError(path, f"missing column(s) {missing}; found {reader.fieldnames}")
        rows = list(reader)
    names: dict[int, str] = {}
    groups: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        try:
            label = int(row["id"])
        except ValueError:
            raise CtError(path, f"line {line}: id {row['id']!r} is not an integer") from None
        if not 0 < label < 256 or label in names:
            raise CtError(path, f"line {line}: id {label} is out of 1..255 or repeated")
        names[label] = row["structure"].strip()
        groups[label] = row["group"].strip()

    def ids(keep: Callable[[str, str], bool]) -> tuple[int, ...]:
        return tuple(sorted(i for i, n in names.items() if keep(n, groups[i])))

    structures = Structures(
        lung_left=ids(lambda n, g: n.startswith("lung_") and n.endswith("_left")),
        lung_right=ids(lambda n, g: n.startswith("lung_") and n.endswith("_right")),
        heart=ids(lambda n, g: n in _HEART_NAMES),
        cardiac=ids(lambda n, g: g == "cardiac" or n in _HEART_NAMES),
        bone=ids(lambda n, g: g in _BONE_GROUPS),
        mediastinal=ids(lambda n, g: n in _MEDIASTINAL_NAMES),
    )
    for role in ("lung_left", "lung_right", "heart"):
        if not getattr(structures, role):
            raise CtError(path, f"no structure for {role} (expected names like 'heart', 'lung_upper_lobe_left')")
    return structures, names


def _canonical(image: nib.spatialimages.SpatialImage, source: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Voxel array reoriented to CANONICAL_AXES, and its spacing in mm."""
    if len(image.shape) != 3:
        raise CtError(source, f"expected a 3-D volume, got shape {image.shape}")
    orient = nib.orientations
    transform = orient.ornt_transform(orient.io_orientation(image.affine), orient.axcodes2ornt(CANONICAL_AXES))
    data = orient.apply_orientation(np.asarray(image.dataobj), transform)
    zooms = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
    spacing = [0.0, 0.0, 0.0]
    for axis_in, (axis_out, _flip) in enumerate(transform):
        spacing[int(axis_out)] = float(zooms[axis_in])
    return data, tuple(spacing)


def load_ct(source: CtSource) -> CtVolume:
    """Read volume, mask and structure table; reorient to [z inferior, y posterior, x patient-left]."""
    files = source.files()
    structures, names = read_structures(files["structures"])
    images = {}
    for role in ("volume", "mask"):
        path = files[role]
        if not path.is_file():
            raise CtError(path, f"CT {role} file not found")
        try:
            images[role] = nib.load(str(path))
        except Exception as err:  # nibabel raises several unrelated types for corrupt files
            raise CtError(path, f"not a readable NIfTI file ({err})") from None
    vol_img, mask_img = images["volume"], images["mask"]
    if vol_img.shape != mask_img.shape or not np.allclose(vol_img.affine, mask_img.affine, atol=1e-3):
        raise CtError(files["mask"], f"grid {mask_img.shape} does not match the volume's {vol_img.shape}")
    hu, spacing = _canonical(vol_img, files["volume"])
    labels, _ = _canonical(mask_img, files["mask"])
    if not np.all(np.isfinite(hu)):
        raise CtError(files["volume"], "volume holds non-finite values")
    labels_int = np.rint(labels).astype(np.int64)
    unknown = sorted(set(np.unique(labels_int).tolist()) - set(names) - {0})
    if unknown:
        raise CtError(files["mask"], f"label values {unknown[:10]} are not in {files['structures'].name}")
    hu16 = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return CtVolume(np.ascontiguousarray(hu16), np.ascontiguousarray(labels_int.astype(np.uint8)), spacing, structures)


# ---------------------------------------------------------------- preparation (cached)


@dataclass(frozen=True)
class PrepParams:
    """Choices made once per CT; they are part of the prepared volume's cache key."""

    inplane_step: int = 1  # in-plane block-average factor; 1 keeps the native 0.7 mm (cheap: see module doc)
    n_slabs: int = 8  # AP depth slabs: resolution of the depth-varying deformation and of rotation parallax
    mu_water_per_mm: float = 0.019  # water at the ~70 keV effective energy of a 120 kVp chest beam
    bone_split_hu: float = 150.0  # attenuation above this goes to the BONE class
    contrast_cap_hu: float = 60.0  # blood pool and organs are capped here: the source CT is contrast-enhanced
    enhanced_margin_mm: float = 15.0  # unlabelled voxels this close to the heart and great vessels are capped too
    erase_radius_mm: float = 3.5  # solid lung blobs surviving an opening of this radius are erased (source nodule)
    cavity_radius_mm: float = 20.0  # closing radius that turns lungs + mediastinum into the thoracic cavity
    site_stride: int = 2  # lesion sites are kept on this in-plane voxel stride

    def __post_init__(self) -> None:
        for name in ("inplane_step", "n_slabs", "site_stride"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be a positive integer, got {getattr(self, name)}")
        for name in ("mu_water_per_mm", "erase_radius_mm", "cavity_radius_mm", "enhanced_margin_mm"):
            if getattr(self, name) <= 0:
                raise FieldError(name, f"must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class CtGeometry:
    """Scalars of a prepared CT (stored as JSON next to the arrays)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    slab_edges: tuple[int, ...]  # y indices, n_slabs + 1 of them
    heart_box: tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 of the heart label
    heart_anchor: tuple[float, float, float]  # the fixed point of heart scaling (voxel z, y, x)
    heart_hu: float
    hila: tuple[tuple[float, float], ...]  # (z, x) voxel of the right and left hilum on the projection
    lung_rows: tuple[int, int]  # first and last projection row with lung
    thorax_center: tuple[float, float]  # (z, x) voxel centre of the lungs' projected bounding box
    erased: tuple[tuple[int, float], ...]  # (voxels, mm^3) of each erased source nodule
    mu_water_per_mm: float
    bone_split_hu: float

    @property
    def slab_depth(self) -> np.ndarray:
        """Each slab's centre depth in mm from the body's mid-plane (posterior positive)."""
        edges = np.asarray(self.slab_edges, dtype=np.float64)
        centres = 0.5 * (edges[:-1] + edges[1:])
        return (centres - 0.5 * (edges[0] + edges[-1])) * self.spacing[1]

    @property
    def half_depth_mm(self) -> float:
        return 0.5 * (self.slab_edges[-1] - self.slab_edges[0]) * self.spacing[1]


@dataclass(frozen=True)
class PreparedCt:
    """The prepared CT; the big arrays are memory-mapped when loaded from the cache."""

    key: str
    geometry: CtGeometry
    hu: np.ndarray  # int16 [z, y, x], contrast removed, outside the body set to air
    flags: np.ndarray  # uint8 [z, y, x] of Flag bits
    slabs: np.ndarray  # float32 [slab, Tissue, z, x]: line integrals (dimensionless)
    lung_mm: np.ndarray  # float32 [slab, z, x]: lung path length
    heart_any: np.ndarray  # bool [slab, z, x]: the heart label is crossed
    lung_any: np.ndarray  # bool [slab, z, x]
    sites: np.ndarray  # int64 flat voxel indices of lung, sorted by depth inside the lung, deepest first
    site_depth_mm: np.ndarray  # float32, same order (descending)
    heart_fill_hu: np.ndarray  # int16 over heart_box: HU of the nearest voxel outside the heart
    heart_fill_lung: np.ndarray  # bool over heart_box: that nearest outside voxel is lung
    heart_sdf: np.ndarray  # float32 over heart_box, one empty slice added above and below: in-plane signed mm

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(rows, columns) of the isotropic film frame, at the in-plane spacing."""
        z, _, x = self.geometry.shape
        dz, _, dx = self.geometry.spacing
        return round(z * dz / dx), x


_ARRAYS = (
    "hu",
    "flags",
    "slabs",
    "lung_mm",
    "heart_any",
    "lung_any",
    "sites",
    "site_depth_mm",
    "heart_fill_hu",
    "heart_fill_lung",
    "heart_sdf",
)
_MMAP = frozenset({"hu", "flags"})


def prep_key(checksums: dict[str, str], params: PrepParams) -> str:
    blob = json.dumps({"ct": checksums, "params": asdict(params), "version": PREP_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_ct(
    source: CtSource, params: PrepParams, cache_dir: Path, checksums: dict[str, str] | None = None
) -> PreparedCt:
    """The prepared CT from ``cache_dir/{key}``, building and caching it first when absent."""
    key = prep_key(checksums or source.checksums(), params)
    folder = Path(cache_dir) / key
    if not (folder / "geometry.json").is_file():
        prepared = _prepare(load_ct(source), params, key)
        _save_prepared(prepared, folder)
    return load_prepared(folder)


def load_prepared(folder: Path) -> PreparedCt:
    folder = Path(folder)
    meta = json.loads((folder / "geometry.json").read_text())
    geometry = CtGeometry(**_tuples(meta["geometry"]))
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r" if n in _MMAP else None) for n in _ARRAYS}
    return PreparedCt(key=meta["key"], geometry=geometry, **arrays)


def _tuples(value: object) -> object:
    """JSON lists back to the nested tuples the frozen dataclasses hold."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _save_prepared(prepared: PreparedCt, folder: Path) -> None:
    """Write into a temporary sibling folder and rename it, so a crash never leaves a half cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(prepared, name))
        meta = {"key": prepared.key, "geometry": asdict(prepared.geometry)}
        (tmp / "geometry.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "geometry.json").is_file():  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prepare(ct: CtVolume, params: PrepParams, key: str) -> PreparedCt:
    hu, labels, spacing = _downsample(ct, params.inplane_step)
    body = _body_mask(hu)
    hu = np.where(body, hu, np.int16(_AIR_HU)).astype(np.int16)
    s = ct.structures
    lung = np.isin(labels, s.lung)
    bone = np.isin(labels, s.bone)
    hu = _remove_contrast(hu, labels, s, bone, spacing, params)
    hu, erased = _erase_lung_nodules(hu, lung, spacing, params.erase_radius_mm)
    heart = np.isin(labels, s.heart)
    grow = _growth_region(hu, labels, lung, bone, s, spacing, params.cavity_radius_mm)
    flags = (lung * Flag.LUNG) | (heart * Flag.HEART) | (grow * Flag.GROW)
    edges = _slab_edges(body, params.n_slabs)
    slabs = _slab_integrals(hu, lung, edges, spacing, params)
    lung_mm = _slab_reduce(lung.astype(np.float32), edges) * spacing[1]
    heart_any = _slab_reduce(heart.astype(np.float32), edges) > 0
    lung_any = lung_mm > 0
    sites, depth = _lesion_sites(lung, spacing, params.site_stride)
    fill_hu, fill_lung = _heart_surroundings(hu, heart, lung, spacing)
    heart_sdf = _heart_sdf(heart, spacing)
    geometry = CtGeometry(
        shape=tuple(int(n) for n in hu.shape),
        spacing=spacing,
        slab_edges=tuple(int(e) for e in edges),
        heart_box=_bbox(heart),
        heart_anchor=_heart_anchor(heart),
        heart_hu=float(np.median(hu[heart])),
        hila=_hila(lung, labels, s),
        lung_rows=_lung_rows(lung_any),
        thorax_center=_thorax_center(lung_any),
        erased=erased,
        mu_water_per_mm=params.mu_water_per_mm,
        bone_split_hu=params.bone_split_hu,
    )
    return PreparedCt(
        key=key,
        geometry=geometry,
        hu=hu,
        flags=flags.astype(np.uint8),
        slabs=slabs,
        lung_mm=lung_mm.astype(np.float32),
        heart_any=heart_any,
        lung_any=lung_any,
        sites=sites,
        site_depth_mm=depth,
        heart_fill_hu=fill_hu,
        heart_fill_lung=fill_lung,
        heart_sdf=heart_sdf,
    )


def _downsample(ct: CtVolume, step: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    if step == 1:
        return ct.hu, ct.labels, ct.spacing
    z, y, x = ct.hu.shape
    y2, x2 = y // step * step, x // step * step
    blocks = ct.hu[:, :y2, :x2].astype(np.float32).reshape(z, y2 // step, step, x2 // step, step)
    hu = np.rint(blocks.mean(axis=(2, 4))).astype(np.int16)
    # Labels are categorical: take the block's centre voxel rather than an average.
    labels = ct.labels[:, step // 2 : y2 : step, step // 2 : x2 : step]
    dz, dy, dx = ct.spacing
    return hu, np.ascontiguousarray(labels), (dz, dy * step, dx * step)


def _body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient: the largest solid 3-D component after a small opening, filled slice by slice.

    The opening detaches the table, its pad and blanket folds, which touch the skin only along thin lines.
    """
    solid = (hu > -500).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    opened = np.stack([cv2.morphologyEx(sl, cv2.MORPH_OPEN, kernel) for sl in solid]).astype(bool)
    components, count = ndi.label(opened)
    if count == 0:
        raise CtError("volume", "no body found (no voxel above -500 HU)")
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    return np.stack([ndi.binary_fill_holes(sl) for sl in body])


def _dilate_mm(mask: np.ndarray, spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Binary dilation by an ellipsoid-ish neighbourhood: a disk in-plane, then a box along z."""
    ry = max(1, round(radius_mm / spacing[1]))
    rz = max(0, round(radius_mm / spacing[0]))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ry + 1, 2 * ry + 1))
    planar = np.stack([cv2.dilate(sl, kernel) for sl in mask.astype(np.uint8)])
    return ndi.maximum_filter1d(planar, size=2 * rz + 1, axis=0).astype(bool)


def _remove_contrast(
    hu: np.ndarray,
    labels: np.ndarray,
    s: Structures,
    bone: np.ndarray,
    spacing: tuple[float, float, float],
    params: PrepParams,
) -> np.ndarray:
    """Cap contrast-enhanced blood and organs at soft-tissue HU; a PA film is taken without contrast.

    Capped: every labelled non-bone voxel (organs, vessels, lung vessels), and unlabelled voxels near the heart and
    great vessels (the pulmonary trunk is not labelled). Unlabelled voxels elsewhere keep their HU: most of them are
    bone that the mask does not name (arm bones, costal calcifications).
    """
    near_blood = _dilate_mm(np.isin(labels, s.cardiac), spacing, params.enhanced_margin_mm)
    cap = ((labels > 0) & ~bone) | ((labels == 0) & near_blood)
    capped = np.minimum(hu, np.int16(params.contrast_cap_hu))
    return np.where(cap, capped, hu).astype(np.int16)


def _erase_lung_nodules(
    hu: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float], radius_mm: float
) -> tuple[np.ndarray, tuple[tuple[int, float], ...]]:
    """Replace solid lung blobs (they survive an opening that removes vessels) by surrounding lung HU.

    The source CT has one solid nodule in the left lower lobe; left in place it would sit, unlabelled, in every
    "lesion-free" film.
    """
    zs, ys, xs = _bbox_slices(lung)
    sub_hu, sub_lung = hu[zs, ys, xs], lung[zs, ys, xs]
    dense = (sub_lung & (sub_hu > -400)).astype(np.uint8)
    r = max(1, round(radius_mm / spacing[1]))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)).astype(bool)
    rz = max(1, round(radius_mm / spacing[0]))
    ball = np.stack([disk] * (2 * rz - 1 if rz > 1 else 3))
    blobs, count = ndi.label(ndi.binary_opening(dense, structure=ball))
    if count == 0:
        return hu, ()
    out = hu.copy()
    sub_out = out[zs, ys, xs]
    erased = []
    voxel_mm3 = spacing[0] * spacing[1] * spacing[2]
    for index in range(1, count + 1):
        blob = blobs == index
        region = _dilate_mm(blob, spacing, 2 * spacing[1]) & sub_lung & (sub_hu > -750)
        shell = _dilate_mm(region, spacing, 6.0) & sub_lung & ~region
        fill = np.int16(np.median(sub_hu[shell])) if shell.any() else np.int16(-850)
        sub_out[region] = fill
        erased.append((int(region.sum()), round(float(region.sum() * voxel_mm3), 1)))
    out[zs, ys, xs] = sub_out
    return out, tuple(erased)


def _growth_region(
    hu: np.ndarray,
    labels: np.ndarray,
    lung: np.ndarray,
    bone: np.ndarray,
    s: Structures,
    spacing: tuple[float, float, float],
    radius_mm: float,
) -> np.ndarray:
    """Where a resized heart may grow: inside the thoracic cavity, lung or unlabelled / cardiac soft tissue.

    The cavity is lungs + mediastinal structures closed slice by slice; the closing runs on a 4x reduced slice
    because only its coarse outline matters and a 20 mm disk is slow at full resolution.
    """
    inside = (lung | np.isin(labels, s.cardiac + s.mediastinal)).astype(np.uint8)
    factor = 4
    rows, cols = inside.shape[1:]
    r = max(1, round(radius_mm / (spacing[1] * factor)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    pad = r + 1
    cavity = np.zeros_like(lung)
    for z in np.flatnonzero(lung.any(axis=(1, 2))):
        small = cv2.resize(inside[z] * 255, (cols // factor, rows // factor), interpolation=cv2.INTER_AREA) > 0
        padded = cv2.copyMakeBorder(small.astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        closed = ndi.binary_fill_holes(cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad])
        full = cv2.resize(closed.astype(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST) > 0
        cavity[z] = full | inside[z].astype(bool)
    soft_or_lung = lung | (((labels == 0) | np.isin(labels, s.cardiac)) & (hu < 150))
    return cavity & soft_or_lung & ~bone


def _slab_edges(body: np.ndarray, n_slabs: int) -> np.ndarray:
    rows = np.flatnonzero(body.any(axis=(0, 2)))
    return np.rint(np.linspace(rows[0], rows[-1] + 1, n_slabs + 1)).astype(np.int64)


def _slab_reduce(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Sum a [z, y, x] array over y within each slab: [slab, z, x]."""
    inner = values[:, edges[0] : edges[-1], :]
    sums = np.add.reduceat(inner, edges[:-1] - edges[0], axis=1)
    return np.ascontiguousarray(np.moveaxis(sums, 1, 0))


def tissue_mu(hu: np.ndarray, lung: np.ndarray, mu_water: float, bone_split: float) -> np.ndarray:
    """Attenuation per mm by tissue class, [Tissue, ...]: mu = mu_water (1 + HU/1000), air clipped to zero."""
    hu = hu.astype(np.float32)
    soft_hu = np.minimum(hu, bone_split)
    total_soft = mu_water * np.maximum(0.0, 1.0 + soft_hu / 1000.0)
    bone = mu_water * np.maximum(0.0, hu - bone_split) / 1000.0
    return np.stack([np.where(lung, 0.0, total_soft), np.where(lung, total_soft, 0.0), bone]).astype(np.float32)


def _slab_integrals(
    hu: np.ndarray, lung: np.ndarray, edges: np.ndarray, spacing: tuple[float, float, float], params: PrepParams
) -> np.ndarray:
    out = []
    for z in range(hu.shape[0]):  # slice by slice keeps the float copy of the volume small
        mu = tissue_mu(hu[z : z + 1], lung[z : z + 1], params.mu_water_per_mm, params.bone_split_hu)
        out.append(np.stack([_slab_reduce(mu[c], edges)[:, 0] for c in Tissue]) * spacing[1])
    return np.ascontiguousarray(np.stack(out, axis=2).transpose(1, 0, 2, 3)).astype(np.float32)


def _lesion_sites(lung: np.ndarray, spacing: tuple[float, float, float], stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Lung voxels (on an in-plane stride) with their distance to the lung border, deepest first."""
    zs, ys, xs = _bbox_slices(lung)
    depth = ndi.distance_transform_edt(lung[zs, ys, xs], sampling=spacing).astype(np.float32)
    grid = np.zeros_like(depth, dtype=bool)
    grid[:, ::stride, ::stride] = True
    local = np.flatnonzero(grid & (depth > 0))
    lz, ly, lx = np.unravel_index(local, depth.shape)
    flat = np.ravel_multi_index((lz + zs.start, ly + ys.start, lx + xs.start), lung.shape)
    values = depth.ravel()[local]
    order = np.lexsort((flat, -values))  # deepest first; ties by index so the order is reproducible
    return flat[order].astype(np.int64), values[order]


def _heart_surroundings(
    hu: np.ndarray, heart: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """For each voxel of the heart's box, the HU and lung flag of the nearest voxel outside the heart.

    A smaller heart leaves its outer shell to whatever borders it there (lung at the left border, fat and
    diaphragm below), which is what these give.
    """
    box = _bbox(heart)
    pads = (2, 4, 4)
    lo = [max(0, box[2 * a] - pads[a]) for a in range(3)]
    hi = [min(heart.shape[a], box[2 * a + 1] + pads[a]) for a in range(3)]
    region = tuple(slice(lo[a], hi[a]) for a in range(3))
    _, nearest = ndi.distance_transform_edt(heart[region], sampling=spacing, return_indices=True)
    inner = tuple(slice(box[2 * a] - lo[a], box[2 * a + 1] - lo[a]) for a in range(3))
    idx = tuple(n[inner] for n in nearest)
    return np.ascontiguousarray(hu[region][idx]), np.ascontiguousarray(lung[region][idx])


_SDF_EMPTY_MM = 40.0  # signed distance given to slices without heart: interpolation towards it tapers the heart


def _heart_sdf(heart: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Per-slice signed distance to the heart border (mm, negative inside) over the heart's box.

    Interpolating signed distances between slices (shape-based interpolation) moves an oblique border smoothly
    with z; interpolating the binary label would step it every 2.5 mm slice.
    """
    z0, z1, y0, y1, x0, x1 = _bbox(heart)
    planes = [np.full((y1 - y0, x1 - x0), _SDF_EMPTY_MM, dtype=np.float32)]
    for z in range(z0, z1):
        plane = np.pad(heart[z, y0:y1, x0:x1], 1)
        if not plane.any():
            planes.append(planes[0].copy())
            continue
        outside = ndi.distance_transform_edt(~plane, sampling=spacing[1:])
        inside = ndi.distance_transform_edt(plane, sampling=spacing[1:])
        planes.append(np.minimum(outside - inside, _SDF_EMPTY_MM)[1:-1, 1:-1].astype(np.float32))
    planes.append(planes[0].copy())
    return np.stack(planes)


def _bbox_slices(mask: np.ndarray) -> tuple[slice, slice, slice]:
    if not mask.any():
        raise CtError("mask", "a required structure is empty")
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return out[0], out[1], out[2]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int, int, int]:
    zs, ys, xs = _bbox_slices(mask)
    return (zs.start, zs.stop, ys.start, ys.stop, xs.start, xs.stop)


def _heart_anchor(heart: np.ndarray) -> tuple[float, float, float]:
    """Fixed point of heart scaling: centroid in z and y, 30 % in from the right border in x.

    Cardiac enlargement on a PA film mostly moves the left border out (and the apex down and left); anchoring
    near the right border makes a scaled heart do that.
    """
    _, _, _, _, x0, x1 = _bbox(heart)
    cz, cy, _cx = ndi.center_of_mass(heart)
    return (float(cz), float(cy), float(x0 + 0.3 * (x1 - x0)))


def _hila(lung: np.ndarray, labels: np.ndarray, s: Structures) -> tuple[tuple[float, float], ...]:
    """(z, x) of each hilum on the projection: 45 % down the lung, a fifth of its width in from the medial edge."""
    out = []
    for ids, medial_is_max in ((s.lung_right, True), (s.lung_left, False)):
        side = np.isin(labels, ids).any(axis=1)  # [z, x]
        rows = np.flatnonzero(side.any(axis=1))
        z = int(rows[0] + 0.45 * (rows[-1] - rows[0]))
        cols = np.flatnonzero(side[z])
        width = cols[-1] - cols[0]
        x = cols[-1] - 0.2 * width if medial_is_max else cols[0] + 0.2 * width
        out.append((float(z), float(x)))
    return tuple(out)


def _lung_rows(lung_any: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(lung_any.any(axis=(0, 2)))
    return int(rows[0]), int(rows[-1])


def _thorax_center(lung_any: np.ndarray) -> tuple[float, float]:
    footprint = lung_any.any(axis=0)
    rows = np.flatnonzero(footprint.any(axis=1))
    cols = np.flatnonzero(footprint.any(axis=0))
    return (0.5 * (rows[0] + rows[-1]), 0.5 * (cols[0] + cols[-1]))


# ---------------------------------------------------------------- film specification


@dataclass(frozen=True)
class Anatomy:
    """One synthetic subject: tissue scales, baseline heart size and a smooth deformation."""

    soft_scale: float = 1.0  # habitus: soft-tissue attenuation
    lung_scale: float = 1.0  # inspiration: lung attenuation (air fraction)
    bone_scale: float = 1.0  # bone mineral
    heart_scale: float = 1.0  # baseline heart size relative to the source CT's
    width_scale: float = 1.0  # thorax width about its centre
    height_scale: float = 1.0  # thorax height (inspiration depth)
    warp_mm: float = 0.0  # amplitude of the common smooth displacement field
    depth_warp_mm: float = 0.0  # amplitude of the depth-proportional field (front and back move differently)
    warp_seed: int = 0


@dataclass(frozen=True)
class Pose:
    rotation_deg: float = 0.0  # in the detector plane
    axial_rotation_deg: float = 0.0  # about the patient's vertical axis (projects as depth-dependent shift)
    tilt_deg: float = 0.0  # lordotic / kyphotic tilt (depth-dependent vertical shift)
    magnification: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # (x, y) as fractions of the canvas


@dataclass(frozen=True)
class Exposure:
    """Beam, detector and CR processing of one film; pixel lengths refer to the 1024 canvas."""

    attenuation: float = 1.0  # effective-energy scale of every line integral
    bone_contrast: float = 1.0  # extra bone (and calcium) scale: lower kVp shows bone brighter
    photons: float = 2.0e4  # unattenuated quanta per canvas pixel
    scatter: float = 0.2  # scatter-to-primary ratio of the unattenuated beam, spread broadly
    heel: float = 0.0  # relative intensity gradient from top to bottom
    blur_px: float = 0.8  # detector blur (Gaussian sigma)
    edge_gain: float = 0.5  # unsharp-mask gain
    edge_sigma_px: float = 6.0
    compression: float = 0.3  # dynamic-range compression of the very low frequencies
    window: tuple[float, float] = (0.5, 99.8)  # percentiles of the body's processed values mapped to black / white
    contrast: float = 4.0  # slope of the sigmoid tone curve
    midpoint: float = 0.5
    noise_seed: int = 0


@dataclass(frozen=True)
class Edema:
    """Diffuse bilateral rise of lung attenuation, strongest around the hila and in dependent, basal lung."""

    peak_hu: float = 300.0
    diffuse: float = 0.35  # fraction of the peak everywhere in the lungs
    sigma_mm: float = 70.0  # perihilar falloff
    basal: float = 0.3  # extra towards the lung bases
    dependent: float = 0.2  # extra towards the posterior slabs
    texture: float = 0.3  # patchiness (relative amplitude of low-frequency noise)
    texture_seed: int = 0


@dataclass(frozen=True)
class Blob:
    """One soft-edged ellipsoid of a lesion, offset from the lesion centre; radii along its own axes (z, y, x)."""

    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radii_mm: tuple[float, float, float] = (5.0, 5.0, 5.0)
    yaw_deg: float = 0.0  # rotation in the axial plane
    pitch_deg: float = 0.0  # rotation in the sagittal plane


@dataclass(frozen=True)
class Lesion:
    kind: LesionKind
    center: tuple[float, float, float]  # voxel (z, y, x) of the prepared CT, inside lung
    blobs: tuple[Blob, ...]
    hu: float
    edge_mm: float = 1.0  # width of the soft edge

    @property
    def radius_mm(self) -> float:
        """Radius of a sphere around the centre that holds every blob."""
        return max(math.dist((0, 0, 0), b.offset_mm) + max(b.radii_mm) for b in self.blobs)


@dataclass(frozen=True)
class FilmSpec:
    """Everything that decides one film; render_film is a pure function of (prepared CT, spec)."""

    anatomy: Anatomy = Anatomy()
    pose: Pose = Pose()
    exposure: Exposure = Exposure()
    heart_scale: float = 1.0  # cardiomegaly factor on top of the subject's baseline heart
    edema: Edema | None = None
    lesions: tuple[Lesion, ...] = ()
    canvas: int = REFERENCE_CANVAS
    box_threshold: float = 0.15  # a box covers the lesion's projected delta above this fraction of its peak


@dataclass(frozen=True)
class RenderedFilm:
    image: np.ndarray  # uint8 [canvas, canvas]
    boxes: tuple[LesionBox, ...]  # one per lesion, in spec order
    ctr: float  # cardiothoracic ratio on the projected heart and lung silhouettes
    heart_width_mm: float
    thorax_width_mm: float


# ---------------------------------------------------------------- CT edits (deltas of the slab line integrals)


@dataclass(frozen=True)
class SlabPatch:
    """A delta of the per-slab line integrals over a rectangle: values [slab s0.., z z0.., x x0..]."""

    s0: int
    z0: int
    x0: int
    values: np.ndarray  # float32 [n_slab, n_z, n_x]
    lung_mm: np.ndarray  # float32, same shape: lung path replaced by the edit (edema must skip it)

    def add_into(self, target: np.ndarray, values: np.ndarray) -> None:
        ns, nz, nx = values.shape
        target[self.s0 : self.s0 + ns, self.z0 : self.z0 + nz, self.x0 : self.x0 + nx] += values


def _axis_scales(scale: float) -> tuple[float, float, float]:
    """(z, y, x) factors of a heart scaled by ``scale``: widest transversely, as cardiomegaly looks on a PA film."""
    return (scale**0.5, scale**0.7, scale)


_HEART_SUBSLICES = 3  # sub-slice samples averaged into each slice: partial volume of the resized heart


def scaled_heart(prepared: PreparedCt, scale: float, block: tuple[slice, slice, slice]) -> np.ndarray:
    """Fraction of each voxel of ``block`` inside the heart scaled about its anchor, float32 [z, y, x].

    Signed distances are interpolated linearly between slices and turned into a one-voxel soft edge, averaged
    over sub-slices (partial volume), then scaled in-plane with one warpAffine per slice, so the projected border
    of a resized heart stays smooth.
    """
    g = prepared.geometry
    shape = tuple(sl.stop - sl.start for sl in block)
    out = np.zeros(shape, dtype=np.float32)
    reach = _heart_block(prepared, scale)
    if any(b.stop <= r.start or r.stop <= b.start for b, r in zip(block, reach, strict=True)):
        return out
    z0, _, y0, _, x0, _ = g.heart_box
    sdf = prepared.heart_sdf  # slice 0 and the last are the empty padding slices
    edge = g.spacing[2]
    fz, fy, fx = _axis_scales(scale)
    az, ay, ax = g.heart_anchor
    inverse = np.array(
        [
            [1 / fx, 0.0, ax - ax / fx + block[2].start / fx - x0],
            [0.0, 1 / fy, ay - ay / fy + block[1].start / fy - y0],
        ]
    )
    offsets = (np.arange(_HEART_SUBSLICES) + 0.5) / _HEART_SUBSLICES - 0.5
    for k, z in enumerate(range(block[0].start, block[0].stop)):
        plane = np.zeros(sdf.shape[1:], dtype=np.float32)
        for offset in offsets:
            t = az + (z + offset - az) / fz - (z0 - 1)
            i = math.floor(t)
            if 0 <= i < sdf.shape[0] - 1:
                w = t - i
                dist = (1.0 - w) * sdf[i] + w * sdf[i + 1]
                plane += np.clip(0.5 - dist / edge, 0.0, 1.0)
        if plane.any():
            out[k] = cv2.warpAffine(
                plane / _HEART_SUBSLICES,
                inverse,
                (shape[2], shape[1]),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderValue=0,
            )
    return out


def _heart_block(prepared: PreparedCt, scale: float) -> tuple[slice, slice, slice]:
    """The union of the heart's box and its scaled box: every voxel a scaled heart adds or vacates."""
    g = prepared.geometry
    out = []
    for axis, factor in enumerate(_axis_scales(scale)):
        lo, hi, anchor = g.heart_box[2 * axis], g.heart_box[2 * axis + 1], g.heart_anchor[axis]
        new_lo = min(lo, math.floor(anchor + (lo - anchor) * factor) - 1)
        new_hi = max(hi, math.ceil(anchor + (hi - anchor) * factor) + 1)
        out.append(slice(max(0, new_lo), min(g.shape[axis], new_hi)))
    return out[0], out[1], out[2]


def _project_block(
    prepared: PreparedCt, block: tuple[slice, slice, slice], delta: np.ndarray, lung_removed: np.ndarray
) -> SlabPatch:
    """Sum block deltas ([z, y, x], already per-mm attenuation) over y within each slab."""
    edges = np.asarray(prepared.geometry.slab_edges)
    ys = block[1]
    lo, hi = max(ys.start, int(edges[0])), min(ys.stop, int(edges[-1]))
    if lo >= hi:
        raise RenderError(f"edit block y {ys.start}..{ys.stop} lies outside the body's slabs")
    s0 = int(np.searchsorted(edges, lo, side="right") - 1)
    s1 = int(np.searchsorted(edges, hi - 1, side="right") - 1)
    cuts = [lo, *[int(e) for e in edges[s0 + 1 : s1 + 1]]]
    starts = np.asarray(cuts) - ys.start
    dy = prepared.geometry.spacing[1]
    part = slice(lo - ys.start, hi - ys.start)
    values = np.add.reduceat(delta[:, part, :], starts - (lo - ys.start), axis=1) * dy
    lung = np.add.reduceat(lung_removed[:, part, :], starts - (lo - ys.start), axis=1) * dy
    return SlabPatch(
        s0,
        block[0].start,
        block[2].start,
        np.ascontiguousarray(values.transpose(1, 0, 2), dtype=np.float32),
        np.ascontiguousarray(lung.transpose(1, 0, 2), dtype=np.float32),
    )


def _class_scales(spec: FilmSpec) -> np.ndarray:
    a = spec.anatomy
    return np.asarray([a.soft_scale, a.lung_scale, a.bone_scale * spec.exposure.bone_contrast], dtype=np.float32)


def _delta(
    prepared: PreparedCt,
    block: tuple[slice, slice, slice],
    where: np.ndarray,
    new_hu: np.ndarray | float,
    new_lung: np.ndarray | bool,
    weight: np.ndarray | float,
    scales: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation change (per mm, [z, y, x] of the block) when ``weight`` of each voxel in ``where`` becomes
    tissue of ``new_hu`` (lung or not), and the change of lung path length (positive: lung removed).

    Only the changed voxels are evaluated; ``new_hu``, ``new_lung`` and ``weight`` are scalars or arrays given
    at those voxels.
    """
    g = prepared.geometry
    idx = np.nonzero(where)
    hu = np.asarray(prepared.hu[block])[idx]
    lung = (np.asarray(prepared.flags[block])[idx] & Flag.LUNG) > 0
    target_hu = np.broadcast_to(np.asarray(new_hu, dtype=np.float32), hu.shape)
    target_lung = np.broadcast_to(np.asarray(new_lung, dtype=bool), hu.shape)
    old = tissue_mu(hu, lung, g.mu_water_per_mm, g.bone_split_hu)
    new = tissue_mu(target_hu, target_lung, g.mu_water_per_mm, g.bone_split_hu)
    # An explicit sum over the three classes (not a BLAS dot) keeps the bytes independent of thread counts.
    change = sum(float(scales[c]) * (new[c] - old[c]) for c in Tissue) * weight
    shape = where.shape
    delta = np.zeros(shape, dtype=np.float32)
    delta[idx] = change
    lung_removed = np.zeros(shape, dtype=np.float32)
    lung_removed[idx] = (lung.astype(np.float32) - target_lung.astype(np.float32)) * weight
    return delta, lung_removed


def heart_patch(prepared: PreparedCt, scale: float, scales: np.ndarray) -> tuple[SlabPatch, np.ndarray]:
    """Resize the heart by ``scale``: the delta, and the resized heart's footprint per slab [slab, z, x].

    Growth fills only the GROW region (lung and mediastinal soft tissue) with blood-pool HU; shrinkage hands the
    vacated shell to the tissue that borders the heart there (see _heart_surroundings).
    """
    block = _heart_block(prepared, scale)
    new = scaled_heart(prepared, scale, block)
    flags = np.asarray(prepared.flags[block])
    old = ((flags & Flag.HEART) > 0).astype(np.float32)
    grow = (flags & Flag.GROW) > 0
    added = np.where(grow, np.clip(new - old, 0.0, 1.0), 0.0)
    vacated = np.clip(old - new, 0.0, 1.0)
    box = prepared.geometry.heart_box
    in_box = tuple(slice(box[2 * a] - block[a].start, box[2 * a + 1] - block[a].start) for a in range(3))
    fill_hu = np.full(new.shape, prepared.geometry.heart_hu, dtype=np.float32)
    fill_lung = np.zeros(new.shape, dtype=bool)
    shrinking = vacated[in_box] > 0
    fill_hu[in_box] = np.where(shrinking, prepared.heart_fill_hu, fill_hu[in_box])
    fill_lung[in_box] = shrinking & prepared.heart_fill_lung
    weight = added + vacated  # a voxel is either old heart (may be vacated) or not (may be added)
    changed = weight > 0
    delta, lung_removed = _delta(
        prepared, block, changed, fill_hu[changed], fill_lung[changed], weight[changed], scales
    )
    patch = _project_block(prepared, block, delta, lung_removed)
    crossed = _project_block(prepared, block, (new >= 0.5).astype(np.float32), np.zeros_like(lung_removed))
    return patch, crossed.values > 0


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Rotation of (z, y, x) vectors: yaw in the axial (y, x) plane, then pitch in the sagittal (z, y) plane."""
    a, b = math.radians(yaw_deg), math.radians(pitch_deg)
    yaw = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    pitch = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    return pitch @ yaw


_Z_SUBSAMPLES = 5  # sub-slice samples per 2.5 mm slice: partial volume of small lesions along z


def lesion_fraction(prepared: PreparedCt, lesion: Lesion, block: tuple[slice, slice, slice]) -> np.ndarray:
    """Fraction of each voxel of ``block`` inside the lesion (soft edge, partial volume along z)."""
    dz, dy, dx = prepared.geometry.spacing
    cz, cy, cx = lesion.center
    sub = (np.arange(_Z_SUBSAMPLES) + 0.5) / _Z_SUBSAMPLES - 0.5
    z = ((np.arange(block[0].start, block[0].stop)[:, None] + sub[None, :]) - cz) * dz  # [nz, nsub]
    y = (np.arange(block[1].start, block[1].stop) - cy) * dy
    x = (np.arange(block[2].start, block[2].stop) - cx) * dx
    zz = z.reshape(-1)[:, None, None].astype(np.float32)
    yy = y[None, :, None].astype(np.float32)
    xx = x[None, None, :].astype(np.float32)
    inside = np.zeros((zz.shape[0], yy.shape[1], xx.shape[2]), dtype=np.float32)
    for blob in lesion.blobs:
        rot = _rotation(blob.yaw_deg, blob.pitch_deg).T.astype(np.float32)  # world -> blob axes
        pz, py, px = zz - blob.offset_mm[0], yy - blob.offset_mm[1], xx - blob.offset_mm[2]
        rho2 = np.zeros_like(inside)
        for axis in range(3):
            q = rot[axis, 0] * pz + rot[axis, 1] * py + rot[axis, 2] * px
            rho2 += (q / blob.radii_mm[axis]) ** 2
        # Signed distance to the surface, approximately, scaled by the mean radius: a ramp of width edge_mm.
        mean_r = float(np.mean(blob.radii_mm))
        ramp = np.clip(0.5 + (1.0 - np.sqrt(rho2)) * mean_r / lesion.edge_mm, 0.0, 1.0)
        np.maximum(inside, ramp, out=inside)
    return inside.reshape(z.shape[0], _Z_SUBSAMPLES, *inside.shape[1:]).mean(axis=1)


def lesion_block(prepared: PreparedCt, lesion: Lesion) -> tuple[slice, slice, slice]:
    reach = lesion.radius_mm + lesion.edge_mm
    out = []
    for axis in range(3):
        half = math.ceil(reach / prepared.geometry.spacing[axis]) + 1
        c = round(lesion.center[axis])
        out.append(slice(max(0, c - half), min(prepared.geometry.shape[axis], c + half + 1)))
    return out[0], out[1], out[2]


def lesion_patch(prepared: PreparedCt, lesion: Lesion, heart_scale: float, scales: np.ndarray) -> SlabPatch:
    """The lesion replaces lung parenchyma (never bone, mediastinum or a resized heart) inside its block."""
    block = lesion_block(prepared, lesion)
    fraction = lesion_fraction(prepared, lesion, block)
    lung = (np.asarray(prepared.flags[block]) & Flag.LUNG) > 0
    if heart_scale != 1.0:
        lung &= scaled_heart(prepared, heart_scale, block) < 0.5
    where = lung & (fraction > 0)
    if not where.any():
        raise RenderError(f"{lesion.kind.value} at voxel {lesion.center} has no lung voxel to replace")
    delta, lung_removed = _delta(prepared, block, where, lesion.hu, False, fraction[where], scales)
    return _project_block(prepared, block, delta, lung_removed)


def edema_hu(prepared: PreparedCt, edema: Edema) -> np.ndarray:
    """HU added to lung voxels, [slab, z, x]: constant along y within a slab, so the edit stays exact per slab."""
    g = prepared.geometry
    nz, _, nx = g.shape
    dz, _, dx = g.spacing
    z = np.arange(nz, dtype=np.float32)[:, None] * dz
    x = np.arange(nx, dtype=np.float32)[None, :] * dx
    dist2 = np.min([(z - hz * dz) ** 2 + (x - hx * dx) ** 2 for hz, hx in g.hila], axis=0)
    perihilar = edema.diffuse + (1.0 - edema.diffuse) * np.exp(-dist2 / (2.0 * edema.sigma_mm**2))
    top, bottom = g.lung_rows
    basal = 1.0 + edema.basal * np.clip((z / dz - top) / max(1, bottom - top), 0.0, 1.0)
    rng = np.random.default_rng(edema.texture_seed)
    coarse = rng.standard_normal((10, 10)).astype(np.float32)
    patches = 1.0 + edema.texture * cv2.resize(coarse, (nx, nz), interpolation=cv2.INTER_CUBIC)
    depth = 1.0 + edema.dependent * (g.slab_depth / max(g.half_depth_mm, 1e-6))
    field = edema.peak_hu * perihilar * basal * np.clip(patches, 0.0, None)
    return (depth[:, None, None] * field[None]).astype(np.float32)


# ---------------------------------------------------------------- geometry: slab warps and the canvas map


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 4) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def slab_maps(prepared: PreparedCt, anatomy: Anatomy, pose: Pose) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per slab, the cv2.remap maps from the isotropic film frame to the projection grid [z, x].

    The displacement of slab s is u_common + (depth_s / half_depth) * u_depth plus the parallax shear of the axial
    rotation and tilt, after a width / height scale about the thorax centre. All fields are backward (defined on
    the output frame), which is what remap needs; they are smooth at the scale of the lungs.
    """
    g = prepared.geometry
    rows, cols = prepared.frame_shape
    dz, _, dx = g.spacing
    rng = np.random.default_rng(anatomy.warp_seed)
    common = [_smooth_field(rng, (rows, cols)) * anatomy.warp_mm for _ in range(2)]
    depth = [_smooth_field(rng, (rows, cols)) * anatomy.depth_warp_mm for _ in range(2)]
    r = np.arange(rows, dtype=np.float32)[:, None] * dx  # frame pixels are dx mm square
    c = np.arange(cols, dtype=np.float32)[None, :] * dx
    cz, cx = g.thorax_center[0] * dz, g.thorax_center[1] * dx
    base_z = cz + (r - cz) / anatomy.height_scale
    base_x = cx + (c - cx) / anatomy.width_scale
    shear_x = math.tan(math.radians(pose.axial_rotation_deg))
    shear_z = math.tan(math.radians(pose.tilt_deg))
    maps = []
    for d_mm in g.slab_depth:
        w = d_mm / max(g.half_depth_mm, 1e-6)
        src_x = base_x + common[0] + w * depth[0] + d_mm * shear_x
        src_z = base_z + common[1] + w * depth[1] + d_mm * shear_z
        maps.append(((src_x / dx).astype(np.float32), (src_z / dz).astype(np.float32)))
    return maps


def canvas_affine(frame_shape: tuple[int, int], canvas: int, pose: Pose) -> np.ndarray:
    """2x3 map from film-frame pixels to canvas pixels: symmetric zero pad to a square, resize, then pose.

    The pad and resize follow lesionsignal.canvas.to_canvas (top/left pad = floor of half the difference, pixel
    centres aligned as cv2.resize aligns them); the pose rotates and scales about the canvas centre and shifts.
    """
    rows, cols = frame_shape
    side = max(rows, cols)
    k = canvas / side
    top, left = (side - rows) // 2, (side - cols) // 2
    resize = np.array([[k, 0.0, (left + 0.5) * k - 0.5], [0.0, k, (top + 0.5) * k - 0.5], [0, 0, 1]])
    centre = (canvas - 1) / 2.0
    a = math.radians(pose.rotation_deg)
    m = pose.magnification
    rot = np.array([[m * math.cos(a), -m * math.sin(a), 0.0], [m * math.sin(a), m * math.cos(a), 0.0], [0, 0, 1]])
    to_centre = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1.0]])
    back = np.array([[1, 0, centre + pose.shift[0] * canvas], [0, 1, centre + pose.shift[1] * canvas], [0, 0, 1.0]])
    return (back @ rot @ to_centre @ resize)[:2]


def _remap(
    image: np.ndarray, maps: tuple[np.ndarray, np.ndarray], interpolation: int, border: int = cv2.BORDER_CONSTANT
) -> np.ndarray:
    return cv2.remap(image, maps[0], maps[1], interpolation, borderMode=border, borderValue=0)


def _to_canvas(frame: np.ndarray, affine: np.ndarray, canvas: int, interpolation: int) -> np.ndarray:
    return cv2.warpAffine(
        frame, affine, (canvas, canvas), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


# ---------------------------------------------------------------- film formation


def _lowpass(image: np.ndarray, sigma: float) -> np.ndarray:
    """A broad Gaussian blur computed on a reduced copy: the same result for smooth fields, far cheaper."""
    factor = max(1, int(sigma // 4))
    if factor == 1:
        return cv2.GaussianBlur(image, (0, 0), sigma)
    small = cv2.resize(image, (image.shape[1] // factor, image.shape[0] // factor), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def _masked_blur(image: np.ndarray, weight: np.ndarray, sigma: float, broad: bool = False) -> np.ndarray:
    """Gaussian blur of ``image`` over the exposed field only (normalised convolution): no halo at the field edge."""
    blur = _lowpass if broad else (lambda a, s: cv2.GaussianBlur(a, (0, 0), s))
    return blur(image * weight, sigma) / np.maximum(blur(weight, sigma), 1e-3)


def film_from_line_integral(
    line_integral: np.ndarray, exposure: Exposure, field: np.ndarray | None = None
) -> np.ndarray:
    """Line integrals on the canvas to an 8-bit film (bones white, lungs and air dark).

    ``field`` (bool, canvas shape) is the exposed area: the CT's extent pushed through the canvas map. Outside it
    no radiation arrives, nothing scatters from there, and the film is left black.
    """
    size = line_integral.shape[0]
    px = size / REFERENCE_CANVAS
    weight = np.ones_like(line_integral) if field is None else field.astype(np.float32)
    body = (line_integral > 0.05) & (weight > 0)
    primary = np.exp(-exposure.attenuation * np.clip(line_integral, 0.0, None)).astype(np.float32) * weight
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None]
    primary *= 1.0 + exposure.heel * ramp
    detected = primary + exposure.scatter * _lowpass(primary, 60.0 * px)
    rng = np.random.default_rng(exposure.noise_seed)
    photons = exposure.photons / (px * px)  # quanta per pixel grow with the pixel's area
    noise = rng.standard_normal(detected.shape, dtype=np.float32)
    detected = detected + noise * np.sqrt(np.maximum(detected, 0.0) / photons)
    detected = cv2.GaussianBlur(detected, (0, 0), max(exposure.blur_px * px, 0.3))
    density = -np.log(np.clip(detected, 1e-4, None))
    detail = density - _masked_blur(density, weight, exposure.edge_sigma_px * px)
    broad = _masked_blur(density, weight, 80.0 * px, broad=True)
    processed = density + exposure.edge_gain * detail - exposure.compression * (broad - float(broad[body].mean()))
    sample = processed[::4, ::4][body[::4, ::4]]
    lo, hi = np.percentile(sample, exposure.window)
    x = np.clip((processed - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    tone = np.tanh(exposure.contrast * (x - exposure.midpoint))
    lo_t, hi_t = (
        math.tanh(-exposure.contrast * exposure.midpoint),
        math.tanh(exposure.contrast * (1 - exposure.midpoint)),
    )
    film = (tone - lo_t) / (hi_t - lo_t) * weight
    return np.rint(np.clip(film, 0.0, 1.0) * 255.0).astype(np.uint8)


def _extent(mask: np.ndarray) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if cols.size else 0


@dataclass(frozen=True)
class _EditedCt:
    slabs: np.ndarray  # [slab, z, x] line integrals with every edit
    heart_any: np.ndarray  # [slab, z, x] footprint of the (resized) heart
    lesions: tuple[SlabPatch, ...]  # each lesion's own delta, for its box


def _edit(prepared: PreparedCt, spec: FilmSpec) -> _EditedCt:
    """The subject's slab line integrals with the heart resized, lesions inserted and edema added."""
    scales = _class_scales(spec)
    slabs = sum(float(scales[c]) * prepared.slabs[:, c] for c in Tissue).astype(np.float32)
    lung_mm = np.array(prepared.lung_mm, dtype=np.float32)
    heart_any = np.array(prepared.heart_any)
    heart_scale = spec.anatomy.heart_scale * spec.heart_scale
    if heart_scale <= 0.0:
        raise RenderError(f"heart scale must be positive, got {heart_scale:g}")
    if heart_scale != 1.0:
        patch, crossed = heart_patch(prepared, heart_scale, scales)
        patch.add_into(slabs, patch.values)
        patch.add_into(lung_mm, -patch.lung_mm)
        ns, nz, nx = crossed.shape
        # The block holds every voxel of the old and new heart, so its footprint replaces the old one there.
        heart_any[patch.s0 : patch.s0 + ns, patch.z0 : patch.z0 + nz, patch.x0 : patch.x0 + nx] = crossed
    lesions = tuple(lesion_patch(prepared, lesion, heart_scale, scales) for lesion in spec.lesions)
    for patch in lesions:
        patch.add_into(slabs, patch.values)
        patch.add_into(lung_mm, -patch.lung_mm)
    if spec.edema is not None:
        # Edema fluid is soft tissue in the lung that is still lung after the heart and lesion edits.
        mu_per_hu = scales[Tissue.SOFT] * prepared.geometry.mu_water_per_mm / 1000.0
        slabs += mu_per_hu * edema_hu(prepared, spec.edema) * lung_mm
    return _EditedCt(slabs, heart_any, lesions)


def render_film(prepared: PreparedCt, spec: FilmSpec) -> RenderedFilm:
    """Render one film and its lesion boxes; a pure function of the prepared CT and the spec."""
    edited = _edit(prepared, spec)
    maps = slab_maps(prepared, spec.anatomy, spec.pose)
    # Where the deformation reaches past the CT's first or last slice, repeat that slice: the film then ends at
    # the straight collimation edge of the canvas map instead of a wavy CT border.
    frame = sum(_remap(edited.slabs[s], maps[s], cv2.INTER_CUBIC, cv2.BORDER_REPLICATE) for s in range(len(maps)))
    heart_w = _extent(_union_frame(edited.heart_any, maps))
    thorax_w = _extent(_union_frame(prepared.lung_any, maps))
    if thorax_w == 0:
        raise RenderError("the lungs left the film frame: deformation or pose too large")
    affine = canvas_affine(prepared.frame_shape, spec.canvas, spec.pose)
    line_integral = _to_canvas(frame.astype(np.float32), affine, spec.canvas, cv2.INTER_LANCZOS4)
    field = _to_canvas(np.ones(prepared.frame_shape, np.float32), affine, spec.canvas, cv2.INTER_LINEAR) > 0.5
    image = film_from_line_integral(line_integral, spec.exposure, field)
    boxes = tuple(
        _lesion_box(prepared, patch, lesion, maps, affine, spec)
        for patch, lesion in zip(edited.lesions, spec.lesions, strict=True)
    )
    dx = prepared.geometry.spacing[2]
    return RenderedFilm(image, boxes, heart_w / thorax_w, heart_w * dx, thorax_w * dx)


def _union_frame(masks: np.ndarray, maps: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    out = np.zeros(maps[0][0].shape, dtype=bool)
    for s, m in enumerate(maps):
        if masks[s].any():
            out |= _remap(masks[s].astype(np.float32), m, cv2.INTER_LINEAR) > 0.5
    return out


def _lesion_box(
    prepared: PreparedCt,
    patch: SlabPatch,
    lesion: Lesion,
    maps: list[tuple[np.ndarray, np.ndarray]],
    affine: np.ndarray,
    spec: FilmSpec,
) -> LesionBox:
    """Bounding box of the lesion's own projected delta, through the same slab warps and canvas map as the film."""
    nz, _, nx = prepared.geometry.shape
    frame = np.zeros(maps[0][0].shape, dtype=np.float32)
    ns, pz, px = patch.values.shape
    for k in range(ns):
        grid = np.zeros((nz, nx), dtype=np.float32)
        grid[patch.z0 : patch.z0 + pz, patch.x0 : patch.x0 + px] = np.abs(patch.values[k])
        frame += _remap(grid, maps[patch.s0 + k], cv2.INTER_LINEAR)
    canvas = _to_canvas(frame, affine, spec.canvas, cv2.INTER_LINEAR)
    peak = float(canvas.max())
    if peak <= 0.0:
        raise RenderError(f"{lesion.kind.value} at voxel {lesion.center} is not on the film (outside lung or canvas)")
    ys, xs = np.nonzero(canvas > spec.box_threshold * peak)
    return LesionBox(lesion.kind.value, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


# ---------------------------------------------------------------- a synthetic CT for tests and smoke runs

_PHANTOM_STRUCTURES = (
    ("organs", 10, "lung_upper_lobe_left"),
    ("organs", 12, "lung_upper_lobe_right"),
    ("vertebrae", 38, "vertebrae_T6"),
    ("cardiac", 51, "heart"),
    ("cardiac", 52, "aorta"),
    ("ribs", 96, "rib_left_5"),
    ("ribs", 108, "rib_right_5"),
)


def phantom_volumes(shape: tuple[int, int, int] = (48, 80, 80)) -> tuple[np.ndarray, np.ndarray]:
    """A small chest phantom in canonical [z inferior, y posterior, x patient-left] order: HU and labels.

    Body ellipse, two lungs (-850 HU), a contrast-filled heart (300 HU) on the patient's left, an aorta, a spine,
    a pair of ribs, a patient table behind the body and one solid nodule inside the left lung label, so that
    preparation has contrast to remove, a table to cut and a source nodule to erase.
    """
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    hu = np.full(shape, _AIR_HU, dtype=np.int16)
    labels = np.zeros(shape, dtype=np.uint8)
    body = ((x / 0.85) ** 2 + (y / 0.6) ** 2 <= 1.0) & (np.abs(z) < 0.95)
    hu[body] = 20
    hu[(np.abs(y - 0.85) < 0.03) & (np.abs(x) < 0.9)] = 300  # the table, separated from the body by air
    for label, cx in ((12, -0.4), (10, 0.4)):
        lung = ((x - cx) / 0.3) ** 2 + ((y + 0.02) / 0.4) ** 2 + ((z + 0.1) / 0.7) ** 2 <= 1.0
        hu[lung], labels[lung] = -850, label
    heart = ((x - 0.12) / 0.3) ** 2 + ((y + 0.15) / 0.28) ** 2 + ((z - 0.25) / 0.35) ** 2 <= 1.0
    hu[heart], labels[heart] = 300, 51
    aorta = ((x + 0.05) ** 2 + (y - 0.1) ** 2 <= 0.06**2) & (z < 0.2) & (z > -0.7)
    hu[aorta], labels[aorta] = 300, 52
    spine = (x**2 + (y - 0.4) ** 2 <= 0.12**2) & body
    hu[spine], labels[spine] = 700, 38
    for label, side in ((108, -1.0), (96, 1.0)):
        rib = (np.abs(np.hypot((x - side * 0.05) / 0.8, y / 0.55) - 1.0) < 0.035) & (np.abs(z + 0.2) < 0.05)
        rib &= side * x > 0.05
        hu[rib], labels[rib] = 800, label
    nodule = ((x - 0.45) / 0.1) ** 2 + ((y + 0.05) / 0.1) ** 2 + ((z + 0.35) / 0.2) ** 2 <= 1.0
    hu[nodule] = 40  # left inside the lung label, as in the source CT
    return hu, labels


def write_phantom_ct(
    folder: Path, shape: tuple[int, int, int] = (48, 80, 80), spacing: tuple[float, float, float] = (2.5, 1.5, 1.5)
) -> CtSource:
    """Write the phantom as NIfTI volume + mask + structures.csv, stored like the source CT (axes L, A, S)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hu, labels = phantom_volumes(shape)
    dz, dy, dx = spacing

    def to_las(volume: np.ndarray) -> np.ndarray:
        # canonical [z inferior, y posterior, x left] -> voxel [i left, j anterior, k superior]
        return np.ascontiguousarray(np.transpose(volume[::-1, ::-1, :], (2, 1, 0)))

    affine = np.diag([-dx, dy, dz, 1.0])
    source = CtSource(folder / "cxr.nii.gz", folder / "mask.nii.gz", folder / "structures.csv")
    nib.save(nib.Nifti1Image(to_las(hu), affine), str(source.volume))
    nib.save(nib.Nifti1Image(to_las(labels), affine), str(source.mask))
    rows = ["group,original_idx,structure,id"]
    rows += [f"{group},{i},{name},{label}" for i, (group, label, name) in enumerate(_PHANTOM_STRUCTURES, start=1)]
    source.structures.write_text("\n".join(rows) + "\n")
    return source
