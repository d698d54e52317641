"""The fine-tuned CNN pixel-signal ceiling (protocol section 5): is a perturbation detectable from the pixels at all?

A CNN is trained end to end to tell each clean training image from its perturbed twin (the paired design of the
detection experiment: same images, same patient-disjoint split, 50:50 classes) and scored once on the test pairs.
Two views of every image, so the ceiling is measured with and without knowing where the patch is:
- WHOLE: the whole 1024 canvas area-downsampled to ``whole_side`` (the paper's fine-tuned ResNet-50, T3);
- ORACLE: an ``oracle_side`` window of the canvas at full resolution centred on the known patch (the paper's
  ResNet-50 oracle, T4), shifted, never shrunk, to stay on the canvas.

Architectures. The study fine-tunes torchvision's ResNet-50 (ImageNet IMAGENET1K_V2 weights when a local copy
exists; torchvision's cache file or ``weights``) at 224 px with ImageNet normalisation, as the paper did. On the
demo and smoke runs a small CNN trains from scratch on CPU in seconds: a lossless space-to-depth step brings
either view to a 64 x 64 grid, three 3 x 3 convolutions with batch normalisation follow, and a global MAX pool
reads the strongest local response, because the question is whether a small pattern is present anywhere, not how
much of the image it fills. Its input is the image minus its Gaussian-smoothed copy (sigma 1.5 px): on the demo
films, three epochs from scratch on the raw gray levels found nothing in the oracle window (AUC 0.50 for C1, S8
and iso blur 8), with the high-pass they found C1 and S8 (0.89, 1.00); ten epochs also find iso blur 8 (0.97).

Everything random (initial weights, batch order) comes from the config's seed; the global torch generator is left
as it was found. On CPU the same inputs and seed give the same scores bit for bit.
"""

from __future__ import annotations

import enum
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lesionsignal.analysis.detection import RESULT_COLUMNS
from lesionsignal.analysis.probe import threshold_max_f1
from lesionsignal.analysis.stats import auc, bootstrap_auc_ci
from lesionsignal.core.box import Box, centred_window
from lesionsignal.core.cache import FRAMES, Store
from lesionsignal.core.canvas import Resample
from lesionsignal.core.digests import stable_digest
from lesionsignal.core.kinds import Pool
from lesionsignal.core.parallel import map_single_threaded
from lesionsignal.core.validate import FieldError
from lesionsignal.data.images import ImageItem, load_canvases
from lesionsignal.stimuli.inject import apply
from lesionsignal.stimuli.panel import Condition, Family
from lesionsignal.stimuli.placement import Placement

_GRID = 64  # side of the grid the small CNN's first convolution sees, whatever the view
_IMAGENET_MEAN, _IMAGENET_STD = 0.449, 0.226  # ImageNet channel statistics averaged: the films are gray
_HIGHPASS_SCALE = 16.0  # gray levels: brings the high-passed detail of a film to about unit scale


class FinetuneError(ValueError):
    """Input the fine-tuned ceiling cannot be trained or scored on; the message names the condition or view."""


class Architecture(enum.Enum):
    SMALL_CNN = "small-cnn"  # demo and smoke: from scratch on CPU
    RESNET50 = "resnet50"  # the study: torchvision ResNet-50, ImageNet weights when a local copy exists


class View(enum.Enum):
    """What the CNN sees; the value is the pool name of its rows in the results."""

    WHOLE = Pool.FINETUNED.value
    ORACLE = Pool.FINETUNED_ORACLE.value


