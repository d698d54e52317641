"""From parameters to the study's inputs: validated cohort manifests, detection sets, feature sources, extraction.

Notebooks call these few functions; each step is cached by the module that does the work (the demo cohort by its
generator parameters, the embeddings by their content keys), so re-running a section reuses every upstream result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lesionsignal.cohorts import (
    InstitutionalColumns,
    read_chestxdet10,
    read_demo,
    read_institutional,
    read_mimic,
    read_nih,
)
from lesionsignal.extract import ExtractionReport, ImageItem, Placement, make_plan, run_extraction_many
from lesionsignal.features import EncoderFeatures, FeatureSource, RawPixels
from lesionsignal.manifest import Manifest, validate, write_exclusions
from lesionsignal.params import CohortKind, CohortParams, EncoderParams, Params, project_root, resolve
from lesionsignal.perturb import Condition, panel


def placement(params: Params) -> Placement:
    return Placement(params.panel.canvas_size, params.panel.margin, params.panel.base_seed)


def conditions(params: Params) -> list[Condition]:
    return panel(params.panel.conditions)


def demo_cohort_folder(params: Params, progress: bool = True) -> Path:
    """Build (or reuse) the rendered demo cohort; its folder name carries the generator's parameter hash."""
    from lesionsignal.demo_cohort import DemoCohortConfig, build_demo_cohort
    from lesionsignal.registry_data import ct_paths

    settings = params.demo_cohort
    config = DemoCohortConfig(
        n_images=settings.n_images,
        images_per_subject=settings.images_per_subject,
        test_fraction=settings.test_fraction,
        seed=settings.seed,
        canvas=params.panel.canvas_size,
        workers=settings.workers,
    )
    ct = ct_paths(resolve(params, params.paths.data_cache))
    out = resolve(params, params.paths.work) / "cohorts" / f"demo-{config.digest()[:12]}"
    build_demo_cohort(config, ct, out, progress=progress)
    return out


def read_cohort(params: Params, cohort: CohortParams, root: Path | None = None, progress: bool = True) -> Manifest:
    """The cohort's manifest, read by its adapter and validated; problems raise unless the params allow exclusion."""
    root = root or project_root()

    def path(value: Path) -> Path:
        return resolve(params, value, root)

    kind = cohort.kind
    if kind is CohortKind.DEMO:
        manifest = read_demo(demo_cohort_folder(params, progress), classes=params.lesions.classes, cohort=cohort.name)
    elif kind is CohortKind.NIH:
        lists = (path(cohort.split_lists[0]), path(cohort.split_lists[1])) if cohort.split_lists else None
        manifest = read_nih(
            path(cohort.csv),
            [path(p) for p in cohort.image_dirs],
            lung_lesion_from=cohort.lung_lesion_from,
            split_lists=lists,
            test_fraction=cohort.test_fraction,
            seed=cohort.seed,
            cohort=cohort.name,
        )
    elif kind is CohortKind.MIMIC:
        manifest = read_mimic(
            path(cohort.root),
            metadata_csv=path(cohort.metadata_csv),
            chexpert_csv=path(cohort.chexpert_csv),
            split_csv=path(cohort.split_csv),
            subsample_manifest=path(cohort.subsample_manifest) if cohort.subsample_manifest else None,
            cohort=cohort.name,
        )
    elif kind is CohortKind.INSTITUTIONAL:
        columns = InstitutionalColumns(**cohort.columns)
        if cohort.label_columns:
            columns = dataclasses.replace(columns, labels=tuple(cohort.label_columns.items()))
        manifest = read_institutional(
            path(cohort.csv),
            root=path(cohort.root),
            columns=columns,
            window_columns=(cohort.window_columns[0], cohort.window_columns[1]) if cohort.window_columns else None,
            split_map=cohort.split_map or None,
            cohort=cohort.name,
        )
    elif kind is CohortKind.REAL_FILMS:
        from lesionsignal.cohorts import read_real_films
        from lesionsignal.registry_data import real_films

        films = real_films(resolve(params, params.paths.data_cache, root))
        manifest = read_real_films([(f.film_id, f.path, f.group, f.label) for f in films], cohort=cohort.name)
    elif kind is CohortKind.CHESTXDET10:
        manifest = read_chestxdet10(
            path(cohort.train_json),
            path(cohort.test_json),
            path(cohort.root),
            classes=params.lesions.classes,
            cohort=cohort.name,
        )
    else:
        raise ValueError(f"{params.source}: cohort {cohort.name!r}: kind {kind.value} is not an analysis cohort")
    checked, exclusions = validate(
        manifest,
        canvas=params.panel.canvas_size,
        known_classes=None,
        check_files=True,
        exclude=cohort.exclude_invalid,
    )
    folder = resolve(params, params.paths.work, root) / "manifests" / cohort.name
    checked.save(folder)
    if exclusions:
        write_exclusions(folder / "exclusions.csv", exclusions)
    return checked


