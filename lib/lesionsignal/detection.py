"""The controlled-stimulus detection experiment: can a linear probe tell a clean image from its perturbed twin?

Paired design (SPEC section 2): every image of the detection set gives one clean and one perturbed row, so the
classes are balanced 50:50 and the two rows of an image share a CV group (they never straddle folds). Train and test
rows come from the cohort's patient-disjoint split. One probe per (source, cohort, condition, pool); every AUC is
reported with its stratified bootstrap CI.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lesionsignal import digests
from lesionsignal.arrays import load_arrays
from lesionsignal.features import stable_digest
from lesionsignal.outputs import atomic_write_text
from lesionsignal.params import ProbeParams
from lesionsignal.probe import ProbeConfig, ProbeResult, Solver, fit_probe
from lesionsignal.stats import bootstrap_auc_ci

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
    """Fit the probe of SPEC section 4 on one design and summarise it with its bootstrap CI."""
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


def run_cells(
    cells: Sequence[CellSpec],
    load: Callable[[CellSpec], Mapping[str, np.ndarray]],
    splits: Mapping[str, Mapping[str, str]],
    config: ProbeConfig,
    n_boot: int,
    progress: bool = True,
) -> pd.DataFrame:
    """Probe every cell; ``load`` gives a cell's arrays, ``splits[dataset]`` maps image id to split."""
    rows = []
    iterator = cells
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(cells, desc="probes", unit="probe")
    for cell in iterator:
        arrays = load(cell)
        try:
            design = paired_design(
                arrays[cell.clean_key], arrays[cell.perturbed_key], arrays["image_ids"], splits[cell.dataset]
            )
        except (DetectionError, KeyError) as err:
            raise DetectionError(f"{cell.model} / {cell.dataset} / {cell.perturbation} / {cell.pool}: {err}") from err
        _, summary = probe_cell(design, config, n_boot)
        rows.append(
            {"model": cell.model, "dataset": cell.dataset, "pool": cell.pool, "perturbation": cell.perturbation}
        )
        rows[-1].update(summary)
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def pooling_gaps(results: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean, min and max of patch-local AUC minus CLS AUC over its (perturbation, dataset) cells."""
    wide = results.pivot_table(index=["model", "dataset", "perturbation"], columns="pool", values="auc")
    if not {"cls", "patch_local"} <= set(wide.columns):
        raise DetectionError("pooling gaps need both cls and patch_local results")
    gap = (wide["patch_local"] - wide["cls"]).rename("gap").reset_index()
    summary = gap.groupby("model")["gap"].agg(["mean", "min", "max", "count"]).reset_index()
    return summary.rename(columns={"mean": "mean_gap", "min": "min_gap", "max": "max_gap", "count": "cells"})


# ---------------------------------------------------------------- cells of a condition file, and the result cache

RAW_SOURCE = "raw-pixels"
_CODE_MODULES = ("probe", "stats", "detection")
_CLEAN, _PERTURBED = "clean_", "perturbed_"


def probe_config(settings: ProbeParams, device: str = "cpu") -> ProbeConfig:
    """The probe of SPEC section 4 as the run's parameters set it."""
    return ProbeConfig(
        c_grid=tuple(settings.c_grid),
        folds=settings.folds,
        seed=settings.seed,
        max_iter=settings.max_iter,
        solver=Solver(settings.solver),
        device=device,
    )


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
        model = pool.replace("_", "-") if source_id == RAW_SOURCE else source_id
        cells.append(CellSpec(model, dataset, pool, perturbation, f"{_CLEAN}{pool}", f"{_PERTURBED}{pool}"))
    return cells


def code_digest() -> str:
    """Hash of the modules whose code decides these results: a change there invalidates their caches."""
    return digests.code_digest(_CODE_MODULES)


def write_frame(frame: pd.DataFrame, path: Path) -> Path:
    """CSV whose floats read back bit for bit (shortest round-trip repr), written atomically."""
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    return path


def read_frame(path: Path) -> pd.DataFrame:
    # pandas' default parser reads back the shortest round-trip repr exactly (checked in tests/test_panel_tables).
    return pd.read_csv(path)


def _one_thread() -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)  # BLAS too; the limit holds for this worker process's whole life


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch and BLAS on one thread inside the block, as in a ``worker_pool`` process; restored afterwards."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Fresh (spawned) worker processes with one torch thread each.

    One thread per worker makes the numbers independent of the worker count (a matrix product's summation
    order depends on its threads) and keeps small problems from fighting over cores: on a busy two-core
    machine a 96-d probe with two torch threads was measured twenty times slower than with one.
    Spawned, not forked: forking a process whose OpenMP pool is already running can deadlock.
    """
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context, initializer=_one_thread)


def _probe_file(
    path: Path, cells: Sequence[CellSpec], splits: Mapping[str, Mapping[str, str]], config: ProbeConfig, n_boot: int
) -> pd.DataFrame:
    arrays = load_arrays(path)
    return run_cells(cells, lambda _cell: arrays, splits, config, n_boot, progress=False)


@dataclass(frozen=True)
class CachedRun:
    results: pd.DataFrame
    files_probed: int  # condition files whose probes ran now
    files_reused: int  # condition files whose results came from the cache


def run_files_cached(
    files: Sequence[tuple[Path, Sequence[CellSpec]]],
    splits: Mapping[str, Mapping[str, str]],
    config: ProbeConfig,
    n_boot: int,
    cache: Path,
    workers: int = 1,
    progress: bool = True,
) -> CachedRun:
    """Probe the cells of each condition file, reusing results stored under a key of everything they depend on.

    The key hashes the file's bytes, its cells, the splits of its dataset, the probe settings and the probe code,
    so a changed embedding, split or solver recomputes exactly the files it touches and nothing else. Files to
    probe go to ``workers`` processes (largest first, so the slow wide ones do not come last), or run here when
    ``workers`` is 1; either way on one thread each, so the numbers do not depend on ``workers``. The results
    come back in the order of ``files`` whatever the order of completion.
    """
    split_keys = {name: stable_digest(sorted(mapping.items())) for name, mapping in splits.items()}
    code = code_digest()
    targets = []
    for path, cells in files:
        datasets = sorted({cell.dataset for cell in cells})
        missing = [d for d in datasets if d not in split_keys]
        if missing:
            raise DetectionError(f"{path}: no splits given for dataset(s) {missing}")
        content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        key = stable_digest(content, list(cells), [split_keys[d] for d in datasets], config, n_boot, code)
        targets.append(cache / key[:2] / f"{key}.csv")
    todo = [i for i, target in enumerate(targets) if not target.is_file()]
    if todo:
        todo.sort(key=lambda i: -Path(files[i][0]).stat().st_size)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="condition files", unit="file")
        if workers <= 1:
            # One worker: no process to spawn (its start costs seconds), the same single-threaded numbers.
            with one_thread():
                for i in todo:
                    path, cells = files[i]
                    write_frame(_probe_file(Path(path), list(cells), splits, config, n_boot), targets[i])
                    if bar is not None:
                        bar.update(1)
        else:
            with worker_pool(workers) as pool:
                futures = {}
                for i in todo:
                    path, cells = files[i]
                    wanted = {d: splits[d] for d in {cell.dataset for cell in cells}}
                    futures[pool.submit(_probe_file, Path(path), list(cells), wanted, config, n_boot)] = i
                try:
                    for future in as_completed(futures):
                        write_frame(future.result(), targets[futures[future]])
                        if bar is not None:
                            bar.update(1)
                except BaseException:
                    for future in futures:  # one file failed: do not wait for the rest before reporting it
                        future.cancel()
                    raise
        if bar is not None:
            bar.close()
    # Every frame is read back from its CSV, so a first run and a cached run hand on the same values and dtypes.
    frames = [read_frame(target) for target in targets]
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RESULT_COLUMNS))
    return CachedRun(results, len(todo), len(files) - len(todo))
