"""A small synthetic chest CT for the demo tests: volumes in memory, or written as the three files of a CtSource."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from lesionsignal.demo.ct import AIR_HU, CtSource

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
    hu = np.full(shape, AIR_HU, dtype=np.int16)
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