@dataclass(frozen=True)
class FinetuneConfig:
    architecture: Architecture = Architecture.SMALL_CNN
    whole_side: int = 256  # the whole canvas, area-downsampled
    oracle_side: int = 64  # the window around the known patch, full resolution
    input_side: int | None = None  # resize every view to this before the network (ResNet-50: 224); None: as is
    highpass_sigma: float | None = 1.5  # px; subtract the Gaussian-smoothed image first; None: ImageNet normalisation
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 42
    n_boot: int = 1000
    device: str = "cpu"
    weights: Path | None = None  # ResNet-50 ImageNet checkpoint; None: torchvision's cache file when present

    def __post_init__(self) -> None:
        for name in ("whole_side", "oracle_side", "epochs", "batch_size", "n_boot"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be positive, got {getattr(self, name)}")
        if self.architecture is Architecture.SMALL_CNN:
            for name in ("whole_side", "oracle_side"):
                side = getattr(self, name)
                if side % _GRID:
                    raise FieldError(name, f"the small CNN needs a multiple of {_GRID} px, got {side}")
        if not self.learning_rate > 0:
            raise FieldError("learning_rate", f"must be positive, got {self.learning_rate}")
        if self.highpass_sigma is not None and not self.highpass_sigma > 0:
            raise FieldError("highpass_sigma", f"must be positive or None, got {self.highpass_sigma}")


def study_config(epochs: int, seed: int, n_boot: int, device: str, weights: Path | None = None) -> FinetuneConfig:
    """The paper's baseline: ResNet-50 fine-tuned at 224 px; whole canvas to 224, 64 px oracle window upsampled."""
    return FinetuneConfig(
        architecture=Architecture.RESNET50,
        whole_side=224,
        oracle_side=64,
        input_side=224,
        highpass_sigma=None,  # the paper's input: ImageNet normalisation
        epochs=epochs,
        learning_rate=1e-4,
        seed=seed,
        n_boot=n_boot,
        device=device,
        weights=weights,
    )


def model_name(architecture: Architecture, view: View) -> str:
    """Row names as in the paper's tables: ``resnet50-finetuned`` (whole view) and ``resnet50-oracle``."""
    return f"{architecture.value}-{'finetuned' if view is View.WHOLE else 'oracle'}"


def default_cells(conditions: Sequence[Condition]) -> list[tuple[Condition, View]]:
    """The whole view on the geometric patterns (the paper's T3 row) and the oracle view on the geometric patterns
    and iso blur (T4's oracle row; the oracle window is cheap). The larger patterns already show their pixel
    signal through the raw-oracle and patch-local probes."""
    cells = [(c, View.WHOLE) for c in conditions if c.family is Family.GEOMETRIC]
    cells += [(c, View.ORACLE) for c in conditions if c.family in (Family.GEOMETRIC, Family.ISO_BLUR)]
    return cells


# ---------------------------------------------------------------- views


def whole_view(canvas: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(canvas, (side, side), interpolation=cv2.INTER_AREA)


def oracle_view(canvas: np.ndarray, box: Box, side: int) -> np.ndarray:
    return np.ascontiguousarray(canvas[centred_window(box, side, canvas.shape[0])])


@dataclass(frozen=True, eq=False)
class ViewSet:
    """One (condition, view): paired uint8 images, label 0 clean and 1 perturbed, train and test apart."""

    x_train: np.ndarray  # (n, side, side) uint8
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Sample:
    image_id: str
    split: str  # "train" or "test"
    canvas: np.ndarray


def build_views(
    samples: Iterable[Sample],
    cells: Sequence[tuple[Condition, View]],
    placement: Placement,
    config: FinetuneConfig,
) -> dict[tuple[str, View], ViewSet]:
    """Perturb each canvas once per condition and cut the views asked for; the clean twin's oracle window sits
    at the perturbed twin's box."""
    parts: dict[tuple[str, View], dict[str, list[list[np.ndarray]]]] = {
        (c.name, v): {"train": [[], []], "test": [[], []]} for c, v in cells
    }
    conditions = {c.name: c for c, _ in cells}
    for sample in samples:
        if sample.split not in ("train", "test"):
            continue  # MIMIC's separate validation split has no role in a train / test ceiling
        for name, condition in conditions.items():
            perturbed = apply(
                sample.canvas,
                condition,
                sample.image_id,
                margin=placement.margin,
                base_seed=placement.base_seed,
                switches=placement.switches,
            )
            for view in (View.WHOLE, View.ORACLE):
                if (name, view) not in parts:
                    continue
                if view is View.WHOLE:
                    pair = (
                        whole_view(sample.canvas, config.whole_side),
                        whole_view(perturbed.image, config.whole_side),
                    )
                else:
                    pair = (
                        oracle_view(sample.canvas, perturbed.box, config.oracle_side),
                        oracle_view(perturbed.image, perturbed.box, config.oracle_side),
                    )
                for label, image in enumerate(pair):
                    parts[(name, view)][sample.split][label].append(image)
    views = {}
    for key, split_parts in parts.items():
        arrays = {}
        for split, (clean, perturbed) in split_parts.items():
            if not clean:
                raise FinetuneError(f"{key[0]} / {key[1].value}: no {split} images")
            arrays[split] = (
                np.stack(clean + perturbed),
                np.concatenate([np.zeros(len(clean), np.int64), np.ones(len(perturbed), np.int64)]),
            )
        views[key] = ViewSet(*arrays["train"], *arrays["test"])
    return views


# ---------------------------------------------------------------- networks


def _small_cnn(side: int) -> object:
    import torch
    from torch import nn

    factor = side // _GRID
    return nn.Sequential(
        nn.PixelUnshuffle(factor),  # space to depth: no pixel is averaged away before the first convolution
        nn.Conv2d(factor * factor, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 1),
    ).to(torch.float32)


def resnet50_weights_file() -> Path:
    """Where torchvision keeps the IMAGENET1K_V2 checkpoint once downloaded (no download is attempted)."""
    import torch

    from lesionsignal.core.torch_compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.models import ResNet50_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet50_Weights.IMAGENET1K_V2.url).name


def _resnet50(weights: Path | None) -> tuple[object, str]:
    import torch

    from lesionsignal.core.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    path = weights if weights is not None else resnet50_weights_file()
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        origin = f"ImageNet ({path.name})"
    elif weights is not None:
        raise FileNotFoundError(f"ResNet-50 weights {weights} not found")
    else:
        warnings.warn(
            f"no local IMAGENET1K_V2 checkpoint at {path}: the ResNet-50 ceiling trains from random init",
            stacklevel=3,
        )
        origin = "random init (no local ImageNet checkpoint)"
    model.fc = torch.nn.Linear(model.fc.in_features, 1)
    return model, origin


def build_network(config: FinetuneConfig, view: View) -> tuple[object, str]:
    """The network for one view, its initial weights drawn from the config's seed, and where they came from."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.architecture is Architecture.SMALL_CNN:
            side = config.whole_side if view is View.WHOLE else config.oracle_side
            return _small_cnn(config.input_side or side), "random init"
        return _resnet50(config.weights)


def highpass(images: np.ndarray, sigma: float) -> np.ndarray:
    """Each image minus its Gaussian-smoothed copy (float32, gray levels): the local detail small patterns live
    in, without the anatomy's slow gray-level swings. OpenCV per image: a batched torch convolution with a
    one-channel kernel was measured four times slower than the whole training step it fed."""
    out = np.empty(images.shape, np.float32)
    for i, image in enumerate(images):
        values = image.astype(np.float32)
        out[i] = values - cv2.GaussianBlur(values, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    return out


def _to_input(images: np.ndarray, config: FinetuneConfig, device: object) -> object:
    """uint8 (B, H, W) to the network's float input: high-passed (small CNN) or ImageNet-normalised, resized."""
    import torch

    if config.highpass_sigma is not None:
        x = torch.from_numpy(highpass(images, config.highpass_sigma) / _HIGHPASS_SCALE)
    else:
        x = (torch.from_numpy(images).to(torch.float32) / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
    x = x.to(device=device, dtype=torch.float32).unsqueeze(1)
    if config.input_side is not None and x.shape[-1] != config.input_side:
        x = torch.nn.functional.interpolate(x, size=(config.input_side,) * 2, mode="bilinear", align_corners=False)
    if config.architecture is Architecture.RESNET50:
        x = x.expand(-1, 3, -1, -1)
    return x


# ---------------------------------------------------------------- training and scoring


@dataclass(frozen=True, eq=False)
class FinetuneResult:
    auc: float
    ci_low: float
    ci_high: float
    f1: float  # at probability 0.5 (logit 0): the network's own decision, chosen without the test rows
    f1_optimistic: float  # threshold picked on the test rows
    n_train: int
    n_test: int
    test_scores: np.ndarray
    test_labels: np.ndarray
    weights: str  # where the initial weights came from
    seconds: float


def _scores(network: object, images: np.ndarray, config: FinetuneConfig, device: object) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), config.batch_size):
            batch = _to_input(images[start : start + config.batch_size], config, device)
            out.append(network(batch)[:, 0].double().cpu().numpy())
    return np.concatenate(out)


