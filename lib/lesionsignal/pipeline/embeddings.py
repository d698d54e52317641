"""The embeddings stage: every feature source over every panel cohort's detection set, clean and perturbed, and
over the films of the learning checks' own cohorts, clean only.

The raw-pixel baselines and the encoders of the run go over each cohort together (each image decoded and perturbed
once for all of them) through the one extraction engine, run where ``extraction.executor`` says (this process, one
worker per device, or a Slurm array: ``pipeline.executors``); once every unit exists (all shards), one file per
(source, cohort, condition) is assembled here, in the stage's folder, for the probes and the separation measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lesionsignal.config.params import Analysis, Params
from lesionsignal.core.files import save_arrays
from lesionsignal.data.images import ImageItem
from lesionsignal.features.extraction import (
    ExtractionReport,
    assemble_panel,
    describe_files,
    panel_plan,
    unit_store,
)
from lesionsignal.features.pools import EncoderFeatures, FeatureSource, PlannedEncoder, RawPixels
from lesionsignal.features.registry import resolve_spec
from lesionsignal.features.token_maps import encoder_token_pca
from lesionsignal.pipeline.cohorts import detection_items, manifest, manifests
from lesionsignal.pipeline.executors import run_step
from lesionsignal.pipeline.sources import device_for, encoder_source, panel_sources
from lesionsignal.pipeline.stage import Run, StageName, write_output
from lesionsignal.pipeline.units import JobSet, UnitStep
from lesionsignal.stimuli.panel import Condition
from lesionsignal.stimuli.placement import Placement

SUMMARY = "summary.json"  # per (source, cohort): conditions, rows, vector width, units of the stored vectors
TOKEN_MAPS = "token_maps.npz"  # token PCA of trained encoders and their random-init twins on a few films
TOKEN_MAP_FILMS = 4
TOKEN_MAP_SIDE = 256  # the films are stored this small: the figure shows them beside a 16 x 16 grid
TIMING = "timing.json"  # the same rows with the time, rate and cache use of the execution that made them
RAW_LABEL = "raw pixels (64 x 64 global, 32 x 32 oracle window)"
# The first columns of the summary depend on the parameters only; the rest describe one execution.
STABLE_COLUMNS = ["source", "label", "cohort", "conditions", "rows_per_condition", "dimension", "units"]


def placement(params: Params) -> Placement:
    panel = params.panel
    return Placement(panel.canvas_size, panel.margin, panel.base_seed, panel.resolved_switches())


def conditions(params: Params) -> list[Condition]:
    return params.panel.chosen()


def source_ids(params: Params) -> list[str]:
    """Every feature source of the panel: the raw-pixel baseline, then the encoders in parameter order."""
    return [RawPixels().source_id, *[e.id for e in params.encoders]]


def folder(run: Run, source_id: str, cohort: str) -> Path:
    return run.catalog.stage(StageName.EMBEDDINGS) / source_id / cohort


def embedding_file(run: Run, source_id: str, cohort: str, condition: str) -> Path:
    """One assembled file: image ids, boxes, and clean_* / perturbed_* pools (``clean``: the clean pools only)."""
    return folder(run, source_id, cohort) / f"{condition}.npz"


def _summary(reports: Sequence[ExtractionReport], files: dict, labels: dict[str, str]) -> pd.DataFrame:
    rows = []
    for report in reports:
        shapes = describe_files(files.get((report.source_id, report.cohort), {}))
        rows.append(
            {
                "source": report.source_id,
                "label": labels.get(report.source_id, report.source_id),
                "cohort": report.cohort,
                "conditions": max(len(shapes) - 1, 0),
                "rows_per_condition": shapes[0][1] if shapes else 0,
                "dimension": max((s[2] for s in shapes), default=0),
                "units": report.units_total,
                "cache_hits": report.units_cached,
                "computed": report.units_computed,
                "seconds": round(report.seconds, 1),
                "images_per_second": round(report.images_per_second, 1) if report.images_encoded else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def twin_pairs(params: Params) -> list[tuple[str, str]]:
    """(trained, random-init twin) pairs among the run's encoders (registry ``twin_of``), in parameter order."""
    ids = [e.id for e in params.encoders]
    twins = [(resolve_spec(i).twin_of, i) for i in ids]
    return [(trained, twin) for trained, twin in twins if trained is not None and trained in ids]


