"""The embeddings stage: every feature source over every panel cohort's detection set, clean and perturbed.

The raw-pixel baselines and the encoders of the run go over each cohort together (each image decoded and perturbed
once for all of them) through the one extraction engine; once every unit exists (all shards), one file per
(source, cohort, condition) is assembled in the stage's folder for the probes and the separation measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lesionsignal.config.params import Analysis, EncoderParams, Params
from lesionsignal.core.cache import Store
from lesionsignal.core.files import save_arrays
from lesionsignal.data.canvas_store import canvas_store
from lesionsignal.data.images import ImageItem
from lesionsignal.features.encoder import load_encoder
from lesionsignal.features.extraction import (
    ExtractionReport,
    Plan,
    assemble_panel,
    describe_files,
    panel_plan,
    run_extraction,
    unit_store,
)
from lesionsignal.features.pools import EncoderFeatures, FeatureSource, RawPixels
from lesionsignal.features.registry import resolve_spec
from lesionsignal.features.token_maps import encoder_token_pca
from lesionsignal.pipeline.cohorts import detection_items, manifests
from lesionsignal.pipeline.stage import Run, StageName, write_output
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


def device_for(params: Params) -> str:
    import torch

    wanted = params.extraction.device
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{params.source}: extraction.device is cuda but no CUDA device is available")
    return wanted


def encoder_source(entry: EncoderParams, device: str) -> EncoderFeatures:
    import torch

    spec = resolve_spec(entry.id, source=entry.source, revision=entry.revision)
    dtype = getattr(torch, entry.dtype)
    if device == "cpu" and dtype is not torch.float32:
        dtype = torch.float32  # half precision is a GPU setting; the vectors are keyed by the dtype actually used
    encoder = load_encoder(spec, device=device, dtype=dtype, seed=entry.seed)
    return EncoderFeatures(encoder, batch_size=entry.batch_size, seed=entry.seed)


def encoder_sources(params: Params) -> list[EncoderFeatures]:
    """Every encoder of the run, loaded on the run's device."""
    device = device_for(params)
    return [encoder_source(entry, device) for entry in params.encoders]


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


def extract(run: Run, jobs: Sequence[tuple[FeatureSource, Plan]], store: Store) -> list[ExtractionReport]:
    """The engine over ``jobs`` with the run's shard, workers and progress settings."""
    settings = run.params.extraction
    shard = (settings.shard_index, settings.shard_count)
    canvases = canvas_store(run.catalog.canvases) if settings.canvas_store else None
    return run_extraction(jobs, store, shard=shard, workers=settings.workers, progress=run.progress, canvases=canvases)


def compute(run: Run) -> bool:
    params = run.params
    store = unit_store(run.catalog.units)
    encoders = encoder_sources(params)
    sources: list[FeatureSource] = [RawPixels(), *encoders]
    labels = {RawPixels().source_id: RAW_LABEL, **{e.source_id: e.spec.label for e in encoders}}
    chosen = conditions(params)
    reports, files, complete = [], {}, True
    for name, records in manifests(run, Analysis.PANEL).items():
        items = detection_items(records, params.cohort(name))
        jobs = [
            (s, panel_plan(store, s, name, items, chosen, placement(params), params.extraction.chunk_size))
            for s in sources
        ]
        done = extract(run, jobs, store)
        reports += done
        for (source, plan), report in zip(jobs, done, strict=True):
            if report.complete:
                target = folder(run, source.source_id, name)
                files[(source.source_id, name)] = assemble_panel(source, plan, store, target)
            complete &= report.complete
    summary = _summary(reports, files, labels)
    write_output(run, StageName.EMBEDDINGS, TIMING, summary)
    if complete:
        write_token_maps(run, encoders)
        write_output(run, StageName.EMBEDDINGS, SUMMARY, summary[STABLE_COLUMNS])
    return complete
