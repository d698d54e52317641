"""The probes stage: every detection probe, the fine-tuned CNN ceiling, and the disease probes and protocol.

Inputs are the embeddings stage's files and the cohorts stage's manifests, only read. One probe per (source,
cohort, condition, pool), cached by content (embedding bytes, splits, probe settings, probe code); the fine-tuned
CNN per (cohort, condition, view); the disease probes (T2) on clean CLS vectors and the same probes scoring the
perturbed twins (T9); the learning checks of trained encoders against their random-init twins, on the learning
cohorts. The results go to the stage's folder as one long frame per kind, which sections 03, 05 and
06 read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from lesionsignal.analysis.detection import CachedRun, file_cells, probe_store, run_files_cached
from lesionsignal.analysis.disease import DiseaseResults, run_disease
from lesionsignal.analysis.finetune import FinetuneConfig, default_cells, finetune_store, run_finetune, study_config
from lesionsignal.analysis.learning import (
    LEARNING_COLUMNS,
    disease_rows,
    retrieval_rows,
)
from lesionsignal.analysis.operating_points import OperatingSettings
from lesionsignal.analysis.probe import ProbeConfig, Solver
from lesionsignal.config.params import Analysis, Params, ProbeParams
from lesionsignal.core.files import array_names, load_arrays
from lesionsignal.core.kinds import Pool
from lesionsignal.core.parallel import one_thread
from lesionsignal.data.manifest import Manifest
from lesionsignal.features.pools import RAW_SOURCE
from lesionsignal.paper.registry import T9_CONDITIONS
from lesionsignal.pipeline.cohorts import detection_items, manifests, splits_of
from lesionsignal.pipeline.embeddings import (
    conditions,
    embedding_file,
    placement,
    source_ids,
    twin_pairs,
)
from lesionsignal.pipeline.sources import device_for
from lesionsignal.pipeline.stage import Run, StageName, write_output

DETECTION = "detection.json"  # every detection probe and the fine-tuned CNN's rows (RESULT_COLUMNS)
OPERATING = "operating_points.json"  # every detection probe's sensitivity at fixed specificities, PPV and NPV
SENSITIVITY_GAPS = "sensitivity_gaps.json"  # patch-local minus CLS sensitivity per cell and target specificity
DISEASE_OPERATING = "disease_operating_points.json"  # the T2 probes' operating points
FINETUNE = "finetune.json"  # the fine-tuned CNN's rows with where its weights came from (empty: not run)
T2 = "t2.json"
T9 = "t9.json"
DISEASE_SKIPPED = "disease_skipped.json"
LEARNING = "learning.json"  # trained encoders against their random-init twins (analysis.learning)
TIMING = "timing.json"


def probe_config(settings: ProbeParams, device: str = "cpu") -> ProbeConfig:
    """The probe as the run's parameters set it."""
    return ProbeConfig(
        c_grid=tuple(settings.c_grid),
        folds=settings.folds,
        seed=settings.seed,
        max_iter=settings.max_iter,
        solver=Solver(settings.solver),
        device=device,
    )


def operating_settings(params: Params) -> OperatingSettings:
    """The operating points as the run's parameters set them (seeded by the probe's seed)."""
    settings = params.operating_points
    return OperatingSettings(
        specificities=tuple(settings.specificities),
        prevalence=settings.prevalence,
        n_boot=settings.n_boot,
        seed=params.probe.seed,
    )


def finetune_config(params: Params) -> FinetuneConfig:
    """The study's ResNet-50 at 224 px; on demo and smoke runs a small CNN that trains from scratch on CPU."""
    device = device_for(params)
    settings = params.probe
    if params.run.comparable_with_paper:
        return study_config(settings.cnn_epochs, settings.seed, settings.n_boot, device)
    return FinetuneConfig(epochs=settings.cnn_epochs, seed=settings.seed, n_boot=settings.n_boot, device=device)