def token_map_items(run: Run) -> tuple[str, list[ImageItem]]:
    """The films of the token-map figure: evenly spaced through the first panel cohort's detection set."""
    name, records = next(iter(manifests(run, Analysis.PANEL).items()))
    items = detection_items(records, run.params.cohort(name))
    picks = np.linspace(0, len(items) - 1, min(TOKEN_MAP_FILMS, len(items))).round().astype(int)
    return name, [items[i] for i in picks]


def write_token_maps(run: Run, encoders: Sequence[EncoderFeatures]) -> None:
    """Token PCA of each trained encoder and its twin on a few films (features.token_maps), for section 02."""
    pairs = twin_pairs(run.params)
    if not pairs:
        return
    by_id = {e.source_id: e.encoder for e in encoders}
    cohort, items = token_map_items(run)
    canvases = np.stack([item.canvas(run.params.panel.canvas_size) for item in items])
    arrays: dict[str, np.ndarray] = {
        "image_ids": np.asarray([item.image_id for item in items]),
        "cohort": np.asarray(cohort),
        "films": np.stack([cv2.resize(c, (TOKEN_MAP_SIDE,) * 2, interpolation=cv2.INTER_AREA) for c in canvases]),
    }
    for trained, twin in pairs:
        for encoder_id in (trained, twin):
            pca = encoder_token_pca(by_id[encoder_id], canvases)
            arrays[f"maps/{encoder_id}"] = pca.maps
            arrays[f"explained/{encoder_id}"] = pca.explained
    save_arrays(run.catalog.stage(StageName.EMBEDDINGS) / TOKEN_MAPS, arrays)


def panel_sets(run: Run, sources: Sequence[FeatureSource]) -> list[JobSet]:
    """Every panel cohort's detection set, clean and under every condition of the run, then every clean-only
    learning cohort's films, clean, for ``sources`` together (each image decoded and perturbed once for all)."""
    params = run.params
    store = unit_store(run.catalog.units)
    chosen = conditions(params)
    clean_only = [c.name for c in params.clean_only_cohorts()]
    sets = []
    for name in [c.name for c in params.cohorts_for(Analysis.PANEL)] + clean_only:
        items = detection_items(manifest(run, name), params.cohort(name))
        wanted = [] if name in clean_only else chosen
        size = params.extraction.chunk_size
        plans = [panel_plan(store, s, name, items, wanted, placement(params), size) for s in sources]
        sets.append(JobSet(name, tuple(zip(sources, plans, strict=True))))
    return sets


def _loaded_twins(run: Run, sources: Sequence[FeatureSource]) -> list[EncoderFeatures]:
    """The encoders of the token-map figure, loaded: the run's own after a local extraction; else (the executor
    loaded them elsewhere) each trained encoder and its twin loaded here, on the run's device."""
    loaded = [s for s in sources if isinstance(s, EncoderFeatures)]
    if loaded or not twin_pairs(run.params):
        return loaded
    wanted = {i for pair in twin_pairs(run.params) for i in pair}
    device = device_for(run.params)
    return [encoder_source(e, device) for e in run.params.encoders if e.id in wanted]


PANEL_UNITS = UnitStep(StageName.EMBEDDINGS, panel_sources, panel_sets)


def compute(run: Run) -> bool:
    done = run_step(run, PANEL_UNITS)
    specs = {s.source_id: s.spec for s in done.sources if isinstance(s, EncoderFeatures | PlannedEncoder)}
    labels = {RawPixels().source_id: RAW_LABEL, **{i: spec.label for i, spec in specs.items()}}
    reports, files = [], {}
    for job_set, set_reports in zip(done.sets, done.reports, strict=True):
        reports += set_reports
        for (source, plan), report in zip(job_set.jobs, set_reports, strict=True):
            if report.complete:
                target = folder(run, source.source_id, job_set.cohort)
                files[(source.source_id, job_set.cohort)] = assemble_panel(source, plan, done.store, target)
    summary = _summary(reports, files, labels)
    write_output(run, StageName.EMBEDDINGS, TIMING, summary)
    if done.complete:
        write_token_maps(run, _loaded_twins(run, done.sources))
        write_output(run, StageName.EMBEDDINGS, SUMMARY, summary[STABLE_COLUMNS])
    return done.complete
