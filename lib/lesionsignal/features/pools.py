"""What one forward pass gives: global pools, and a local pool at each requested box (protocol sections 3 and 5).

A feature source turns a batch of canvases, with the boxes to pool at for each canvas, into
- global pools, one vector per canvas (``cls`` and ``patch_mean`` for an encoder; ``raw_global`` for pixels), and
- one local vector per (canvas, box) (``patch_local`` for an encoder; ``raw_oracle`` for pixels).
The extraction engine is written against this small interface only, so encoders and the raw-pixel baseline share
one cached, resumable pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import cv2
import numpy as np
import torch

from lesionsignal.core.box import Box, centred_window
from lesionsignal.core.digests import stable_digest
from lesionsignal.core.kinds import Pool
from lesionsignal.features.encoder import Encoder
from lesionsignal.features.geometry import BoxOutsideCrop
from lesionsignal.features.model_input import View
from lesionsignal.features.registry import EncoderSpec

RAW_GLOBAL_SIDE = 64  # area-downsampled whole image: 4,096 features
RAW_ORACLE_SIDE = 32  # window centred on the known patch: 1,024 features
RAW_SOURCE = "raw-pixels"


@dataclass(frozen=True)
class Pooled:
    """Pools of one batch: ``global_pools[name]`` is (B, D); ``local`` is (M, D) for the M requested boxes."""

    global_pools: dict[Pool, np.ndarray]
    local: np.ndarray


class FeatureSource(Protocol):
    @property
    def source_id(self) -> str: ...

    @property
    def key(self) -> str:
        """Content key: changes whenever the vectors would (weights, revision, processor, dtype, config)."""
        ...

    @property
    def global_names(self) -> tuple[Pool, ...]: ...

    @property
    def local_name(self) -> Pool: ...

    def can_pool(self, box: Box, canvas_size: int) -> bool:
        """Whether a local vector exists at ``box`` (an encoder's centre crop may cut it away entirely)."""
        ...

    def prepare(self, view: View) -> None:
        """Compute ahead what ``pool`` will need of ``view`` (called off the model's critical path)."""
        ...

    def pool(self, view: View, boxes: Sequence[Sequence[Box]]) -> Pooled: ...


@dataclass(frozen=True)
class RawPixels:
    """The raw-pixel baselines of protocol section 5, as a feature source (gray levels scaled to [0, 1])."""

    global_side: int = RAW_GLOBAL_SIDE
    oracle_side: int = RAW_ORACLE_SIDE

    @property
    def source_id(self) -> str:
        return RAW_SOURCE

    @property
    def key(self) -> str:
        return stable_digest("raw-pixels", self.global_side, self.oracle_side)

    @property
    def global_names(self) -> tuple[Pool, ...]:
        return (Pool.RAW_GLOBAL,)

    @property
    def local_name(self) -> Pool:
        return Pool.RAW_ORACLE

    def can_pool(self, box: Box, canvas_size: int) -> bool:
        return True  # pixel windows are shifted onto the canvas, never lost

    def prepare(self, view: View) -> None:
        pass  # pixels need no model input

    def pool(self, view: View, boxes: Sequence[Sequence[Box]]) -> Pooled:
        canvases = view.canvases
        side = canvases.shape[-1]
        global_raw = raw_global(canvases, self.global_side)
        local = [
            canvases[i][centred_window(box, self.oracle_side, side)].reshape(-1).astype(np.float32) / 255.0
            for i, image_boxes in enumerate(boxes)
            for box in image_boxes
        ]
        width = self.oracle_side**2
        return Pooled({Pool.RAW_GLOBAL: global_raw}, np.stack(local) if local else np.zeros((0, width), np.float32))


def raw_global(canvases: Sequence[np.ndarray], side: int = RAW_GLOBAL_SIDE) -> np.ndarray:
    """(n, side * side) float32 in [0, 1]: each 8-bit canvas area-downsampled to ``side`` x ``side``."""
    small = [cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA) for c in canvases]
    return np.stack(small).reshape(len(small), -1).astype(np.float32) / 255.0


def encoder_key(spec: EncoderSpec, dtype: torch.dtype, seed: int) -> str:
    """An encoder's content key: its spec (weights pinned by digest when they have one, so where the checkout lies
    does not matter), the precision it runs in, and the build seed of a random-init encoder."""
    build_seed = seed if spec.random_init else None
    if spec.weights_sha256 is not None:
        spec = replace(spec, source=f"sha256:{spec.weights_sha256}")
    return stable_digest("encoder", spec, str(dtype), build_seed)