def train_and_score(views: ViewSet, view: View, config: FinetuneConfig) -> FinetuneResult:
    """Train on the training pairs for ``config.epochs`` epochs (Adam, logistic loss), score the test pairs once."""
    import torch

    started = time.perf_counter()
    device = torch.device(config.device)
    network, origin = build_network(config, view)
    network = network.to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(config.seed)
    labels = torch.from_numpy(views.y_train).to(device=device, dtype=torch.float32)
    network.train()
    for _ in range(config.epochs):
        permutation = torch.randperm(len(views.y_train), generator=order).numpy()
        for start in range(0, permutation.size, config.batch_size):
            rows = permutation[start : start + config.batch_size]
            logits = network(_to_input(views.x_train[rows], config, device))[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[rows])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    network.eval()
    scores = _scores(network, views.x_test, config, device)
    if not np.isfinite(scores).all():
        raise FinetuneError(f"{view.value}: training diverged (non-finite test scores); lower the learning rate")
    interval = bootstrap_auc_ci(views.y_test, scores, n_boot=config.n_boot, seed=config.seed)
    predicted = scores >= 0.0
    true_pos = int(np.count_nonzero(predicted & (views.y_test == 1)))
    f1 = 2.0 * true_pos / (int(predicted.sum()) + int(views.y_test.sum()))
    return FinetuneResult(
        auc=auc(views.y_test, scores),
        ci_low=interval.low,
        ci_high=interval.high,
        f1=float(f1),
        f1_optimistic=threshold_max_f1(views.y_test, scores)[1],
        n_train=int(views.y_train.size),
        n_test=int(views.y_test.size),
        test_scores=scores,
        test_labels=views.y_test,
        weights=origin,
        seconds=time.perf_counter() - started,
    )


