"""The augmented views of one film for DINO: random resized crops, brightness and contrast, blur, solarisation.

Everything is drawn from the generator passed in, so a view depends only on the film and that generator's seed
(the loop seeds it by run seed, epoch and position: a resumed run draws the same views). Crops are taken from the
8-bit film and resized with area averaging, the anti-aliased downscale the encoder's processor also applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from lesionsignal.training.recipe import Masking, Views


@dataclass(frozen=True)
class FilmViews:
    """(2, S, S) global and (n_local, s, s) local views of one film, float32, normalised."""

    globals_: np.ndarray
    locals_: np.ndarray


@dataclass(frozen=True)
class Normalisation:
    """Input normalisation of a gray film scaled to [0, 1]: (x - mean) / std on every channel."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")


def film_statistics(films: list[np.ndarray], size: int) -> Normalisation:
    """Mean and standard deviation of the films' pixels in [0, 1] after the resize the encoder sees (4 decimals)."""
    if not films:
        raise ValueError("no films to compute statistics from")
    total = total_sq = count = 0.0
    for film in films:
        small = cv2.resize(film, (size, size), interpolation=cv2.INTER_AREA).astype(np.float64) / 255
        total += small.sum()
        total_sq += np.square(small).sum()
        count += small.size
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean**2, 1e-12))
    return Normalisation(round(float(mean), 4), round(float(std), 4))


def random_crop(
    film: np.ndarray,
    size: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    aspect: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """A crop of area fraction in ``scale`` and aspect ratio in ``aspect``, resized to ``size`` (float in [0, 1])."""
    height, width = film.shape
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:  # torchvision's fallback: the whole image
        top, left, h, w = 0, 0, height, width
    crop = film[top : top + h, left : left + w]
    interpolation = cv2.INTER_AREA if h >= size else cv2.INTER_CUBIC
    out = cv2.resize(crop, (size, size), interpolation=interpolation)
    return out.astype(np.float32) / 255


def photometric(
    image: np.ndarray, views: Views, blur_p: float, solarize_p: float, rng: np.random.Generator
) -> np.ndarray:
    """Brightness and contrast jitter, Gaussian blur and solarisation, each with its probability."""
    out = image
    if rng.random() < views.jitter_p:
        out = out * rng.uniform(1 - views.brightness, 1 + views.brightness)
        mean = float(out.mean())
        out = (out - mean) * rng.uniform(1 - views.contrast, 1 + views.contrast) + mean
        out = np.clip(out, 0.0, 1.0)
    if rng.random() < blur_p:
        sigma = rng.uniform(*views.blur_sigma)
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    if rng.random() < solarize_p:
        out = np.where(out >= 0.5, 1.0 - out, out)
    return out.astype(np.float32, copy=False)


def film_views(
    film: np.ndarray, views: Views, image_size: int, norm: Normalisation, rng: np.random.Generator
) -> FilmViews:
    """DINO's views of an 8-bit film: two globals at ``image_size`` and ``views.n_local`` locals."""
    if film.dtype != np.uint8 or film.ndim != 2:
        raise ValueError(f"a film must be a 2-D uint8 array, got {film.dtype} {film.shape}")
    first, second, local = views.blur_p
    globals_ = [
        photometric(random_crop(film, image_size, views.global_scale, rng, views.aspect), views, first, 0.0, rng),
        photometric(
            random_crop(film, image_size, views.global_scale, rng, views.aspect), views, second, views.solarize_p, rng
        ),
    ]
    locals_ = [
        photometric(random_crop(film, views.local_size, views.local_scale, rng, views.aspect), views, local, 0.0, rng)
        for _ in range(views.n_local)
    ]
    return FilmViews(_normalised(globals_, norm), _normalised(locals_, norm, views.local_size))


def masked_view(
    film: np.ndarray, image_size: int, masking: Masking, views: Views, norm: Normalisation, rng: np.random.Generator
) -> np.ndarray:
    """MAE's one view of an 8-bit film: a random resized crop with brightness and contrast jitter, normalised."""
    crop = random_crop(film, image_size, masking.crop_scale, rng)
    jittered = photometric(crop, views, blur_p=0.0, solarize_p=0.0, rng=rng)
    return (jittered - np.float32(norm.mean)) / np.float32(norm.std)


def _normalised(images: list[np.ndarray], norm: Normalisation, size: int | None = None) -> np.ndarray:
    if not images:
        return np.zeros((0, size or 0, size or 0), np.float32)
    return (np.stack(images) - np.float32(norm.mean)) / np.float32(norm.std)