def detection_items(manifest: Manifest, cohort: CohortParams) -> list[ImageItem]:
    """The detection set: every image, or ``n_images`` drawn with ``default_rng(seed)`` (SPEC: 40,000)."""
    records = sorted(manifest.records, key=lambda r: r.image_id)
    if cohort.n_images is not None and cohort.n_images < len(records):
        chosen = np.random.default_rng(cohort.seed).choice(len(records), size=cohort.n_images, replace=False)
        records = [records[i] for i in sorted(chosen)]
    return [ImageItem(r.image_id, r.path, r.window) for r in records]


def splits_of(manifest: Manifest) -> dict[str, str]:
    return {r.image_id: r.split for r in manifest.records}


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

    from lesionsignal.encoders import load_encoder, resolve_spec

    spec = resolve_spec(entry.id, source=entry.source, revision=entry.revision)
    dtype = getattr(torch, entry.dtype)
    if device == "cpu" and dtype is not torch.float32:
        dtype = torch.float32  # half precision is a GPU setting; the vectors are keyed by the dtype actually used
    encoder = load_encoder(spec, device=device, dtype=dtype, seed=entry.seed)
    return EncoderFeatures(encoder, batch_size=entry.batch_size, seed=entry.seed)


def extract_cohort(
    params: Params,
    sources: Sequence[FeatureSource],
    cohort: CohortParams,
    manifest: Manifest,
    chosen: Sequence[Condition],
    progress: bool = True,
) -> list[ExtractionReport]:
    """Every source over one cohort's detection set, sharing image decoding and perturbation across sources."""
    items = detection_items(manifest, cohort)
    jobs = [
        (source, make_plan(source, cohort.name, items, chosen, placement(params), params.extraction.chunk_size))
        for source in sources
    ]
    return run_extraction_many(
        jobs,
        resolve(params, params.paths.work),
        shard=(params.extraction.shard_index, params.extraction.shard_count),
        workers=params.extraction.workers,
        progress=progress,
    )


def source_ids(params: Params) -> list[str]:
    """Every feature source of the run: the raw-pixel baseline, then the encoders in params order."""
    return [RawPixels().source_id, *[e.id for e in params.encoders]]


def embeddings_path(params: Params, source_id: str, cohort: str, condition: str) -> Path:
    return resolve(params, params.paths.work) / "embeddings" / source_id / cohort / f"{condition}.npz"


def extraction_summary(reports: Sequence[ExtractionReport], labels: dict[str, str]) -> pd.DataFrame:
    """One row per (source, cohort): rows and dimension of the stored vectors, time, rate and cache use.

    The first columns (through ``units``) depend on the parameters only; the rest describe this execution.
    """
    from lesionsignal.extract import describe_files

    rows = []
    for report in reports:
        shapes = describe_files(report.files) if report.files else []
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


def detection_probes(
    params: Params, manifests: dict[str, Manifest], source_ids: Sequence[str], condition_names: Sequence[str]
) -> object:
    """Probe AUCs of section 03 for these sources and conditions, from its content-keyed cache.

    Embedding files that section 02 has not left are extracted first by the same cached pipeline, so a section
    re-run alone computes exactly what a full run would. Returns ``detection.CachedRun``.
    """
    from lesionsignal.detection import file_cells, probe_config, run_files_cached

    cohorts = [params.cohort(name) for name in manifests]
    wanted = [(s, c.name, k) for s in source_ids for c in cohorts for k in [*condition_names, "clean"]]
    missing = {s for s, c, k in wanted if not embeddings_path(params, s, c, k).is_file()}
    if missing:
        print(f"embeddings of {sorted(missing)} are missing: extracting them now (section 02's cached pipeline)")
        device = device_for(params)
        by_id = {e.id: e for e in params.encoders}
        sources = [RawPixels() if s == RawPixels().source_id else encoder_source(by_id[s], device) for s in missing]
        for cohort in cohorts:
            extract_cohort(params, sources, cohort, manifests[cohort.name], conditions(params))
    files = []
    for source_id in source_ids:
        for cohort in cohorts:
            for name in condition_names:
                path = embeddings_path(params, source_id, cohort.name, name)
                with np.load(path, allow_pickle=False) as archive:
                    files.append((path, file_cells(source_id, cohort.name, name, archive.files)))
    splits = {name: splits_of(m) for name, m in manifests.items()}
    cache = resolve(params, params.paths.work) / "probes" / "detection"
    return run_files_cached(
        files, splits, probe_config(params.probe), params.probe.n_boot, cache, workers=params.probe.workers
    )
