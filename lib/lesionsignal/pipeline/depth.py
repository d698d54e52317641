"""The depth stage (section 07): a subset read at every block, model-chosen ROIs, learned readouts, native resolution.

Reads the cohorts stage's manifests only. Per panel cohort, ``depth.panel_images`` of its detection set under
``depth.conditions`` go through every encoder once per view, read at every block with the last token grid kept
(``features.depth_units``); per lesion cohort, ``depth.lesion_images`` of its images, clean. Then, per encoder, the
layer-wise probes, the readouts and the ROIs (``analysis.depth_study``). The native-resolution control draws
``depth.native_conditions`` into each encoder's own input size through the extraction engine, with a canvas of the
encoder's resize side, and probes the three pools as section 03 does. Everything runs in this process, unsharded:
the subsets are small beside the panel.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lesionsignal.analysis.attentive_probe import AttentiveConfig
from lesionsignal.analysis.depth_study import (
    SKIP_COLUMNS,
    CellResults,
    DepthSettings,
    lesion_class_cells,
    panel_condition,
)
from lesionsignal.analysis.detection import file_cells, probe_store, run_files_cached
from lesionsignal.analysis.knn_probe import KnnConfig
from lesionsignal.analysis.lesion_design import lesion_images
from lesionsignal.analysis.lesions import LesionImage
from lesionsignal.analysis.mil import MilConfig, MilPool
from lesionsignal.analysis.native_resolution import footprint_table
from lesionsignal.analysis.rois import RoiSettings
from lesionsignal.config.params import Analysis, DepthParams, Params
from lesionsignal.core.cache import Store
from lesionsignal.core.files import array_names
from lesionsignal.core.parallel import one_thread
from lesionsignal.data.canvas_store import canvas_store
from lesionsignal.data.images import ImageItem
from lesionsignal.data.manifest import Manifest
from lesionsignal.features.depth_units import DepthSource, depth_store, read_depth, run_depth, units_bytes
from lesionsignal.features.extraction import (
    CLEAN,
    Unit,
    assemble_panel,
    box_plan,
    panel_plan,
    run_extraction,
    unit_store,
)
from lesionsignal.features.pools import EncoderFeatures
from lesionsignal.pipeline.cohorts import detection_items, manifests, splits_of
from lesionsignal.pipeline.embeddings import device_for, encoder_source, placement
from lesionsignal.pipeline.probes import probe_config
from lesionsignal.pipeline.stage import Run, StageName, write_output
from lesionsignal.stimuli.panel import panel
from lesionsignal.stimuli.placement import Placement

LAYERWISE = "layerwise.json"  # AUC per (model, cohort, condition, pool, block)
READOUTS = "readouts.json"  # CLS, patch-mean, patch-local, attentive, k-NN on the same test rows
ROIS = "rois.json"  # CLS, oracle box, attention, rollout, MIL ROIs and the MIL image score on the same test rows
NATIVE = "native.json"  # native-resolution probes with each stimulus's footprint in model pixels and patches
STORAGE = "storage.json"  # disk the depth units take, per encoder and part
SKIPPED = "skipped.json"  # cells that cannot be fitted, and why
TIMING = "timing.json"
NATIVE_FOLDER = "native"
STUDY_PARAMS = "params/paper.yaml"  # the study run whose depth subset the disk estimate sizes
CHESTXDET10_IMAGES = 3543  # train + test (protocol section 1.3): the study's lesion cohort, read whole by default


def settings(params: Params) -> DepthSettings:
    depth, probe = params.depth, params.probe
    config = probe_config(probe)
    mil = MilConfig(MilPool(depth.mil_pool), depth.mil_top_k, depth.mil_l2, depth.fit_steps)
    return DepthSettings(
        probe=config,
        attentive=AttentiveConfig(depth.attentive_weight_decays, depth.fit_steps, probe.folds, probe.seed),
        knn=KnnConfig(depth.knn_k, probe.folds, probe.seed),
        rois=RoiSettings(depth.roi_tokens, mil, probe.n_boot, probe.paired_n_boot),
        n_boot=probe.n_boot,
    )


def subset(items: Sequence[ImageItem], size: int | None, seed: int) -> list[ImageItem]:
    """``size`` of the items drawn with ``default_rng(seed)``, kept in their order; all of them for None."""
    if size is None or size >= len(items):
        return list(items)
    chosen = np.random.default_rng(seed).choice(len(items), size=size, replace=False)
    return [items[i] for i in sorted(chosen)]


def _collect(results: list[CellResults], part: str) -> list[pd.DataFrame]:
    return [pd.concat([getattr(r, part) for r in results], ignore_index=True)] if results else []


def _panel(run: Run, sources: list[DepthSource], timings: list[dict]) -> list[CellResults]:
    params, depth = run.params, run.params.depth
    chosen = panel(depth.conditions) if depth.conditions else []
    if not chosen:
        return []
    store = depth_store(run.catalog.depth_units)
    canvases = canvas_store(run.catalog.canvases) if params.extraction.canvas_store else None
    results = []
    for name, records in manifests(run, Analysis.PANEL).items():
        items = subset(detection_items(records, params.cohort(name)), depth.panel_images, depth.seed)
        where = placement(params)
        jobs = [(s, panel_plan(store, s, name, items, chosen, where, params.extraction.chunk_size)) for s in sources]
        started = time.perf_counter()
        reports = run_depth(jobs, store, canvases, run.progress)
        computed = sum(r.computed for r in reports)
        timings.append({"step": "depth units", "cohort": name, "computed": computed,
                        "units": sum(r.units for r in reports),
                        "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
        splits = splits_of(records)
        for source, plan in jobs:
            started = time.perf_counter()
            clean = read_depth(source.source_id, plan.of(CLEAN), store)
            for condition in chosen:
                perturbed = read_depth(source.source_id, plan.of(condition.name), store)
                keys = {"model": source.source_id, "dataset": name, "perturbation": condition.name}
                geometry = source.spec.geometry
                with one_thread():
                    results.append(
                        panel_condition(clean, perturbed, keys, splits, geometry, where.canvas_size, settings(params))
                    )
            seconds = round(time.perf_counter() - started, 1)
            timings.append({"step": "panel analyses", "cohort": name, "model": source.source_id, "seconds": seconds})
    return results


def _lesions(run: Run, sources: list[DepthSource], timings: list[dict]) -> list[CellResults]:
    params, depth = run.params, run.params.depth
    store = depth_store(run.catalog.depth_units)
    canvases = canvas_store(run.catalog.canvases) if params.extraction.canvas_store else None
    resample = params.panel.resolved_switches().resample
    size = params.panel.canvas_size
    results = []
    for name, records in manifests(run, Analysis.LESIONS).items():
        kept, ordered_images = lesion_subset(records, depth)
        boxes = [tuple(b for _, b in image.boxes) for image in ordered_images]
        chunk = params.extraction.chunk_size
        jobs = [(s, box_plan(store, s, name, kept, boxes, size, chunk, resample)) for s in sources]
        started = time.perf_counter()
        run_depth(jobs, store, canvases, run.progress)
        timings.append({"step": "depth units", "cohort": name, "seconds": round(time.perf_counter() - started, 1)})
        patients = {r.image_id: r.patient_id for r in records.records}
        for source, plan in jobs:
            started = time.perf_counter()
            features = read_depth(source.source_id, plan.units, store)
            for lesion_class in params.lesions.classes:
                keys = {"model": source.source_id, "dataset": name, "perturbation": lesion_class}
                with one_thread():
                    results.append(
                        lesion_class_cells(
                            features, ordered_images, patients, lesion_class, keys, source.spec.geometry, size,
                            settings(params), depth.seed,
                        )
                    )  # fmt: skip
            seconds = round(time.perf_counter() - started, 1)
            timings.append({"step": "lesion analyses", "cohort": name, "model": source.source_id, "seconds": seconds})
    return results


def lesion_subset(records: Manifest, depth: DepthParams) -> tuple[list[ImageItem], list[LesionImage]]:
    """The lesion cohort's images read at every block, in image-id order, with their boxes."""
    ordered = sorted(records.records, key=lambda r: r.image_id)
    kept = subset([r.item for r in ordered], depth.lesion_images, depth.seed)
    own = {image.image_id: image for image in lesion_images(records)}
    return kept, [own[item.image_id] for item in kept]


