"""Depth units: a subset of images read at every block, with the last block's token grid kept, in the content cache.

The paper's pools are stored as vectors and its token grids are thrown away (protocol section 3.2). The analyses of
section 07 need more, but only on a few images: per block the three pools (CLS or the pooling head, patch-mean,
patch-local at the unit's boxes), and of the last block the whole token grid in half precision together with the
model's attention maps. A depth unit is one chunk of images seen one way (clean, or perturbed by one condition),
planned exactly as the extraction engine plans its units (``features.extraction.panel_plan`` / ``box_plan``), so a
clean twin is pooled at its perturbed twin's box; units live in their own ``core.cache.Store`` under a key of the
depth source, the images, the view, the boxes and this module's code. The subset is small, so units are computed one
after another in this process.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from lesionsignal.core.box import Box
from lesionsignal.core.cache import ARRAYS, Store
from lesionsignal.core.digests import stable_digest
from lesionsignal.core.files import load_arrays
from lesionsignal.core.kinds import Pool
from lesionsignal.core.progress import progress_bar
from lesionsignal.data.canvas_store import stored_canvases
from lesionsignal.features.depth import forward_depth, has_attention
from lesionsignal.features.extraction import Plan, Unit, view_changes
from lesionsignal.features.geometry import Geometry
from lesionsignal.features.loaders import skeleton
from lesionsignal.features.model_input import View
from lesionsignal.features.pools import EncoderFeatures, local_means
from lesionsignal.features.registry import EncoderKind, EncoderSpec
from lesionsignal.features.study_shapes import real_size

TOKENS = "tokens"  # the last block's patch-token grid, float16
ATTENTION = "attention"  # the last block's global-to-patch attention, heads averaged
ROLLOUT = "rollout"  # attention rollout through every block
_INDEX = ("image_ids", "box_image", "boxes")
TOKEN_DTYPE = np.float16
RESNET_STAGES = 4


class DepthError(RuntimeError):
    """Depth units that cannot be computed or read; the message names the source, unit or image."""


def layer_key(pool: Pool | str, layer: int) -> str:
    """The array name of one pool after block ``layer`` (1-based)."""
    return f"{pool}/{layer}"


def layer_geometry(geometry: Geometry, grid: int) -> Geometry:
    """The geometry of a block whose token grid is ``grid`` a side (a ResNet stage's stride differs per stage)."""
    return geometry if grid == geometry.grid else replace(geometry, patch=geometry.input_size // grid)


@dataclass
class DepthSource:
    """An encoder read at every block; its key is the encoder's extraction key under another name."""

    features: EncoderFeatures

    @property
    def encoder(self) -> object:
        return self.features.encoder

    @property
    def spec(self) -> EncoderSpec:
        return self.features.encoder.spec

    @property
    def source_id(self) -> str:
        return self.spec.id

    @property
    def key(self) -> str:
        return stable_digest("depth", self.features.key)

    def arrays(self, view: View, boxes: Sequence[Sequence[Box]]) -> dict[str, np.ndarray]:
        """Per block the three pools (local at each (image, box), images in order), and the last block's grid and
        attention maps, for one view."""
        encoder = self.features.encoder
        pixels = view.pixels(encoder.spec.geometry, encoder.device)
        size = self.features.batch_size
        parts = [forward_depth(encoder, pixels[s : s + size]) for s in range(0, len(pixels), size)]
        out: dict[str, np.ndarray] = {}
        for layer in range(parts[0].depth):
            grid = parts[0].tokens[layer].shape[1]
            geometry = layer_geometry(encoder.spec.geometry, grid)
            masks = [[geometry.token_mask(b, canvas=view.canvas_size) for b in own] for own in boxes]
            tokens = torch.cat([p.tokens[layer] for p in parts])
            out[layer_key(Pool.CLS, layer + 1)] = _f32(torch.cat([p.global_vecs[layer] for p in parts]))
            out[layer_key(Pool.PATCH_MEAN, layer + 1)] = _f32(tokens.mean(dim=(1, 2)))
            out[layer_key(Pool.PATCH_LOCAL, layer + 1)] = _f32(local_means(tokens, masks))
        out[TOKENS] = torch.cat([p.tokens[-1] for p in parts]).numpy().astype(TOKEN_DTYPE)
        if has_attention(encoder.spec):
            out[ATTENTION] = _f32(torch.cat([_present(p.attention) for p in parts]))
            out[ROLLOUT] = _f32(torch.cat([_present(p.rollout) for p in parts]))
        return out


def _present(t: torch.Tensor | None) -> torch.Tensor:
    if t is None:
        raise DepthError("an attention map is missing for a model that has attention")
    return t


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.float32, copy=False)


def depth_store(folder: Path) -> Store[dict[str, np.ndarray]]:
    """Where every depth unit lives; the code of this module's import closure is in each key."""
    return Store.of(folder, ARRAYS, __name__)


def unit_file(source: DepthSource, view: View, unit: Unit, plan: Plan) -> dict[str, np.ndarray]:
    chunk = plan.chunks[unit.chunk]
    arrays = source.arrays(view, unit.boxes)
    flat = [b.as_tuple() for own in unit.boxes for b in own]
    arrays["image_ids"] = np.asarray([item.image_id for item in chunk])
    arrays["box_image"] = np.repeat(np.arange(len(chunk), dtype=np.int32), [len(b) for b in unit.boxes])
    arrays["boxes"] = np.asarray(flat, dtype=np.int32).reshape(len(flat), 4)
    return arrays


@dataclass(frozen=True)
class DepthReport:
    source_id: str
    cohort: str
    units: int
    computed: int
    images_encoded: int


def run_depth(
    jobs: Sequence[tuple[DepthSource, Plan]],
    store: Store[dict[str, np.ndarray]],
    canvases: Store[np.ndarray] | None = None,
    progress: bool = True,
) -> list[DepthReport]:
    """Compute every missing depth unit; each (chunk, view) is decoded and perturbed once for all sources."""
    if not jobs:
        return []
    first = jobs[0][1]
    for _, plan in jobs:
        if plan.views() != first.views() or plan.placement != first.placement:
            raise DepthError(f"{plan.source_id}: plans computed together must share images, views and placement")
    pending: dict[tuple[int, str], list[tuple[int, Unit]]] = {}
    for j, (_, plan) in enumerate(jobs):
        for unit in plan.units:
            if not store.has(unit.key):
                pending.setdefault((unit.chunk, unit.name), []).append((j, unit))
    encoded = [0] * len(jobs)
    computed = [0] * len(jobs)
    total = sum(len(first.chunks[chunk]) * len(todo) for (chunk, _), todo in pending.items())
    bar = progress_bar(total, f"depth / {first.cohort}", "img", progress)
    clean_views: dict[int, View] = {}
    with ThreadPoolExecutor(max_workers=1) as pool:
        for (chunk_index, _), todo in pending.items():
            if chunk_index not in clean_views:
                clean_views.clear()
                placement = first.placement
                decoded = stored_canvases(
                    first.chunks[chunk_index], placement.canvas_size, pool, placement.switches.resample, canvases
                )
                clean_views[chunk_index] = View(decoded)
            clean = clean_views[chunk_index]
            unit = todo[0][1]
            view = clean if unit.condition is None else View.perturbed(clean, view_changes(clean, unit, first))
            for j, own in todo:
                source, plan = jobs[j]
                store.write(own.key, unit_file(source, view, own, plan))
                encoded[j] += len(view)
                computed[j] += 1
                bar.update(len(view))
    bar.close()
    return [
        DepthReport(plan.source_id, plan.cohort, len(plan.units), computed[j], encoded[j])
        for j, (_, plan) in enumerate(jobs)
    ]


# ------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True, eq=False)
class DepthFeatures:
    """One source's depth units joined: per-image arrays (pools by block, token grids, attention maps) and the
    local pools at each extracted (image, box)."""

    source_id: str
    image_ids: np.ndarray
    arrays: dict[str, np.ndarray]  # per-image arrays, rows aligned with image_ids
    local: dict[str, np.ndarray]  # layer_key(patch_local, k) -> (M, D)
    box_image: np.ndarray
    boxes: np.ndarray
    _image_rows: dict[str, int] = field(init=False, repr=False)
    _box_rows: dict[tuple[str, tuple[int, int, int, int]], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_image_rows", {str(i): r for r, i in enumerate(self.image_ids)})
        rows = {
            (str(self.image_ids[o]), tuple(int(v) for v in b)): r
            for r, (o, b) in enumerate(zip(self.box_image, self.boxes, strict=True))
        }
        object.__setattr__(self, "_box_rows", rows)

    @property
    def layers(self) -> int:
        return sum(1 for name in self.arrays if name.startswith(f"{Pool.CLS}/"))

    @property
    def has_attention(self) -> bool:
        return ATTENTION in self.arrays

    def rows(self, image_ids: Sequence[str]) -> np.ndarray:
        missing = [i for i in image_ids if i not in self._image_rows]
        if missing:
            raise DepthError(f"{self.source_id}: images without depth units: {missing[:5]}")
        return np.asarray([self._image_rows[i] for i in image_ids], dtype=np.int64)

    def per_image(self, name: str, image_ids: Sequence[str]) -> np.ndarray:
        if name not in self.arrays:
            raise DepthError(f"{self.source_id}: no array {name!r} (have {sorted(self.arrays)[:8]} ...)")
        return self.arrays[name][self.rows(image_ids)]

    def local_at(self, layer: int, where: Sequence[tuple[str, Box]]) -> np.ndarray:
        rows = []
        for image_id, box in where:
            row = self._box_rows.get((image_id, box.as_tuple()))
            if row is None:
                raise DepthError(f"{self.source_id}: box {box.as_tuple()} of {image_id} has no depth pool")
            rows.append(row)
        return self.local[layer_key(Pool.PATCH_LOCAL, layer)][rows]


def read_depth(source_id: str, units: Sequence[Unit], store: Store[dict[str, np.ndarray]]) -> DepthFeatures:
    """Join units (all must exist) into one source's depth features, in unit order."""
    missing = store.missing(u.key for u in units)
    if missing:
        raise DepthError(f"{source_id}: {len(missing)} depth units missing")
    parts = [load_arrays(store.path(u.key), _INDEX) for u in units]
    offsets = np.cumsum([0] + [len(p["image_ids"]) for p in parts[:-1]])
    local_names = [n for n in parts[0] if n.startswith(f"{Pool.PATCH_LOCAL}/")]
    image_names = [n for n in parts[0] if n not in _INDEX and n not in local_names]
    return DepthFeatures(
        source_id=source_id,
        image_ids=np.concatenate([p["image_ids"] for p in parts]),
        arrays={n: np.concatenate([p[n] for p in parts]) for n in image_names},
        local={n: np.concatenate([p[n] for p in parts]) for n in local_names},
        box_image=np.concatenate([p["box_image"] + o for p, o in zip(parts, offsets, strict=True)]),
        boxes=np.concatenate([p["boxes"] for p in parts]),
    )


def units_bytes(units: Sequence[Unit], store: Store[dict[str, np.ndarray]]) -> int:
    """Disk the given units take."""
    return sum(store.path(u.key).stat().st_size for u in units if store.has(u.key))


def token_grid_bytes(spec: EncoderSpec, images: int, layers: int) -> int:
    """Disk for ``images`` views of ``spec``: the last block's float16 grid, and per block the global and mean
    vectors and one local vector in float32 (a ResNet's widths differ per stage; its last one bounds them)."""
    grid = spec.geometry.grid
    per_image = grid * grid * spec.dim * np.dtype(TOKEN_DTYPE).itemsize + 3 * layers * spec.dim * 4
    per_image += 2 * grid * grid * 4 if has_attention(spec) else 0
    return images * per_image


def block_count(spec: EncoderSpec) -> int:
    """Blocks a depth unit reads for ``spec`` (a ResNet's four stages), from its shapes on the meta device."""
    if spec.kind is EncoderKind.RESNET:
        return RESNET_STAGES
    module = skeleton(spec)
    if module is None:
        raise DepthError(f"{spec.id}: no configuration on this machine to count its blocks")
    if spec.kind is EncoderKind.OPEN_CLIP:
        return len(module.trunk.blocks)
    return int(module.config.num_hidden_layers)


def study_storage(study_ids: Sequence[str], views: int) -> list[dict[str, object]]:
    """Per study encoder at its real shape: blocks, grid, width, disk per view and for ``views`` views."""
    rows = []
    for study_id in study_ids:
        spec = real_size(study_id)
        blocks = block_count(spec)
        per_view = token_grid_bytes(spec, images=1, layers=blocks)
        rows.append(
            {
                "model": study_id,
                "blocks": blocks,
                "grid": f"{spec.geometry.grid} x {spec.geometry.grid}",
                "width": spec.dim,
                "mib_per_view": round(per_view / 2**20, 3),
                "views": views,
                "gib": round(views * per_view / 2**30, 1),
            }
        )
    return rows
