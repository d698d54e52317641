"""The one extraction engine: cached, resumable, shardable pooled vectors for the panel and for lesion boxes.

Work is cut into units. A unit is one chunk of images (fixed by the cohort order, never by sharding) seen one way
(clean, or perturbed by one condition) and encoded once by one feature source, which pools each image globally and
locally at the unit's boxes:
- the perturbation panel: the clean unit of a chunk pools at the patch box of every patch side the panel uses, so
  every condition's clean twin is pooled at exactly its perturbed twin's box; each condition's unit pools at the
  condition's own box (``panel_plan``);
- natural lesions: one clean unit per chunk pools at exactly the boxes the lesion design asks of each image
  (``box_plan``).
Each unit is stored under a content key (source and weights, images, view, boxes, code) by ``core.cache.Store``,
so a killed run resumes at the first missing unit, a changed condition recomputes only its own units, and shards
(unit i of every n) merge into the very same bytes as one unsplit run. Several sources extracted together share
the decoding and the perturbation of every image, which (not the model) bound a small encoder's throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesionsignal.core.box import Box
from lesionsignal.core.cache import ARRAYS, Store
from lesionsignal.core.canvas import Resample
from lesionsignal.core.files import load_arrays, save_arrays
from lesionsignal.core.parallel import background_priority
from lesionsignal.core.progress import progress_bar
from lesionsignal.data.canvas_store import stored_canvases
from lesionsignal.data.images import ImageItem
from lesionsignal.data.manifest import repeats
from lesionsignal.features.model_input import Change, View
from lesionsignal.features.pools import FeatureSource
from lesionsignal.stimuli.convention import SPEC
from lesionsignal.stimuli.inject import apply_patch
from lesionsignal.stimuli.panel import Condition, panel
from lesionsignal.stimuli.placement import Placement

CLEAN = "clean"
_UNIT_ARRAYS = ("image_ids", "box_image", "boxes")


class ExtractionError(RuntimeError):
    """Extraction cannot go on: the message names the unit, image or file at fault."""


@dataclass(frozen=True)
class UnitRef:
    """The unit an extraction stopped at: enough to find its images and its file."""

    source_id: str
    cohort: str
    index: int  # position in the unsplit plan
    chunk: int
    view: str  # clean, or the condition's name
    first_image: str
    last_image: str
    key: str

    def __str__(self) -> str:
        return (
            f"unit {self.index} ({self.source_id} / {self.cohort}, chunk {self.chunk}: images {self.first_image} "
            f"to {self.last_image}, view {self.view}; key {self.key[:16]})"
        )


_UNIT_ATTRIBUTE = "extraction_unit"


def failed_unit(error: BaseException) -> UnitRef | None:
    """The unit an exception raised by ``run_extraction`` stopped at (None: it stopped before any unit)."""
    return getattr(error, _UNIT_ATTRIBUTE, None)


def _blame(error: BaseException, plan: Plan, unit: Unit) -> None:
    """Name the unit on the exception itself, keeping its type (an unreadable image stays a user error); the
    first unit named wins, so a write that fails is not blamed on the unit computed after it."""
    if failed_unit(error) is not None:
        return
    chunk = plan.chunks[unit.chunk]
    ref = UnitRef(
        plan.source_id, plan.cohort, unit.index, unit.chunk, unit.name, chunk[0].image_id, chunk[-1].image_id, unit.key
    )
    setattr(error, _UNIT_ATTRIBUTE, ref)
    error.add_note(f"while extracting {ref}")


@dataclass(frozen=True)
class Unit:
    index: int  # position in the unsplit plan: shard i of n takes index % n == i
    chunk: int
    condition: Condition | None  # None: the clean images
    boxes: tuple[tuple[Box, ...], ...]  # per image of the chunk, the boxes to pool at
    key: str

    @property
    def name(self) -> str:
        return CLEAN if self.condition is None else self.condition.name


@dataclass(frozen=True)
class Plan:
    source_id: str
    cohort: str
    chunks: tuple[tuple[ImageItem, ...], ...]
    placement: Placement
    units: tuple[Unit, ...]

    def views(self) -> list[tuple[int, str]]:
        return [(u.chunk, u.name) for u in self.units]

    def of(self, name: str) -> list[Unit]:
        return [u for u in self.units if u.name == name]


def unit_store(folder: Path) -> Store[dict[str, np.ndarray]]:
    """Where every unit of every source lives; the code of this module's import closure is in each key."""
    return Store.of(folder, ARRAYS, __name__)