def _detection(run: Run, timings: list[dict]) -> CachedRun:
    params = run.params
    started = time.perf_counter()
    splits = {name: splits_of(m) for name, m in manifests(run, Analysis.PANEL).items()}
    files = []
    for source in source_ids(params):
        for cohort in splits:
            for condition in conditions(params):
                path = embedding_file(run, source, cohort, condition.name)
                files.append((path, file_cells(source, cohort, condition.name, array_names(path))))
    store = probe_store(run.catalog.probe_results)
    config, n_boot = probe_config(params.probe), params.probe.n_boot
    done = run_files_cached(
        files, splits, config, n_boot, store, params.probe.workers, run.progress, operating_settings(params)
    )
    step = {"step": "detection probes", "seconds": time.perf_counter() - started}
    timings.append({**step, "probed": done.files_probed, "reused": done.files_reused, "probes": len(done.results)})
    return done


def _finetuned(run: Run, timings: list[dict]) -> pd.DataFrame:
    params = run.params
    cells = default_cells(conditions(params))
    if not params.probe.finetuned_cnn or not cells:
        return pd.DataFrame()
    config = finetune_config(params)
    store = finetune_store(run.catalog.finetune_results)
    runs = []
    for name, records in manifests(run, Analysis.PANEL).items():
        items = detection_items(records, params.cohort(name))
        splits = splits_of(records)
        done = run_finetune(items, splits, name, cells, placement(params), config, store, params.probe.workers)
        runs.append(done.results)
        step = {"step": f"fine-tuned CNN {name}", "seconds": done.seconds, "probed": done.trained}
        timings.append({**step, "reused": done.reused, "probes": len(done.results)})
    return pd.concat(runs, ignore_index=True) if runs else pd.DataFrame()


