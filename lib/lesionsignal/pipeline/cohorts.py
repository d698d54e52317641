"""The first stages: render the demo cohorts (when the run has any), then read, validate and save every cohort.

Each cohort of the parameters is read by the adapter of its kind, validated (files, unique ids, patient-disjoint
splits, boxes inside the canvas) and saved as a manifest in the stage's folder; later stages read the manifests and
never the sources again. Problems raise, naming file and row, unless the cohort allows exclusion
(``exclude_invalid``): the excluded rows are then listed beside its manifest. A reader may exclude rows itself
(MIMIC images whose study has no CheXpert row); those come first in the list. A split that crosses patients passes
only where the manifest declares it (ChestX-Det10's official split); ``splits.json`` records, for every cohort, the
patients and images each split shares with another.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from lesionsignal.config.params import Analysis, CohortKind, CohortParams, resolve
from lesionsignal.core.files import atomic_write_text
from lesionsignal.data.chestxdet10 import BoxCorners, DetSplit, read_chestxdet10
from lesionsignal.data.demo_cohort import read_demo
from lesionsignal.data.images import ImageItem
from lesionsignal.data.institutional import InstitutionalColumns, read_institutional
from lesionsignal.data.manifest import Manifest
from lesionsignal.data.mimic import read_mimic
from lesionsignal.data.nih import read_nih
from lesionsignal.data.real_films import read_real_films
from lesionsignal.data.registry import ct_paths, real_films
from lesionsignal.data.summary import SPLIT_OVERLAP_COLUMNS, split_overlap
from lesionsignal.data.validation import Exclusion, validate, write_exclusions
from lesionsignal.demo.build import build_demo_cohort
from lesionsignal.demo.config import cohort_folder_name
from lesionsignal.pipeline.stage import Run, StageName, write_output

MANIFESTS = "manifests"
DEMO_RECORD = "demo_cohort.json"
SPLITS = "splits.json"  # per cohort and split: images, patients, and those shared with another split


def demo_cohort_folder(run: Run, cohort: CohortParams) -> Path:
    """Where a demo cohort of the run lives: the folder name carries its generator's parameter digest."""
    return run.catalog.cohorts / cohort_folder_name(run.params.demo_config(cohort), run.params.panel.canvas_size)


def compute_demo_cohort(run: Run) -> bool:
    """Build (or reuse, or resume) every demo cohort of the run; record where each is."""
    folders: dict[str, str] = {}
    built: set[Path] = set()
    for cohort in run.params.cohorts:
        if cohort.kind is not CohortKind.DEMO:
            continue
        folder = demo_cohort_folder(run, cohort)
        if folder not in built:
            ct = ct_paths(run.catalog.data_cache)
            config, canvas = run.params.demo_config(cohort), run.params.panel.canvas_size
            if not build_demo_cohort(config, ct, folder, run.progress, canvas=canvas).complete:
                return False
            built.add(folder)
        folders[cohort.name] = folder.name
    atomic_write_text(run.catalog.stage(StageName.DEMO_COHORT) / DEMO_RECORD, json.dumps({"folders": folders}) + "\n")
    return True


def read_cohort(run: Run, cohort: CohortParams) -> tuple[Manifest, list[Exclusion]]:
    """The cohort as its adapter reads it, before validation, with the rows the adapter excluded."""
    if cohort.kind is CohortKind.MIMIC:
        return _read_mimic(run, cohort)
    return _read_strict(run, cohort), []


def _read_mimic(run: Run, cohort: CohortParams) -> tuple[Manifest, list[Exclusion]]:
    def path(value: Path) -> Path:
        return resolve(value, run.catalog.root)

    return read_mimic(
        path(cohort.root),
        metadata_csv=path(cohort.metadata_csv),
        chexpert_csv=path(cohort.chexpert_csv),
        split_csv=path(cohort.split_csv),
        subsample_manifest=path(cohort.subsample_manifest) if cohort.subsample_manifest else None,
        exclude_unlabelled=cohort.exclude_invalid,
        cohort=cohort.name,
    )


