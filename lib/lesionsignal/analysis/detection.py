"""The controlled-stimulus detection experiment: can a linear probe tell a clean image from its perturbed twin?

Paired design (protocol section 2): every image of the detection set gives one clean and one perturbed row, so the
classes are balanced 50:50 and the two rows of an image share a CV group (they never straddle folds). Train and test
rows come from the cohort's patient-disjoint split. One probe per (source, cohort, condition, pool); every AUC is
reported with its stratified bootstrap CI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lesionsignal.analysis.operating_points import (
    GAP_COLUMNS,
    OPERATING_COLUMNS,
    OperatingPoint,
    OperatingSettings,
    operating_points,
    sensitivity_gap,
)
from lesionsignal.analysis.probe import ProbeConfig, ProbeResult, fit_probe
from lesionsignal.analysis.stats import bootstrap_auc_ci
from lesionsignal.core.cache import FRAMES, Store
from lesionsignal.core.digests import stable_digest
from lesionsignal.core.files import load_arrays, sha256_file
from lesionsignal.core.kinds import RAW_POOLS, Pool
from lesionsignal.core.parallel import map_single_threaded
from lesionsignal.core.progress import progress_bar

RESULT_COLUMNS = (
    "model",
    "dataset",
    "pool",
    "perturbation",
    "auc",
    "ci_low",
    "ci_high",
    "f1",
    "f1_optimistic",
    "best_c",
    "n_train",
    "n_test",
)
CELL_KEY = ("model", "dataset", "pool", "perturbation")
OPERATING_RESULT_COLUMNS = (*CELL_KEY, *OPERATING_COLUMNS)
GAP_KEY = ("model", "dataset", "perturbation")
GAP_RESULT_COLUMNS = (*GAP_KEY, *GAP_COLUMNS)
# The pools whose difference in sensitivity each cell reports: the one the region keeps minus the global one.
GAP_POOLS = (Pool.PATCH_LOCAL, Pool.CLS)


class DetectionError(ValueError):
    """The arrays of one condition cannot form a paired design: the message names the source and condition."""


@dataclass(frozen=True)
class PairedDesign:
    x_train: np.ndarray
    y_train: np.ndarray
    groups_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    groups_test: np.ndarray


def paired_design(
    clean: np.ndarray, perturbed: np.ndarray, image_ids: Sequence[str], splits: Mapping[str, str]
) -> PairedDesign:
    """Stack clean (label 0) and perturbed (label 1) rows; the split of each image comes from the manifest."""
    if clean.shape != perturbed.shape:
        raise DetectionError(f"clean {clean.shape} and perturbed {perturbed.shape} arrays differ in shape")
    ids = np.asarray(image_ids)
    if len(ids) != clean.shape[0]:
        raise DetectionError(f"{len(ids)} image ids for {clean.shape[0]} rows")
    unknown = [i for i in ids if i not in splits]
    if unknown:
        raise DetectionError(f"images without a split in the manifest: {unknown[:5]}")
    split = np.asarray([splits[i] for i in ids])
    parts = {}
    for name in ("train", "test"):
        mask = split == name
        if not mask.any():
            raise DetectionError(f"no {name} images in the detection set")
        x = np.concatenate([clean[mask], perturbed[mask]])
        y = np.concatenate([np.zeros(mask.sum(), np.int64), np.ones(mask.sum(), np.int64)])
        parts[name] = (x, y, np.concatenate([ids[mask], ids[mask]]))
    return PairedDesign(*parts["train"], *parts["test"])


def summarise(result: ProbeResult, n_boot: int, seed: int) -> dict[str, float]:
    """A fitted probe as a results row: test AUC with its stratified bootstrap CI, F1s, chosen C, sizes."""
    interval = bootstrap_auc_ci(result.test_labels, result.test_scores, n_boot=n_boot, seed=seed)
    return {
        "auc": result.auc,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "f1": result.f1,
        "f1_optimistic": result.f1_at_test_optimal,
        "best_c": result.best_c,
        "n_train": result.n_train,
        "n_test": result.n_test,
    }


def probe_cell(design: PairedDesign, config: ProbeConfig, n_boot: int) -> tuple[ProbeResult, dict[str, float]]:
    """Fit the probe of protocol section 4 on one design and summarise it with its bootstrap CI."""
    result = fit_probe(design.x_train, design.y_train, design.groups_train, design.x_test, design.y_test, config)
    summary = summarise(result, n_boot, config.seed)
    return result, summary


@dataclass(frozen=True)
class CellSpec:
    model: str
    dataset: str
    pool: str
    perturbation: str
    clean_key: str  # array names in the assembled condition file
    perturbed_key: str


def cells_for(model: str, dataset: str, perturbation: str, pools: Iterable[str]) -> list[CellSpec]:
    return [CellSpec(model, dataset, p, perturbation, f"clean_{p}", f"perturbed_{p}") for p in pools]


@dataclass(frozen=True)
class CellFrames:
    """What the probes of some cells give: one results row per cell, its operating points, and the sensitivity gaps
    (patch-local minus CLS) of the cells where both pools were probed."""

    results: pd.DataFrame  # RESULT_COLUMNS
    operating: pd.DataFrame  # OPERATING_RESULT_COLUMNS
    gaps: pd.DataFrame  # GAP_RESULT_COLUMNS


def cell_gaps(points: Mapping[tuple[str, str, str, str], Sequence[OperatingPoint]], level: float) -> pd.DataFrame:
    """Sensitivity of patch-local minus CLS for every (model, dataset, perturbation) that has both pools."""
    rows = []
    high, low = (str(p) for p in GAP_POOLS)
    for (model, dataset, pool, perturbation), own in points.items():
        other = points.get((model, dataset, low, perturbation))
        if pool != high or other is None:
            continue
        key = {"model": model, "dataset": dataset, "perturbation": perturbation}
        rows += [{**key, **sensitivity_gap(a, b, level)} for a, b in zip(own, other, strict=True)]
    return pd.DataFrame(rows, columns=list(GAP_RESULT_COLUMNS))


def run_cells(
    cells: Sequence[CellSpec],
    load: Callable[[CellSpec], Mapping[str, np.ndarray]],
    splits: Mapping[str, Mapping[str, str]],
    config: ProbeConfig,
    n_boot: int,
    progress: bool = True,
    operating: OperatingSettings | None = None,
) -> CellFrames:
    """Probe every cell; ``load`` gives a cell's arrays, ``splits[dataset]`` maps image id to split."""
    operating = operating or OperatingSettings(seed=config.seed)
    rows, keys, points = [], [], {}
    bar = progress_bar(len(cells), "probes", "probe", progress)
    for cell in cells:
        arrays = load(cell)
        try:
            design = paired_design(
                arrays[cell.clean_key], arrays[cell.perturbed_key], arrays["image_ids"], splits[cell.dataset]
            )
        except (DetectionError, KeyError) as err:
            raise DetectionError(f"{cell.model} / {cell.dataset} / {cell.perturbation} / {cell.pool}: {err}") from err
        result, summary = probe_cell(design, config, n_boot)
        key = {"model": cell.model, "dataset": cell.dataset, "pool": cell.pool, "perturbation": cell.perturbation}
        rows.append({**key, **summary})
        keys.append(key)
        points[tuple(key.values())] = operating_points(
            result.train_labels, result.train_scores, result.test_labels, result.test_scores, operating
        )
        bar.update(1)
    bar.close()
    ops = [{**key, **point.row()} for key, own in zip(keys, points.values(), strict=True) for point in own]
    return CellFrames(
        pd.DataFrame(rows, columns=list(RESULT_COLUMNS)),
        pd.DataFrame(ops, columns=list(OPERATING_RESULT_COLUMNS)),
        cell_gaps(points, operating.level),
    )