def native_placement(params: Params, source: EncoderFeatures) -> Placement:
    """The panel's placement on a canvas of the encoder's resize side: the film is brought to the model's size
    first and the stimulus drawn after, so its pixels are model pixels."""
    switches = params.panel.resolved_switches()
    return Placement(source.encoder.spec.geometry.resize, params.panel.margin, params.panel.base_seed, switches)


def _native(run: Run, encoders: list[EncoderFeatures], timings: list[dict]) -> tuple[pd.DataFrame, bool]:
    params, depth = run.params, run.params.depth
    chosen = panel(depth.native_conditions) if depth.native_conditions else []
    if not chosen:
        return pd.DataFrame(), True
    store = unit_store(run.catalog.units)
    canvases = canvas_store(run.catalog.canvases) if params.extraction.canvas_store else None
    files, splits, complete = [], {}, True
    for name, records in manifests(run, Analysis.PANEL).items():
        items = subset(detection_items(records, params.cohort(name)), depth.native_images, depth.seed)
        splits[name] = splits_of(records)
        for source in encoders:
            started = time.perf_counter()
            plan = panel_plan(store, source, name, items, chosen, native_placement(params, source),
                              params.extraction.chunk_size)  # fmt: skip
            # In this process and unsharded, like the depth units: the control is a small panel on a subset.
            (report,) = run_extraction(
                [(source, plan)], store, workers=params.extraction.workers, progress=run.progress, canvases=canvases
            )
            timings.append({"step": "native extraction", "cohort": name, "model": source.source_id,
                            "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
            complete &= report.complete
            if not report.complete:
                continue
            folder = run.catalog.stage(StageName.DEPTH) / NATIVE_FOLDER / source.source_id / name
            for condition, path in assemble_panel(source, plan, store, folder).items():
                if condition != CLEAN:
                    files.append((path, file_cells(source.source_id, name, condition, array_names(path))))
    if not complete:
        return pd.DataFrame(), False
    started = time.perf_counter()
    config, probe = probe_config(params.probe), params.probe
    done = run_files_cached(files, splits, config, probe.n_boot, probe_store(run.catalog.probe_results),
                            probe.workers, run.progress)  # fmt: skip
    timings.append({"step": "native probes", "seconds": round(time.perf_counter() - started, 1)})
    patch_px = {s.source_id: s.encoder.spec.geometry.patch for s in encoders}
    return footprint_table(done.results, patch_px, {c.name: c.patch for c in chosen}), True


def study_views(study: Params, lesion_images: int) -> int:
    """Views a study run's depth units hold: each panel cohort's subset under every condition and clean, and the
    lesion cohorts' images (``lesion_images`` each unless ``depth.lesion_images`` caps them)."""
    depth = study.depth
    panel_views = len(study.cohorts_for(Analysis.PANEL)) * depth.panel_images * (1 + len(depth.conditions))
    per_lesion_cohort = min(lesion_images, depth.lesion_images or lesion_images)
    return panel_views * bool(depth.conditions) + len(study.cohorts_for(Analysis.LESIONS)) * per_lesion_cohort


def _storage(run: Run, sources: list[DepthSource]) -> pd.DataFrame:
    """What the depth units of this run take on disk, per encoder and part."""
    params, depth = run.params, run.params.depth
    store = depth_store(run.catalog.depth_units)
    rows = []
    conditions = panel(depth.conditions) if depth.conditions else []
    for source in sources:
        for name, records in manifests(run, Analysis.PANEL).items():
            if not conditions:
                continue
            items = subset(detection_items(records, params.cohort(name)), depth.panel_images, depth.seed)
            plan = panel_plan(store, source, name, items, conditions, placement(params), params.extraction.chunk_size)
            rows.append(_storage_row(source, name, "panel", len(items), 1 + len(conditions), plan.units, store))
        for name, records in manifests(run, Analysis.LESIONS).items():
            kept, images = lesion_subset(records, depth)
            boxes = [tuple(b for _, b in image.boxes) for image in images]
            resample = params.panel.resolved_switches().resample
            plan = box_plan(store, source, name, kept, boxes, params.panel.canvas_size, params.extraction.chunk_size,
                            resample)  # fmt: skip
            rows.append(_storage_row(source, name, "lesions", len(kept), 1, plan.units, store))
    return pd.DataFrame(rows)


def _storage_row(
    source: DepthSource, cohort: str, part: str, images: int, views: int, units: Sequence[Unit], store: Store
) -> dict:
    size = units_bytes(units, store)
    return {
        "model": source.source_id,
        "dataset": cohort,
        "part": part,
        "images": images,
        "views": views,
        "mib": round(size / 2**20, 2),
        "kib_per_view": round(size / 1024 / (images * views), 1),
    }


def compute(run: Run) -> bool:
    timings: list[dict] = []
    device = device_for(run.params)
    encoders = [encoder_source(entry, device) for entry in run.params.encoders]
    sources = [DepthSource(e) for e in encoders]
    results = _panel(run, sources, timings) + _lesions(run, sources, timings)
    native, complete = _native(run, encoders, timings)
    write_output(run, StageName.DEPTH, TIMING, pd.DataFrame(timings))
    if not complete:
        return False
    frames = {
        LAYERWISE: _collect(results, "layers"),
        READOUTS: _collect(results, "readouts"),
        ROIS: _collect(results, "rois"),
        SKIPPED: _collect(results, "skipped") or [pd.DataFrame(columns=list(SKIP_COLUMNS))],
    }
    for name, parts in frames.items():
        write_output(run, StageName.DEPTH, name, parts[0] if parts else pd.DataFrame())
    write_output(run, StageName.DEPTH, NATIVE, native)
    write_output(run, StageName.DEPTH, STORAGE, _storage(run, sources))
    return True
