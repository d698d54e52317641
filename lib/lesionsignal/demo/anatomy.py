"""A synthetic subject: what one patient's films share (its deformation is applied by
:func:`lesionsignal.demo.projection.slab_maps`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionsignal.demo.slabs import Tissue


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

    def tissue_scales(self, bone_contrast: float) -> np.ndarray:
        """The factor on each tissue class's line integrals, indexed by Tissue; ``bone_contrast`` is the exposure's
        (a lower kVp shows bone brighter) on top of the subject's bone mineral."""
        scale = {
            Tissue.SOFT: self.soft_scale,
            Tissue.LUNG: self.lung_scale,
            Tissue.BONE: self.bone_scale * bone_contrast,
        }
        return np.asarray([scale[t] for t in Tissue], dtype=np.float32)