def _chunks(cohort: str, images: Sequence[ImageItem], chunk_size: int) -> tuple[tuple[ImageItem, ...], ...]:
    if not images:
        raise ExtractionError(f"cohort {cohort!r}: no images to extract")
    duplicates = sorted(repeats(item.image_id for item in images))
    if duplicates:
        raise ExtractionError(f"cohort {cohort!r}: duplicate image ids {duplicates[:10]}")
    if chunk_size < 1:
        raise ExtractionError(f"chunk_size must be positive, got {chunk_size}")
    return tuple(tuple(images[i : i + chunk_size]) for i in range(0, len(images), chunk_size))


def _add_unit(
    units: list[Unit],
    store: Store,
    source: FeatureSource,
    chunk: tuple[int, Sequence[ImageItem]],
    condition: Condition | None,
    boxes: tuple[tuple[Box, ...], ...],
    placement: Placement,
) -> None:
    index, items = chunk
    described = [(item.fingerprint(), [b.as_tuple() for b in own]) for item, own in zip(items, boxes, strict=True)]
    key = store.key(source.key, described, placement, condition)
    units.append(Unit(len(units), index, condition, boxes, key))


def panel_plan(
    store: Store,
    source: FeatureSource,
    cohort: str,
    images: Sequence[ImageItem],
    conditions: Sequence[Condition],
    placement: Placement,
    chunk_size: int = 64,
) -> Plan:
    """Per chunk: the clean unit (pooled at the box of every patch side of the whole panel, so adding a condition
    later reuses it), then one unit per condition (pooled at its own box)."""
    chunks = _chunks(cohort, images, chunk_size)
    patches = tuple(sorted({c.patch for c in panel()} | {c.patch for c in conditions}))
    units: list[Unit] = []
    for index, chunk in enumerate(chunks):
        clean = tuple(tuple(placement.box(item.image_id, p) for p in patches) for item in chunk)
        _add_unit(units, store, source, (index, chunk), None, clean, placement)
        for condition in conditions:
            own = tuple((placement.box(item.image_id, condition.patch),) for item in chunk)
            _add_unit(units, store, source, (index, chunk), condition, own, placement)
    return Plan(source.source_id, cohort, chunks, placement, tuple(units))


def box_plan(
    store: Store,
    source: FeatureSource,
    cohort: str,
    images: Sequence[ImageItem],
    boxes: Sequence[Sequence[Box]],
    canvas_size: int = 1024,
    chunk_size: int = 64,
    resample: Resample = Resample.FLOAT,
) -> Plan:
    """Per chunk, one clean unit pooled at the given boxes of each image (``boxes`` aligned with ``images``);
    ``resample`` is the canvas step's arithmetic (the panel convention's, so a run reads every film one way)."""
    if len(boxes) != len(images):
        raise ExtractionError(f"cohort {cohort!r}: {len(boxes)} box lists for {len(images)} images")
    chunks = _chunks(cohort, images, chunk_size)
    placement = Placement(canvas_size=canvas_size, switches=SPEC.with_overrides({"resample": resample.value}))
    units: list[Unit] = []
    start = 0
    for index, chunk in enumerate(chunks):
        chunk_boxes = tuple(tuple(b) for b in boxes[start : start + len(chunk)])
        _add_unit(units, store, source, (index, chunk), None, chunk_boxes, placement)
        start += len(chunk)
    return Plan(source.source_id, cohort, chunks, placement, tuple(units))


@dataclass
class ExtractionReport:
    source_id: str
    cohort: str
    units_total: int  # units of this shard
    units_cached: int
    units_computed: int
    images_encoded: int
    seconds: float
    shard: tuple[int, int]
    complete: bool = False  # every unit of the plan (all shards) is on disk

    @property
    def images_per_second(self) -> float:
        return self.images_encoded / self.seconds if self.seconds > 0 else float("nan")


def view_changes(clean: View, unit: Unit, plan: Plan) -> list[Change]:
    """Each image's perturbation by the unit's condition, as its box and new pixels (no canvas is copied). Serial:
    a patch takes about 0.15 ms, less than handing it to another thread costs."""
    condition = unit.condition
    assert condition is not None
    chunk, placement = plan.chunks[unit.chunk], plan.placement
    changes = []
    for i, item in enumerate(chunk):
        result = apply_patch(
            clean.canvases[i],
            condition,
            item.image_id,
            margin=placement.margin,
            base_seed=placement.base_seed,
            switches=placement.switches,
        )
        if (result.box,) != unit.boxes[i]:
            raise ExtractionError(f"{condition.name} / {item.image_id}: patch at {result.box}, planned elsewhere")
        changes.append(Change(result.box.as_tuple(), result.patch))
    return changes