# ---------------------------------------------------------------- cells of a condition file, and the result cache

_CLEAN, _PERTURBED = "clean_", "perturbed_"


def file_cells(source_id: str, dataset: str, perturbation: str, array_names: Iterable[str]) -> list[CellSpec]:
    """One cell per pool stored in a condition file (a ``clean_<pool>`` / ``perturbed_<pool>`` pair).

    The raw-pixel source stores two baselines; each is reported as a model of its own (``raw-global``,
    ``raw-oracle``), as the paper's tables do.
    """
    names = set(array_names)
    pools = [n[len(_CLEAN) :] for n in sorted(names) if n.startswith(_CLEAN)]
    unpaired = [p for p in pools if f"{_PERTURBED}{p}" not in names]
    where = f"{source_id} / {dataset} / {perturbation}"
    if not pools:
        raise DetectionError(f"{where}: no clean_<pool> arrays among {sorted(names)}")
    if unpaired:
        raise DetectionError(f"{where}: clean pools without a perturbed twin: {unpaired}")
    cells = []
    for pool in pools:
        model = pool.replace("_", "-") if pool in RAW_POOLS else source_id
        cells.append(CellSpec(model, dataset, pool, perturbation, f"{_CLEAN}{pool}", f"{_PERTURBED}{pool}"))
    return cells