class EncoderIdentity:
    """What a plan reads of an encoder source (its id, content key, pool names, which boxes it can pool), from the
    ``spec``, ``dtype`` and ``seed`` the class provides: one definition for the planned and the loaded encoder, so
    both always give the same keys."""

    spec: EncoderSpec
    dtype: torch.dtype
    seed: int

    @property
    def source_id(self) -> str:
        return self.spec.id

    @property
    def key(self) -> str:
        return encoder_key(self.spec, self.dtype, self.seed)

    @property
    def global_names(self) -> tuple[Pool, ...]:
        return (Pool.CLS, Pool.PATCH_MEAN)

    @property
    def local_name(self) -> Pool:
        return Pool.PATCH_LOCAL

    def can_pool(self, box: Box, canvas_size: int) -> bool:
        try:
            self.spec.geometry.token_mask(box, canvas=canvas_size)
        except BoxOutsideCrop:
            return False
        return True


@dataclass(frozen=True)
class PlannedEncoder(EncoderIdentity):
    """An encoder as a plan sees it, without its weights: the id, key, pools and geometry of the source the
    workers will load. A process that only submits, waits and assembles (the gpus and slurm executors) plans and
    reads units with it, so a 7B model is never loaded where it does not run."""

    spec: EncoderSpec
    dtype: torch.dtype
    seed: int = 0

    def prepare(self, view: View) -> None:
        raise TypeError(f"{self.spec.id}: a planned encoder has no weights; load it to extract")

    def pool(self, view: View, boxes: Sequence[Sequence[Box]]) -> Pooled:
        raise TypeError(f"{self.spec.id}: a planned encoder has no weights; load it to extract")


@dataclass
class EncoderFeatures(EncoderIdentity):
    """A frozen encoder as a feature source: its global vector (``cls``), the patch-token mean, patch-local means.

    Patch-local pools the tokens whose cells intersect the box mapped through the processor's own resize and crop
    (``Geometry.token_mask``); a box cropped away entirely raises for that sample rather than falling back.
    """

    encoder: Encoder
    batch_size: int = 16
    seed: int = 0  # the build seed of a random-init encoder (part of its identity)

    @property
    def spec(self) -> EncoderSpec:
        return self.encoder.spec

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype

    def prepare(self, view: View) -> None:
        view.pixels(self.encoder.spec.geometry, self.encoder.device)

    def pool(self, view: View, boxes: Sequence[Sequence[Box]]) -> Pooled:
        """Batches of the view's model input are encoded and pooled on the encoder's device; only the pooled vectors
        come back to the host, in one copy per pool."""
        geometry = self.encoder.spec.geometry
        device = self.encoder.device
        pixels = view.pixels(geometry, device)
        canvas_size = view.canvas_size
        masks = [[geometry.token_mask(b, canvas=canvas_size) for b in image_boxes] for image_boxes in boxes]
        cls_parts, mean_parts, local_parts = [], [], []
        for start in range(0, len(pixels), self.batch_size):
            global_vec, grid = self.encoder.tokens(pixels[start : start + self.batch_size])
            tokens = grid.float()
            cls_parts.append(global_vec.float())
            mean_parts.append(tokens.mean(dim=(1, 2)))
            local_parts.append(local_means(tokens, masks[start : start + len(tokens)]))
        return Pooled(
            {Pool.CLS: _host(torch.cat(cls_parts)), Pool.PATCH_MEAN: _host(torch.cat(mean_parts))},
            _host(torch.cat(local_parts)),
        )


def local_means(
    tokens: torch.Tensor, masks: Sequence[Sequence[np.ndarray]], batched: bool | None = None
) -> torch.Tensor:
    """(M, D): the mean token over each mask, images in order and each image's masks in order.

    On the CPU each mean is taken over the selected tokens. On an accelerator the boolean selection would stop the
    device once per box (its size must reach the host), so all means are one batched product with the masks as
    weights instead: the same numbers up to the order of the additions. ``batched`` overrides the choice.
    """
    batch, grid, _, dim = tokens.shape
    if not (tokens.device.type != "cpu" if batched is None else batched):
        rows = [tokens[i][torch.from_numpy(m)].mean(dim=0) for i, own in enumerate(masks) for m in own]
        return torch.stack(rows) if rows else tokens.new_zeros((0, dim))
    most = max((len(own) for own in masks), default=0)
    weights = np.zeros((batch, most, grid * grid), np.float32)
    for i, own in enumerate(masks):
        for k, m in enumerate(own):
            flat = m.reshape(-1)
            weights[i, k, flat] = 1.0 / flat.sum()
    host = torch.from_numpy(weights)
    w = (host.pin_memory() if torch.cuda.is_available() else host).to(tokens.device, non_blocking=True)
    means = torch.bmm(w, tokens.reshape(batch, grid * grid, dim))  # (B, most, D)
    keep = torch.tensor([i * most + k for i, own in enumerate(masks) for k in range(len(own))], dtype=torch.long)
    return means.reshape(batch * most, dim)[keep.to(tokens.device)]


def _host(values: object) -> np.ndarray:
    return values.cpu().numpy().astype(np.float32, copy=False)  # type: ignore[attr-defined]