def result_row(result: FinetuneResult, config: FinetuneConfig, view: View, dataset: str, condition: str) -> dict:
    """A row of the long results frame (``detection.RESULT_COLUMNS``); no C grid here, so best_c is NaN."""
    return {
        "model": model_name(config.architecture, view),
        "dataset": dataset,
        "pool": view.value,
        "perturbation": condition,
        "auc": result.auc,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "f1": result.f1,
        "f1_optimistic": result.f1_optimistic,
        "best_c": float("nan"),
        "n_train": result.n_train,
        "n_test": result.n_test,
    }


# ---------------------------------------------------------------- cached run over a cohort


def finetune_store(folder: Path) -> Store[pd.DataFrame]:
    """One results row per trained cell; the code of this module's import closure is in every key."""
    return Store.of(folder, FRAMES, __name__)


def iter_samples(
    items: Sequence[ImageItem],
    splits: Mapping[str, str],
    size: int,
    workers: int,
    chunk: int = 64,
    resample: Resample = Resample.FLOAT,
) -> Iterator[Sample]:
    """Canvases in item order, decoded ``chunk`` at a time so memory holds a chunk, not the cohort."""
    missing = [item.image_id for item in items if item.image_id not in splits]
    if missing:
        raise FinetuneError(f"images without a split in the manifest: {missing[:5]}")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            for item, canvas in zip(part, load_canvases(part, size, pool, resample), strict=True):
                yield Sample(item.image_id, splits[item.image_id], canvas)


def _train_all(
    jobs: Sequence[tuple[ViewSet, View, FinetuneConfig]], config: FinetuneConfig, workers: int
) -> list[FinetuneResult]:
    """On CPU, cells train on one torch thread each, in parallel worker processes when ``workers`` > 1 (so the
    scores do not depend on the worker count); on a GPU, one after another here, without copying the images."""
    if config.device != "cpu":
        return [train_and_score(*job) for job in jobs]
    results: list[FinetuneResult | None] = [None] * len(jobs)
    map_single_threaded(train_and_score, jobs, workers, results.__setitem__)
    return [r for r in results if r is not None]


@dataclass(frozen=True)
class FinetuneRun:
    results: pd.DataFrame  # rows in RESULT_COLUMNS, plus ``weights``
    trained: int  # (condition, view) cells trained now
    reused: int  # cells read from the cache
    seconds: float


def run_finetune(
    items: Sequence[ImageItem],
    splits: Mapping[str, str],
    dataset: str,
    cells: Sequence[tuple[Condition, View]],
    placement: Placement,
    config: FinetuneConfig,
    store: Store[pd.DataFrame],
    workers: int = 2,
) -> FinetuneRun:
    """Every (condition, view) cell over one cohort's detection set, each cached under a key of its inputs
    (image files, splits, placement, condition, view, config, code); canvases are read only when a cell is new."""
    started = time.perf_counter()
    images_key = stable_digest([(*item.fingerprint(), splits.get(item.image_id)) for item in items])
    keys = {(c.name, v): store.key(images_key, placement, c, v, config) for c, v in cells}
    todo = [(c, v) for c, v in cells if not store.has(keys[(c.name, v)])]
    if todo:
        samples = iter_samples(items, splits, placement.canvas_size, workers, resample=placement.switches.resample)
        views = build_views(samples, todo, placement, config)
        jobs = [(views[(c.name, v)], v, config) for c, v in todo]
        for (condition, view), result in zip(todo, _train_all(jobs, config, workers), strict=True):
            row = {**result_row(result, config, view, dataset, condition.name), "weights": result.weights}
            store.write(keys[(condition.name, view)], pd.DataFrame([row]))
    frames = [store.read(keys[(c.name, v)]) for c, v in cells]
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*RESULT_COLUMNS, "weights"])
    return FinetuneRun(results, len(todo), len(cells) - len(todo), time.perf_counter() - started)