def unit_arrays(source: FeatureSource, view: View, unit: Unit, chunk: Sequence[ImageItem]) -> dict:
    """One unit's file: image ids, global pools per image, and the local pool at each (image, box) row."""
    pooled = source.pool(view, [list(b) for b in unit.boxes])
    arrays = {str(name): np.asarray(v, dtype=np.float32) for name, v in pooled.global_pools.items()}
    flat = [b.as_tuple() for image_boxes in unit.boxes for b in image_boxes]
    if pooled.local.shape[0] != len(flat):
        raise ExtractionError(f"{source.source_id}: pooled {pooled.local.shape[0]} local vectors for {len(flat)} boxes")
    arrays["image_ids"] = np.asarray([item.image_id for item in chunk])
    arrays["box_image"] = np.repeat(np.arange(len(chunk), dtype=np.int32), [len(b) for b in unit.boxes])
    arrays["boxes"] = np.asarray(flat, dtype=np.int32).reshape(len(flat), 4)
    arrays[str(source.local_name)] = np.asarray(pooled.local, dtype=np.float32)
    return arrays


def _check_jobs(jobs: Sequence[tuple[FeatureSource, Plan]], shard: tuple[int, int]) -> None:
    index, count = shard
    if not 0 <= index < count:
        raise ExtractionError(f"shard {index} of {count}: need 0 <= i < n")
    if not jobs:
        raise ExtractionError("no feature sources to extract")
    first = jobs[0][1]
    ids = [[i.image_id for i in c] for c in first.chunks]
    for source, plan in jobs:
        if source.source_id != plan.source_id:
            raise ExtractionError(f"plan for {plan.source_id!r} paired with source {source.source_id!r}")
        same = [[i.image_id for i in c] for c in plan.chunks] == ids and plan.views() == first.views()
        if not same or plan.placement != first.placement:
            raise ExtractionError(f"{plan.source_id}: plans extracted together must share images and views")


