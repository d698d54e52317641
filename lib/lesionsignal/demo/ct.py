"""The source CT: its three files (HU volume, organ mask, structures table), read and reoriented to one convention.

Array convention of the whole demo package: volumes are ``[z, y, x]`` with z from superior to inferior, y from
anterior to posterior and x from the patient's right to left, so a projection ``[z, x]`` is already a PA film as it
is viewed (the heart on the image's right).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionsignal.core.files import sha256_file

CANONICAL_AXES = ("I", "P", "L")  # array axes point inferior, posterior, patient-left
AIR_HU = -1000
_STRUCTURE_COLUMNS = ("group", "structure", "id")
_BONE_GROUPS = frozenset({"vertebrae", "ribs", "skeleton"})
_HEART_NAMES = frozenset({"heart", "atrial_appendage_left"})
_MEDIASTINAL_NAMES = frozenset({"trachea", "esophagus"})


class CtError(ValueError):
    """A CT input is unusable: the message names the file and what is wrong with it."""

    def __init__(self, source: str | Path, reason: str) -> None:
        super().__init__(f"{source}: {reason}")


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
            out[role] = sha256_file(path)
        return out


def as_source(ct: object) -> CtSource:
    """A CtSource from a CtSource, any object with volume / mask / structures paths, or a 3-sequence of paths."""
    if isinstance(ct, CtSource):
        return ct
    if all(hasattr(ct, name) for name in ("volume", "mask", "structures")):
        return CtSource(Path(ct.volume), Path(ct.mask), Path(ct.structures))
    paths = [Path(p) for p in ct] if isinstance(ct, Sequence) and not isinstance(ct, str) else []
    if len(paths) != 3:
        raise ValueError(f"ct must be (volume, mask, structures) paths, got {ct!r}")
    return CtSource(*paths)


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
    """The loaded CT, in the canonical orientation."""

    hu: np.ndarray  # int16 [z, y, x]
    labels: np.ndarray  # uint8 [z, y, x]
    spacing: tuple[float, float, float]  # mm along z, y, x
    structures: Structures


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