def _read_strict(run: Run, cohort: CohortParams) -> Manifest:
    params, root = run.params, run.catalog.root

    def path(value: Path) -> Path:
        return resolve(value, root)

    kind = cohort.kind
    if kind is CohortKind.DEMO:
        return read_demo(demo_cohort_folder(run, cohort), classes=params.lesions.classes, cohort=cohort.name)
    if kind is CohortKind.NIH:
        lists = (path(cohort.split_lists[0]), path(cohort.split_lists[1])) if cohort.split_lists else None
        return read_nih(
            path(cohort.csv),
            [path(p) for p in cohort.image_dirs],
            lung_lesion_from=cohort.lung_lesion_from,
            split_lists=lists,
            test_fraction=cohort.test_fraction,
            seed=cohort.seed,
            cohort=cohort.name,
        )
    if kind is CohortKind.INSTITUTIONAL:
        columns = InstitutionalColumns(**cohort.columns)
        if cohort.label_columns:
            columns = dataclasses.replace(columns, labels=tuple(cohort.label_columns.items()))
        return read_institutional(
            path(cohort.csv),
            root=path(cohort.root),
            columns=columns,
            window_columns=(cohort.window_columns[0], cohort.window_columns[1]) if cohort.window_columns else None,
            split_map=cohort.split_map or None,
            cohort=cohort.name,
        )
    if kind is CohortKind.REAL_FILMS:
        films = real_films(run.catalog.data_cache)
        return read_real_films([(f.film_id, f.path, f.group, f.label) for f in films], cohort=cohort.name)
    if kind is CohortKind.CHESTXDET10:
        maps = cohort.name_map_jsons
        return read_chestxdet10(
            path(cohort.train_json),
            path(cohort.test_json),
            [path(p) for p in cohort.image_dirs],
            classes=params.lesions.classes,
            cohort=cohort.name,
            corners=BoxCorners(cohort.box_corners),
            name_map_jsons=(path(maps[0]), path(maps[1])) if maps else None,
            name_map_csv=path(cohort.name_map_csv) if cohort.name_map_csv else None,
            split=DetSplit(cohort.split),
            seed=cohort.seed,
        )
    raise ValueError(f"{params.source}: cohort {cohort.name!r}: kind {kind.value} has no adapter")


def checked_cohort(run: Run, cohort: CohortParams) -> tuple[Manifest, list[Exclusion]]:
    """A cohort read by its adapter and validated by the study's rules, with its exclusions when it allows them."""
    manifest, excluded = read_cohort(run, cohort)
    checked, invalid = validate(
        manifest,
        canvas=run.params.panel.canvas_size,
        known_classes=None,
        check_files=True,
        exclude=cohort.exclude_invalid,
    )
    return checked, [*excluded, *invalid]  # the reader's exclusions first


def compute_cohorts(run: Run) -> bool:
    """Every cohort of the run, validated and saved (with its exclusion list when rows were excluded), and the
    patients each split shares with another: zero unless a manifest declares a published overlap (ChestX-Det10)."""
    overlaps = []
    for cohort in run.params.cohorts:
        checked, exclusions = checked_cohort(run, cohort)
        folder = manifest_folder(run, cohort.name)
        checked.save(folder)
        if exclusions:
            write_exclusions(folder / "exclusions.csv", exclusions)
        overlaps.append(split_overlap(checked).assign(cohort=cohort.name))
    columns = ["cohort", *SPLIT_OVERLAP_COLUMNS]
    frame = pd.concat(overlaps, ignore_index=True)[columns] if overlaps else pd.DataFrame(columns=columns)
    write_output(run, StageName.COHORTS, SPLITS, frame)
    return True


def manifest_folder(run: Run, cohort: str) -> Path:
    return run.catalog.stage(StageName.COHORTS) / MANIFESTS / cohort


def manifest(run: Run, cohort: str) -> Manifest:
    """A validated cohort, as the cohorts stage saved it."""
    return Manifest.load(manifest_folder(run, cohort))


def manifests(run: Run, analysis: Analysis) -> dict[str, Manifest]:
    """The saved manifests of the cohorts that enter ``analysis``, in parameter order."""
    return {c.name: manifest(run, c.name) for c in run.params.cohorts_for(analysis)}


def detection_items(records: Manifest, cohort: CohortParams) -> list[ImageItem]:
    """The detection set: every image, or ``n_images`` drawn with ``default_rng(seed)`` (the study: 40,000)."""
    ordered = sorted(records.records, key=lambda r: r.image_id)
    if cohort.n_images is not None and cohort.n_images < len(ordered):
        chosen = np.random.default_rng(cohort.seed).choice(len(ordered), size=cohort.n_images, replace=False)
        ordered = [ordered[i] for i in sorted(chosen)]
    return [r.item for r in ordered]


def splits_of(records: Manifest) -> dict[str, str]:
    return {r.image_id: r.split for r in records.records}