def _disease(run: Run, timings: list[dict]) -> None:
    params = run.params
    started = time.perf_counter()
    panel_cohorts = manifests(run, Analysis.PANEL)
    # Disease cohorts without panel embeddings have nothing to probe; section 03 lists them.
    cohorts = {c.name: panel_cohorts[c.name] for c in params.cohorts_for(Analysis.DISEASE) if c.name in panel_cohorts}
    present = [c.name for c in conditions(params)]

    def load_clean(model: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
        return _clean_pool(run, model, dataset, Pool.CLS)

    def load_perturbed(model: str, dataset: str, condition: str) -> tuple[np.ndarray, np.ndarray]:
        arrays = load_arrays(embedding_file(run, model, dataset, condition), ("image_ids", f"perturbed_{Pool.CLS}"))
        return arrays["image_ids"], arrays[f"perturbed_{Pool.CLS}"]

    # One thread, as in the worker processes of the detection probes: the numbers do not depend on the core count.
    with one_thread():
        results = run_disease(
            [e.id for e in params.encoders],
            cohorts,
            [c for c in T9_CONDITIONS if c in present],
            load_clean,
            load_perturbed,
            probe_config(params.probe),
            params.probe.n_boot,
            params.probe.alpha,
            paired_n_boot=params.probe.paired_n_boot,
            operating=operating_settings(params),
        )
    write_output(run, StageName.PROBES, T2, results.t2)
    write_output(run, StageName.PROBES, DISEASE_OPERATING, results.operating)
    write_output(run, StageName.PROBES, T9, results.t9)
    with one_thread():
        learning, not_fitted = _learning(run, cohorts, results.scores)
    skipped = [frame for frame in (results.skipped, *not_fitted) if not frame.empty]
    write_output(
        run, StageName.PROBES, DISEASE_SKIPPED, pd.concat(skipped, ignore_index=True) if skipped else results.skipped
    )
    write_output(run, StageName.PROBES, LEARNING, learning)
    timings.append({"step": "disease probes", "seconds": time.perf_counter() - started, "probes": len(results.t2)})


def _learning(
    run: Run, probed: Mapping[str, Manifest], scores: pd.DataFrame
) -> tuple[pd.DataFrame, tuple[pd.DataFrame, ...]]:
    """The learning checks (analysis.learning) of every trained encoder against its twin, on every learning cohort:
    the disease probes (T2's own where T2 ``probed`` the cohort, else fitted here on its clean CLS vectors), then
    same-subject retrieval on the clean global vectors and on the patch means; beside them, the same checks on the
    films' own pixels (the raw-global vectors of the raw-pixel baseline). Also the disease probes fitted here that
    could not be fitted, with the reason, for the list beside T2's."""
    pairs = twin_pairs(run.params)
    cohorts = manifests(run, Analysis.LEARNING)
    if not pairs or not cohorts:
        return pd.DataFrame(columns=list(LEARNING_COLUMNS)), ()
    params = run.params
    n_boot, seed = params.probe.n_boot, params.probe.seed
    raw = {dataset: _clean_pool(run, RAW_SOURCE, dataset, Pool.RAW_GLOBAL) for dataset in cohorts}
    unprobed = {name: m for name, m in cohorts.items() if name not in probed}
    encoders = list(dict.fromkeys(model for pair in pairs for model in pair))
    own = _clean_disease(run, encoders, unprobed, lambda model, dataset: _clean_pool(run, model, dataset, Pool.CLS))
    pixels = _clean_disease(run, [RAW_SOURCE], cohorts, lambda _, dataset: raw[dataset])
    scores = pd.concat([scores, own.scores, pixels.scores], ignore_index=True)
    rows = []
    for trained, twin in pairs:
        for dataset, manifest in cohorts.items():
            rows += disease_rows(scores, trained, twin, dataset, n_boot, seed, pixels=RAW_SOURCE)
            patient = {r.image_id: r.patient_id for r in manifest.records}
            pixel_ids, pixel_x = raw[dataset]
            for pool in (Pool.CLS, Pool.PATCH_MEAN):
                ids, x = _clean_pool(run, trained, dataset, pool)
                twin_ids, twin_x = _clean_pool(run, twin, dataset, pool)
                for other, other_ids in ((twin, twin_ids), (RAW_SOURCE, pixel_ids)):
                    if not np.array_equal(ids, other_ids):
                        raise ValueError(f"{dataset}: {trained} and {other} have clean vectors of different images")
                subjects = [patient[i] for i in ids]
                rows += retrieval_rows(pool, dataset, trained, twin, x, twin_x, subjects, n_boot, seed, pixel_x)
    return pd.DataFrame(rows, columns=list(LEARNING_COLUMNS)), (own.skipped, pixels.skipped)


def _clean_disease(
    run: Run,
    models: Sequence[str],
    cohorts: Mapping[str, Manifest],
    load_clean: Callable[[str, str], tuple[np.ndarray, np.ndarray]],
) -> DiseaseResults:
    """Disease probes of ``models`` on clean vectors only (no perturbed films), as T2 fits them."""
    params = run.params
    return run_disease(
        models,
        cohorts,
        [],
        load_clean,
        lambda *_: (np.zeros(0, str), np.zeros((0, 0))),
        probe_config(params.probe),
        params.probe.n_boot,
        params.probe.alpha,
    )


def _clean_pool(run: Run, model: str, dataset: str, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    arrays = load_arrays(embedding_file(run, model, dataset, "clean"), ("image_ids", str(pool)))
    return arrays["image_ids"], arrays[str(pool)]


def compute(run: Run) -> bool:
    timings: list[dict] = []
    detection = _detection(run, timings)
    results = detection.results
    write_output(run, StageName.PROBES, OPERATING, detection.operating)
    write_output(run, StageName.PROBES, SENSITIVITY_GAPS, detection.gaps)
    finetuned = _finetuned(run, timings)
    write_output(run, StageName.PROBES, FINETUNE, finetuned)
    if not finetuned.empty:
        results = pd.concat([results, finetuned.drop(columns=["weights"])], ignore_index=True)
    write_output(run, StageName.PROBES, DETECTION, results)
    _disease(run, timings)
    write_output(run, StageName.PROBES, TIMING, pd.DataFrame(timings))
    return True