def run_extraction(
    jobs: Sequence[tuple[FeatureSource, Plan]],
    store: Store,
    *,
    shard: tuple[int, int] = (0, 1),
    workers: int = 2,
    progress: bool = True,
    on_unit_done: Callable[[Unit], None] | None = None,
    canvases: Store[np.ndarray] | None = None,
) -> list[ExtractionReport]:
    """Compute every missing unit of this shard; each (chunk, view) is decoded and perturbed once for all sources.

    Three threads keep the model busy: while the models run on one view, a second thread prepares the next (decoding
    a new chunk, perturbing it, resizing and normalising it for every encoder) and a third writes the previous
    unit's file. Those threads run at the lowest CPU priority (``core.parallel.background_priority``), so they use
    the cycles the model leaves rather than taking cores from it. With ``canvases`` (``data.canvas_store``), a
    chunk's canvases are read from the store where an earlier run or another shard decoded them.
    """
    _check_jobs(jobs, shard)
    index, count = shard
    first = jobs[0][1]
    pending: dict[tuple[int, str], list[tuple[int, Unit]]] = {}
    mine = [0] * len(jobs)
    cached = [0] * len(jobs)
    for j, (_, plan) in enumerate(jobs):
        for unit in plan.units:
            if unit.index % count != index:
                continue
            mine[j] += 1
            if store.has(unit.key):
                cached[j] += 1
            else:
                pending.setdefault((unit.chunk, unit.name), []).append((j, unit))
    tasks = [view for view in dict.fromkeys(first.views()) if view in pending]
    encoded = [0] * len(jobs)
    started = time.perf_counter()
    total = sum(len(first.chunks[chunk]) * len(pending[(chunk, name)]) for chunk, name in tasks)
    label = first.source_id if len(jobs) == 1 else f"{len(jobs)} sources"
    bar = progress_bar(total, f"{label} / {first.cohort}", "img", progress)
    clean_views: dict[int, View] = {}
    sources = [source for source, _ in jobs]
    # Per-image work fans out on `pool`; `ahead` prepares the next view and waits on `pool`, so it must not hold
    # one of pool's threads (with one worker that would deadlock); `writer` saves one unit at a time.
    low = {"initializer": background_priority}
    with (
        ThreadPoolExecutor(max_workers=max(1, workers), **low) as pool,
        ThreadPoolExecutor(max_workers=1, **low) as ahead,
        ThreadPoolExecutor(max_workers=1, **low) as writer,
    ):

        def prepare(task: tuple[int, str]) -> View:
            chunk_index, _ = task
            if chunk_index not in clean_views:
                clean_views.clear()  # only the chunk in hand and the next are ever held
                placement = first.placement
                chunk = first.chunks[chunk_index]
                decoded = stored_canvases(chunk, placement.canvas_size, pool, placement.switches.resample, canvases)
                clean_views[chunk_index] = View(decoded)
            clean = clean_views[chunk_index]
            unit = pending[task][0][1]
            view = clean if unit.condition is None else View.perturbed(clean, view_changes(clean, unit, first))
            for source in sources:
                source.prepare(view)
            return view

        def save(plan: Plan, unit: Unit, arrays: dict) -> None:
            try:
                store.write(unit.key, arrays)
                if on_unit_done is not None:
                    on_unit_done(unit)
            except Exception as err:
                _blame(err, plan, unit)
                raise

        upcoming: Future | None = ahead.submit(prepare, tasks[0]) if tasks else None
        saving: Future | None = None
        at: tuple[Plan, Unit] | None = None
        try:
            for position, task in enumerate(tasks):
                j, unit = pending[task][0]
                at = (jobs[j][1], unit)  # a view that cannot be prepared stops at its first unit
                view = upcoming.result()
                upcoming = ahead.submit(prepare, tasks[position + 1]) if position + 1 < len(tasks) else None
                for j, unit in pending[task]:
                    source, plan = jobs[j]
                    at = (plan, unit)
                    arrays = unit_arrays(source, view, unit, plan.chunks[unit.chunk])
                    if saving is not None:
                        saving.result()  # one write in flight: a failed write stops the run at the next unit
                    saving = writer.submit(save, plan, unit, arrays)
                    encoded[j] += len(view)
                    bar.update(len(view))
            if saving is not None:
                saving.result()
        except Exception as err:
            if at is not None:
                _blame(err, *at)
            raise
    bar.close()
    seconds = time.perf_counter() - started
    return [
        ExtractionReport(
            plan.source_id,
            plan.cohort,
            units_total=mine[j],
            units_cached=cached[j],
            units_computed=mine[j] - cached[j],
            images_encoded=encoded[j],
            seconds=seconds,
            shard=shard,
            complete=not store.missing(u.key for u in plan.units),
        )
        for j, (_, plan) in enumerate(jobs)
    ]


# ------------------------------------------------------------------------------- reading what was extracted