@dataclass(frozen=True)
class ProbeStores:
    """Where the probes of each condition file are kept, one store per frame of ``CellFrames`` under one key."""

    results: Store[pd.DataFrame]
    operating: Store[pd.DataFrame]
    gaps: Store[pd.DataFrame]

    def has(self, key: str) -> bool:
        return all(store.has(key) for store in (self.results, self.operating, self.gaps))

    def write(self, key: str, frames: CellFrames) -> None:
        # The results last: a killed write leaves them absent, so the key counts as missing and is recomputed.
        self.gaps.write(key, frames.gaps)
        self.operating.write(key, frames.operating)
        self.results.write(key, frames.results)

    def read(self, key: str) -> CellFrames:
        return CellFrames(self.results.read(key), self.operating.read(key), self.gaps.read(key))


def probe_store(folder: Path) -> ProbeStores:
    """Probe results per condition file; the code of this module's import closure is in every key."""
    folder = Path(folder)
    return ProbeStores(
        Store.of(folder, FRAMES, __name__),
        Store.of(folder / "operating", FRAMES, __name__),
        Store.of(folder / "gaps", FRAMES, __name__),
    )


def _probe_file(
    path: Path,
    cells: Sequence[CellSpec],
    splits: Mapping[str, Mapping[str, str]],
    config: ProbeConfig,
    n_boot: int,
    operating: OperatingSettings,
) -> CellFrames:
    arrays = load_arrays(path)
    return run_cells(cells, lambda _cell: arrays, splits, config, n_boot, progress=False, operating=operating)


@dataclass(frozen=True)
class CachedRun:
    results: pd.DataFrame
    files_probed: int  # condition files whose probes ran now
    files_reused: int  # condition files whose results came from the cache
    operating: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(OPERATING_RESULT_COLUMNS)))
    gaps: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(GAP_RESULT_COLUMNS)))


def run_files_cached(
    files: Sequence[tuple[Path, Sequence[CellSpec]]],
    splits: Mapping[str, Mapping[str, str]],
    config: ProbeConfig,
    n_boot: int,
    store: ProbeStores,
    workers: int = 1,
    progress: bool = True,
    operating: OperatingSettings | None = None,
) -> CachedRun:
    """Probe the cells of each condition file, reusing results stored under a key of everything they depend on.

    The key hashes the file's bytes, its cells, the splits of its dataset, the probe settings and the probe code,
    so a changed embedding, split or solver recomputes exactly the files it touches and nothing else. Files to
    probe go to ``workers`` processes (largest first, so the slow wide ones do not come last), each on one thread,
    so the numbers do not depend on ``workers``. The results come back in the order of ``files``.
    """
    operating = operating or OperatingSettings(seed=config.seed)
    split_keys = {name: stable_digest(sorted(mapping.items())) for name, mapping in splits.items()}
    keys = []
    for path, cells in files:
        datasets = sorted({cell.dataset for cell in cells})
        missing = [d for d in datasets if d not in split_keys]
        if missing:
            raise DetectionError(f"{path}: no splits given for dataset(s) {missing}")
        content = sha256_file(Path(path))
        split_key = [split_keys[d] for d in datasets]
        keys.append(store.results.key(content, list(cells), split_key, config, n_boot, operating))
    todo = [i for i, key in enumerate(keys) if not store.has(key)]
    todo.sort(key=lambda i: -Path(files[i][0]).stat().st_size)
    jobs = []
    for i in todo:
        path, cells = files[i]
        wanted = {d: splits[d] for d in {cell.dataset for cell in cells}}
        jobs.append((Path(path), list(cells), wanted, config, n_boot, operating))
    bar = progress_bar(len(todo), "condition files", "file", progress)

    def done(position: int, frames: CellFrames) -> None:
        store.write(keys[todo[position]], frames)
        bar.update(1)

    map_single_threaded(_probe_file, jobs, workers, done)
    bar.close()
    # Every frame is read back from its CSV, so a first run and a cached run hand on the same values and dtypes.
    read = [store.read(key) for key in keys]

    def joined(part: str, columns: Sequence[str]) -> pd.DataFrame:
        frames = [getattr(r, part) for r in read if not getattr(r, part).empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))

    return CachedRun(
        joined("results", RESULT_COLUMNS),
        len(todo),
        len(files) - len(todo),
        joined("operating", OPERATING_RESULT_COLUMNS),
        joined("gaps", GAP_RESULT_COLUMNS),
    )
