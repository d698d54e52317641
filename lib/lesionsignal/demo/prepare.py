"""The prepared CT: everything a film needs that does not depend on the film, computed once and cached on disk.

The CT is prepared once per (CT checksums, preparation parameters, preparation code) and stored as ``.npy`` files
under that key: contrast removed, table and blankets cut away, the one solid nodule of the source CT erased, and
the AP axis cut into ``n_slabs`` depth slabs whose per-tissue line integrals are stored (see
:mod:`lesionsignal.demo.slabs`). A subject is then a weighted sum of these, with no 3-D pass over the volume.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lesionsignal.core.cache import Codec, Store
from lesionsignal.core.files import atomic_folder
from lesionsignal.demo import cleanup, landmarks
from lesionsignal.demo.ct import AIR_HU, CtSource, CtVolume, load_ct
from lesionsignal.demo.masks import bbox
from lesionsignal.demo.prep_params import PrepParams
from lesionsignal.demo.slabs import slab_edges, slab_integrals, slab_sums


class Flag(enum.IntFlag):
    """Bits of ``PreparedCt.flags``: what a voxel is, for the edits."""

    LUNG = 1
    HEART = 2
    GROW = 4  # the heart may grow into this voxel: lung or mediastinal soft tissue, not bone or abdomen


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


def prepared_store(cache_dir: Path) -> Store[PreparedCt]:
    """Prepared CTs, one folder each; the code of this module's import closure is in every key."""
    return Store.of(Path(cache_dir), Codec("", _save_prepared, load_prepared), __name__)


def prepare_ct(
    source: CtSource, params: PrepParams, cache_dir: Path, checksums: dict[str, str] | None = None
) -> PreparedCt:
    """The prepared CT of ``source`` under ``cache_dir``, building and caching it first when absent."""
    store = prepared_store(cache_dir)
    key = store.key(checksums or source.checksums(), params)
    return store.get_or_compute(key, lambda: _prepare(load_ct(source), params, key))


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


def _save_prepared(folder: Path, prepared: PreparedCt) -> None:
    """Written into a temporary sibling folder renamed into place, so a crash never leaves a half cache."""
    with atomic_folder(folder) as tmp:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(prepared, name))
        meta = {"key": prepared.key, "geometry": asdict(prepared.geometry)}
        (tmp / "geometry.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def _prepare(ct: CtVolume, params: PrepParams, key: str) -> PreparedCt:
    """Clean the CT, find its regions and landmarks, and sum it into slabs."""
    hu, labels, spacing = cleanup.downsample(ct, params.inplane_step)
    body = cleanup.body_mask(hu)
    hu = np.where(body, hu, np.int16(AIR_HU)).astype(np.int16)
    s = ct.structures
    lung = np.isin(labels, s.lung)
    bone = np.isin(labels, s.bone)
    hu = cleanup.remove_contrast(hu, labels, s, bone, spacing, params)
    hu, erased = cleanup.erase_lung_nodules(hu, lung, spacing, params.erase_radius_mm)
    heart = np.isin(labels, s.heart)
    grow = landmarks.growth_region(hu, labels, lung, bone, s, spacing, params.cavity_radius_mm)
    flags = (lung * Flag.LUNG) | (heart * Flag.HEART) | (grow * Flag.GROW)
    edges = slab_edges(body, params.n_slabs)
    slabs = slab_integrals(hu, lung, edges, spacing, params.mu_water_per_mm, params.bone_split_hu)
    lung_mm = slab_sums(lung.astype(np.float32), edges) * spacing[1]
    heart_any = slab_sums(heart.astype(np.float32), edges) > 0
    lung_any = lung_mm > 0
    sites, depth = landmarks.lesion_sites(lung, spacing, params.site_stride)
    fill_hu, fill_lung = landmarks.heart_surroundings(hu, heart, lung, spacing)
    heart_sdf = landmarks.heart_signed_distance(heart, spacing)
    geometry = CtGeometry(
        shape=tuple(int(n) for n in hu.shape),
        spacing=spacing,
        slab_edges=tuple(int(e) for e in edges),
        heart_box=bbox(heart),
        heart_anchor=landmarks.heart_anchor(heart),
        heart_hu=float(np.median(hu[heart])),
        hila=landmarks.hila(lung, labels, s),
        lung_rows=landmarks.lung_rows(lung_any),
        thorax_center=landmarks.thorax_center(lung_any),
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
