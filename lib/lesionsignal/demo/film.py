"""Film physics: line integrals on the canvas to an 8-bit PA film.

Beer-Lambert transmission, heel-effect gradient, scatter (a broad blur of the primary), quantum noise (Gaussian
approximation of Poisson counts), detector blur, log, unsharp-mask edge enhancement and dynamic-range compression
as in CR processing, a percentile window and a sigmoid tone curve: bones white, lungs dark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

REFERENCE_CANVAS = 1024  # film-processing lengths are given for this canvas and scaled to others


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
