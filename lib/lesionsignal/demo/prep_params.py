"""The choices made once per CT when it is prepared; they are part of the prepared volume's cache key.

Kept apart from the preparation code so that the cohort configuration, which nests them, imports no image library.
"""

from __future__ import annotations

from dataclasses import dataclass

from lesionsignal.core.validate import FieldError


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
