"""Cached, resumable, shardable extraction of pooled vectors for clean and perturbed images (SPEC section 3).

Work is cut into units. A unit is one chunk of images (fixed by the cohort order, never by sharding) and either
- the clean pass: each clean canvas encoded once, pooled globally and at the patch box of every patch side the
  panel uses, so every condition's clean twin is pooled at exactly its perturbed twin's box; or
- one condition: each perturbed canvas encoded once, pooled globally and at its own box.
Each unit is stored under a content key (feature source and weights, images, placement, condition, code), written
atomically, so a killed run resumes at the first missing unit, a changed condition recomputes only its own units,
and shards (unit i of every n) merge into the very same bytes as one unsplit run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesionsignal import digests
from lesionsignal.arrays import load_arrays, save_arrays
from lesionsignal.canvas import Window, load_canvas
from lesionsignal.features import FeatureSource, Pooled, stable_digest
from lesionsignal.perturb import Box, Condition, apply, panel, patch_box

CLEAN = "clean"
_CODE_MODULES = ("canvas", "perturb", "geometry", "encoders", "features", "extract")


class ExtractionError(RuntimeError):
    """Extraction cannot go on: the message names the unit, image or file at fault."""


@dataclass(frozen=True)
class ImageItem:
    image_id: str  # the file basename: perturbation seeding hashes it
    path: Path
    window: tuple[float, float] | None = None  # 16-bit sources: the stretch window

    def fingerprint(self) -> tuple[str, str, int]:
        try:
            size = self.path.stat().st_size
        except OSError as err:
            raise ExtractionError(f"image {self.image_id}: cannot read {self.path} ({err})") from None
        return (self.image_id, self.path.name, size)


@dataclass(frozen=True)
class Placement:
    canvas_size: int = 1024
    margin: float = 0.15
    base_seed: int = 42

    def box(self, image_id: str, patch: int) -> Box:
        return patch_box(image_id, patch, self.canvas_size, self.margin, self.base_seed)


@dataclass(frozen=True)
class Unit:
    index: int  # position in the unsplit plan: shard i of n takes index % n == i
    chunk: int
    condition: Condition | None  # None: the clean pass
    key: str

    @property
    def name(self) -> str:
        return CLEAN if self.condition is None else self.condition.name


@dataclass(frozen=True)
class Plan:
    source_id: str
    cohort: str
    chunks: tuple[tuple[ImageItem, ...], ...]
    conditions: tuple[Condition, ...]
    patches: tuple[int, ...]  # patch sides the clean pass pools at
    placement: Placement
    units: tuple[Unit, ...]

    @property
    def n_images(self) -> int:
        return sum(len(c) for c in self.chunks)


@dataclass
class ExtractionReport:
    source_id: str
    cohort: str
    units_total: int
    units_cached: int
    units_computed: int
    images_encoded: int
    seconds: float
    shard: tuple[int, int]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images_encoded / self.seconds if self.seconds > 0 else float("nan")


def code_digest() -> str:
    """Hash of the modules whose code decides these results: a change there invalidates their caches."""
    return digests.code_digest(_CODE_MODULES)


def repeated(values: Iterable[str]) -> list[str]:
    """Values occurring more than once, sorted (linear time: cohorts hold tens of thousands of ids)."""
    return sorted(value for value, n in Counter(values).items() if n > 1)


def make_plan(
    source: FeatureSource,
    cohort: str,
    images: Sequence[ImageItem],
    conditions: Sequence[Condition],
    placement: Placement,
    chunk_size: int = 64,
) -> Plan:
    if not images:
        raise ExtractionError(f"cohort {cohort!r}: no images to extract")
    duplicates = repeated(item.image_id for item in images)
    if duplicates:
        raise ExtractionError(f"cohort {cohort!r}: duplicate image ids {duplicates[:10]}")
    if chunk_size < 1:
        raise ExtractionError(f"chunk_size must be positive, got {chunk_size}")
    chunks = tuple(tuple(images[i : i + chunk_size]) for i in range(0, len(images), chunk_size))
    patches = tuple(sorted({c.patch for c in panel()} | {c.patch for c in conditions}))
    code = code_digest()
    units = []
    for chunk_index, chunk in enumerate(chunks):
        images_key = [(*item.fingerprint(), item.window) for item in chunk]
        units.append(
            Unit(len(units), chunk_index, None, stable_digest(source.key, images_key, placement, patches, code))
        )
        for condition in conditions:
            key = stable_digest(source.key, images_key, placement, condition, code)
            units.append(Unit(len(units), chunk_index, condition, key))
    return Plan(source.source_id, cohort, chunks, tuple(conditions), patches, placement, tuple(units))


def unit_path(work: Path, plan: Plan, unit: Unit) -> Path:
    return work / "units" / plan.source_id / unit.key[:2] / f"{unit.key}.npz"


def condition_path(work: Path, plan: Plan, condition: Condition) -> Path:
    return work / "embeddings" / plan.source_id / plan.cohort / f"{condition.name}.npz"


def load_canvases(chunk: Sequence[ImageItem], placement: Placement, pool: ThreadPoolExecutor) -> np.ndarray:
    def one(item: ImageItem) -> np.ndarray:
        window = Window(*item.window) if item.window else None
        try:
            return load_canvas(item.path, size=placement.canvas_size, window=window)
        except ValueError as err:
            raise ExtractionError(f"image {item.image_id}: {err}") from err

    return np.stack(list(pool.map(one, chunk)))


def _perturb_chunk(
    canvases: np.ndarray,
    chunk: Sequence[ImageItem],
    condition: Condition,
    placement: Placement,
    pool: ThreadPoolExecutor,
) -> tuple[np.ndarray, list[Box]]:
    def one(i: int) -> tuple[np.ndarray, Box]:
        result = apply(
            canvases[i], condition, chunk[i].image_id, margin=placement.margin, base_seed=placement.base_seed
        )
        return result.image, result.box

    done = list(pool.map(one, range(len(chunk))))
    return np.stack([d[0] for d in done]), [d[1] for d in done]


def _clean_arrays(source: FeatureSource, canvases: np.ndarray, chunk: Sequence[ImageItem], plan: Plan) -> dict:
    boxes = [[plan.placement.box(item.image_id, p) for p in plan.patches] for item in chunk]
    pooled = source.pool(canvases, boxes)
    arrays = _global_arrays(pooled, chunk)
    k = len(plan.patches)
    arrays[source.local_name] = pooled.local.reshape(len(chunk), k, -1)
    arrays["patches"] = np.asarray(plan.patches, dtype=np.int32)
    arrays["boxes"] = np.asarray([[b.as_tuple() for b in row] for row in boxes], dtype=np.int32)
    return arrays


def _perturbed_arrays(
    source: FeatureSource, perturbed: np.ndarray, boxes: list[Box], chunk: Sequence[ImageItem]
) -> dict:
    pooled = source.pool(perturbed, [[b] for b in boxes])
    arrays = _global_arrays(pooled, chunk)
    arrays[source.local_name] = pooled.local
    arrays["boxes"] = np.asarray([b.as_tuple() for b in boxes], dtype=np.int32)
    return arrays


def _global_arrays(pooled: Pooled, chunk: Sequence[ImageItem]) -> dict:
    arrays = {name: np.asarray(v, dtype=np.float32) for name, v in pooled.global_pools.items()}
    arrays["image_ids"] = np.asarray([item.image_id for item in chunk])
    return arrays


def run_extraction(
    source: FeatureSource,
    plan: Plan,
    work: Path,
    *,
    shard: tuple[int, int] = (0, 1),
    workers: int = 2,
    progress: bool = True,
    on_unit_done: Callable[[Unit], None] | None = None,
) -> ExtractionReport:
    """Compute every missing unit of this shard, then (when all units exist) assemble the per-condition files."""
    return run_extraction_many(
        [(source, plan)], work, shard=shard, workers=workers, progress=progress, on_unit_done=on_unit_done
    )[0]


def run_extraction_many(
    jobs: Sequence[tuple[FeatureSource, Plan]],
    work: Path,
    *,
    shard: tuple[int, int] = (0, 1),
    workers: int = 2,
    progress: bool = True,
    on_unit_done: Callable[[Unit], None] | None = None,
) -> list[ExtractionReport]:
    """Several sources over the same images and conditions: each image is decoded and perturbed once for all.

    Decoding and perturbing, not the model, bound a small encoder's throughput, so sharing them across sources
    is what keeps the pipeline model-bound. Units stay per source, so caching, resume and shards are unchanged.
    """
    index, count = shard
    if not 0 <= index < count:
        raise ExtractionError(f"shard {index} of {count}: need 0 <= i < n")
    if not jobs:
        raise ExtractionError("no feature sources to extract")
    first = jobs[0][1]
    for _, plan in jobs[1:]:
        same = [len(c) for c in plan.chunks] == [len(c) for c in first.chunks] and [
            c.name for c in plan.conditions
        ] == [c.name for c in first.conditions]
        if not same or plan.placement != first.placement:
            raise ExtractionError(f"{plan.source_id}: plans extracted together must share images and conditions")
    pending: dict[tuple[int, str], list[tuple[int, Unit]]] = {}
    cached = [0] * len(jobs)
    mine_total = [0] * len(jobs)
    for j, (_, plan) in enumerate(jobs):
        for unit in plan.units:
            if unit.index % count != index:
                continue
            mine_total[j] += 1
            if unit_path(work, plan, unit).is_file():
                cached[j] += 1
            else:
                pending.setdefault((unit.chunk, unit.name), []).append((j, unit))
    by_name = {c.name: c for c in first.conditions}
    started = time.perf_counter()
    encoded = [0] * len(jobs)
    total = sum(len(first.chunks[chunk]) * len(items) for (chunk, _), items in pending.items())
    bar = _progress(total, first, progress, len(jobs))
    # Two executors: per-image work fans out on `pool`; `ahead` prepares the next condition and waits on `pool`,
    # so it must not hold one of pool's threads (with one worker that would deadlock).
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as ahead:
        for chunk_index in sorted({chunk for chunk, _ in pending}):
            chunk = first.chunks[chunk_index]
            canvases = load_canvases(chunk, first.placement, pool)
            names = [n for n in [CLEAN, *(c.name for c in first.conditions)] if (chunk_index, n) in pending]

            def prepare(name: str, canvases: np.ndarray = canvases, chunk: Sequence[ImageItem] = chunk) -> object:
                if name == CLEAN:
                    return None
                return _perturb_chunk(canvases, chunk, by_name[name], first.placement, pool)

            upcoming: Future | None = ahead.submit(prepare, names[0]) if names else None
            for position, name in enumerate(names):
                prepared = upcoming.result()
                upcoming = ahead.submit(prepare, names[position + 1]) if position + 1 < len(names) else None
                for j, unit in pending[(chunk_index, name)]:
                    source, plan = jobs[j]
                    if prepared is None:
                        arrays = _clean_arrays(source, canvases, plan.chunks[chunk_index], plan)
                    else:
                        perturbed, boxes = prepared
                        arrays = _perturbed_arrays(source, perturbed, boxes, plan.chunks[chunk_index])
                    save_arrays(unit_path(work, plan, unit), arrays)
                    encoded[j] += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    if on_unit_done is not None:
                        on_unit_done(unit)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    reports = []
    for j, (source, plan) in enumerate(jobs):
        report = ExtractionReport(
            plan.source_id,
            plan.cohort,
            units_total=mine_total[j],
            units_cached=cached[j],
            units_computed=mine_total[j] - cached[j],
            images_encoded=encoded[j],
            seconds=seconds,
            shard=shard,
        )
        if all(unit_path(work, plan, u).is_file() for u in plan.units):
            report.files = assemble(plan, work, source.global_names, source.local_name)
        reports.append(report)
    return reports


def _by_chunk(units: Sequence[Unit]) -> Iterator[tuple[int, list[Unit]]]:
    grouped: dict[int, list[Unit]] = {}
    for unit in units:
        grouped.setdefault(unit.chunk, []).append(unit)
    yield from sorted(grouped.items())


def _progress(total: int, plan: Plan, enabled: bool, sources: int = 1) -> object | None:
    if not enabled or not total:
        return None
    from tqdm.auto import tqdm

    label = plan.source_id if sources == 1 else f"{sources} sources"
    return tqdm(total=total, desc=f"{label} / {plan.cohort}", unit="img", smoothing=0.1)


def assemble(plan: Plan, work: Path, global_names: Sequence[str], local_name: str) -> dict[str, Path]:
    """Join units into one file per condition: image ids, boxes, and clean_* / perturbed_* pools."""
    missing = [u for u in plan.units if not unit_path(work, plan, u).is_file()]
    if missing:
        names = ", ".join(f"{u.name}#chunk{u.chunk}" for u in missing[:10])
        raise ExtractionError(f"{len(missing)} units not extracted yet (run every shard first): {names}")
    clean_units = [u for u in plan.units if u.condition is None]
    required = ("image_ids", "boxes", local_name, *global_names)
    clean = [load_arrays(unit_path(work, plan, u), required) for u in clean_units]
    files = {}
    for condition in plan.conditions:
        slot = plan.patches.index(condition.patch)
        units = [u for u in plan.units if u.condition is not None and u.condition.name == condition.name]
        perturbed = [load_arrays(unit_path(work, plan, u), required) for u in units]
        arrays = {
            "image_ids": np.concatenate([p["image_ids"] for p in perturbed]),
            "boxes": np.concatenate([p["boxes"] for p in perturbed]),
        }
        clean_boxes = np.concatenate([c["boxes"][:, slot] for c in clean])
        if not np.array_equal(clean_boxes, arrays["boxes"]):
            raise ExtractionError(f"{condition.name}: clean twin boxes differ from the perturbed boxes")
        for name in global_names:
            arrays[f"clean_{name}"] = np.concatenate([c[name] for c in clean])
            arrays[f"perturbed_{name}"] = np.concatenate([p[name] for p in perturbed])
        arrays[f"clean_{local_name}"] = np.concatenate([c[local_name][:, slot] for c in clean])
        arrays[f"perturbed_{local_name}"] = np.concatenate([p[local_name] for p in perturbed])
        target = condition_path(work, plan, condition)
        save_arrays(target, arrays)
        files[condition.name] = target
    clean_target = work / "embeddings" / plan.source_id / plan.cohort / f"{CLEAN}.npz"
    clean_arrays = {"image_ids": np.concatenate([c["image_ids"] for c in clean])}
    for name in global_names:
        clean_arrays[name] = np.concatenate([c[name] for c in clean])
    save_arrays(clean_target, clean_arrays)
    files[CLEAN] = clean_target
    return files


def describe_files(files: dict[str, Path]) -> list[tuple[str, int, int]]:
    """(condition, rows, dimension) of each assembled file."""
    rows = []
    for name, path in sorted(files.items()):
        arrays = load_arrays(path)
        first = next(k for k in sorted(arrays) if k not in ("image_ids", "boxes"))
        rows.append((name, int(arrays["image_ids"].shape[0]), int(arrays[first].shape[-1])))
    return rows