@dataclass(frozen=True, eq=False)
class PooledFeatures:
    """One source's vectors over some units: global pools per image, and the local pool at each extracted box."""

    source_id: str
    image_ids: np.ndarray  # (N,)
    global_pools: Mapping[str, np.ndarray]  # name -> (N, D)
    local_name: str
    local: np.ndarray  # (M, D)
    box_image: np.ndarray  # (M,) row of image_ids each local vector belongs to
    boxes: np.ndarray  # (M, 4) x1, y1, x2, y2
    _image_rows: dict[str, int] = field(init=False, repr=False)
    _box_rows: dict[tuple[str, tuple[int, int, int, int]], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        image_rows = {str(i): row for row, i in enumerate(self.image_ids)}
        box_rows = {
            (str(self.image_ids[owner]), tuple(int(v) for v in box)): row
            for row, (owner, box) in enumerate(zip(self.box_image, self.boxes, strict=True))
        }
        object.__setattr__(self, "_image_rows", image_rows)
        object.__setattr__(self, "_box_rows", box_rows)

    @property
    def pools(self) -> tuple[str, ...]:
        return (*self.global_pools, self.local_name)

    def global_matrix(self, pool: str, image_ids: Sequence[str]) -> np.ndarray:
        """Rows of a global pool for the given images, in their order."""
        if pool not in self.global_pools:
            raise ExtractionError(f"{self.source_id}: no global pool {pool!r} (have {list(self.global_pools)})")
        missing = [i for i in image_ids if i not in self._image_rows]
        if missing:
            raise ExtractionError(f"{self.source_id}: images not extracted: {missing[:5]}")
        return self.global_pools[pool][[self._image_rows[i] for i in image_ids]]

    def local_matrix(self, where: Sequence[tuple[str, Box]]) -> np.ndarray:
        """The local pool at each (image id, box)."""
        rows = []
        for image_id, box in where:
            row = self._box_rows.get((image_id, box.as_tuple()))
            if row is None:
                raise ExtractionError(f"{self.source_id}: box {box.as_tuple()} of {image_id} was not extracted")
            rows.append(row)
        return self.local[rows]


def read_features(source: FeatureSource, units: Sequence[Unit], store: Store) -> PooledFeatures:
    """Join units (all must exist) into one source's vectors, in unit order."""
    missing = store.missing(u.key for u in units)
    if missing:
        raise ExtractionError(f"{source.source_id}: {len(missing)} units not extracted yet (run every shard first)")
    required = (*_UNIT_ARRAYS, str(source.local_name), *(str(g) for g in source.global_names))
    parts = [load_arrays(store.path(u.key), required) for u in units]
    offsets = np.cumsum([0] + [len(p["image_ids"]) for p in parts[:-1]])
    return PooledFeatures(
        source_id=source.source_id,
        image_ids=np.concatenate([p["image_ids"] for p in parts]),
        global_pools={str(g): np.concatenate([p[str(g)] for p in parts]) for g in source.global_names},
        local_name=str(source.local_name),
        local=np.concatenate([p[str(source.local_name)] for p in parts]),
        box_image=np.concatenate([p["box_image"] + off for p, off in zip(parts, offsets, strict=True)]),
        boxes=np.concatenate([p["boxes"] for p in parts]),
    )


def with_local(base: PooledFeatures, extra: PooledFeatures) -> PooledFeatures:
    """``base`` with the local vectors of ``extra`` added (a later plan's boxes of some of the same images): the
    global pools stay base's. A box both hold keeps base's vector, so adding boxes never changes an existing row."""
    if base.source_id != extra.source_id or base.local_name != extra.local_name:
        joined = f"{extra.source_id} / {extra.local_name} to {base.source_id} / {base.local_name}"
        raise ExtractionError(f"cannot join {joined}")
    owners = [str(i) for i in extra.image_ids[extra.box_image]]
    unknown = sorted(set(owners) - set(base._image_rows))
    if unknown:
        raise ExtractionError(f"{base.source_id}: local vectors of images without global pools: {unknown[:5]}")
    new = [
        row
        for row, (owner, box) in enumerate(zip(owners, extra.boxes, strict=True))
        if (owner, tuple(int(v) for v in box)) not in base._box_rows
    ]
    return PooledFeatures(
        source_id=base.source_id,
        image_ids=base.image_ids,
        global_pools=base.global_pools,
        local_name=base.local_name,
        local=np.concatenate([base.local, extra.local[new]]),
        box_image=np.concatenate([base.box_image, np.asarray([base._image_rows[owners[r]] for r in new], np.int64)]),
        boxes=np.concatenate([base.boxes, extra.boxes[new]]),
    )


def assemble_panel(source: FeatureSource, plan: Plan, store: Store, folder: Path) -> dict[str, Path]:
    """One file per condition (image ids, boxes, clean_* / perturbed_* pools, the clean twin pooled at the
    perturbed twin's box) and ``clean.npz`` (the clean global pools), in ``folder``."""
    clean = read_features(source, plan.of(CLEAN), store)
    local = str(source.local_name)
    files = {}
    for condition in dict.fromkeys(u.condition for u in plan.units if u.condition is not None):
        perturbed = read_features(source, plan.of(condition.name), store)
        ids = [str(i) for i in perturbed.image_ids]
        where = [(i, Box(*map(int, b))) for i, b in zip(ids, perturbed.boxes, strict=True)]
        arrays = {"image_ids": perturbed.image_ids, "boxes": perturbed.boxes}
        for name in perturbed.global_pools:
            arrays[f"clean_{name}"] = clean.global_matrix(name, ids)
            arrays[f"perturbed_{name}"] = perturbed.global_pools[name]
        arrays[f"clean_{local}"] = clean.local_matrix(where)
        arrays[f"perturbed_{local}"] = perturbed.local
        files[condition.name] = folder / f"{condition.name}.npz"
        save_arrays(files[condition.name], arrays)
    files[CLEAN] = folder / f"{CLEAN}.npz"
    save_arrays(files[CLEAN], {"image_ids": clean.image_ids, **clean.global_pools})
    return files


def describe_files(files: Mapping[str, Path]) -> list[tuple[str, int, int]]:
    """(condition, rows, dimension) of each assembled file."""
    rows = []
    for name, path in sorted(files.items()):
        arrays = load_arrays(path)
        first = next(k for k in sorted(arrays) if k not in ("image_ids", "boxes"))
        rows.append((name, int(arrays["image_ids"].shape[0]), int(arrays[first].shape[-1])))
    return rows
