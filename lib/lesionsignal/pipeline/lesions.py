"""The lesions stage: natural lesions with boxes (ChestX-Det10 in the study, the demo cohort's lesions here).

The rows (every negative box included) are decided from the manifest alone; then each image is encoded once per
encoder, through the one extraction engine, and pooled at exactly the boxes the rows need; then the image-level
and box-level probes, their size strata, and the paired bootstrap of patch-local minus CLS.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from lesionsignal.analysis import lesion_probes as lp
from lesionsignal.analysis.lesion_design import LesionDesign, SourceDesign, lesion_design, source_design
from lesionsignal.analysis.lesions import NegativePlacement
from lesionsignal.config.params import Analysis, Params
from lesionsignal.core.parallel import one_thread
from lesionsignal.features.extraction import box_plan, read_features, unit_store
from lesionsignal.features.pools import FeatureSource
from lesionsignal.pipeline.cohorts import manifests
from lesionsignal.pipeline.executors import run_step
from lesionsignal.pipeline.probes import probe_config
from lesionsignal.pipeline.sources import device_for, encoder_sources
from lesionsignal.pipeline.stage import Run, StageName, write_output
from lesionsignal.pipeline.units import JobSet, UnitStep

DESIGN = "design.json"  # per cohort, class and split: images, boxes, negatives, median positive area
EXCLUDED = "excluded.json"  # box-level rows an encoder could not pool (box outside its crop)
FITS = "fits.json"  # one row per probe: AUC, CI, strata, sizes
SKIPPED = "skipped.json"  # probes that could not be fitted, and why
PAIRED = "paired.json"  # patch-local minus CLS per (cohort, model, class), BH q-values
TIMING = "timing.json"


@dataclass(frozen=True)
class LesionCohort:
    """One lesion cohort's design (decided from the manifest alone), what each source can pool, and its jobs."""

    name: str
    design: LesionDesign
    chosen: dict[str, SourceDesign]  # per source id
    units: JobSet


def lesion_cohorts(run: Run, sources: Sequence[FeatureSource]) -> list[LesionCohort]:
    params = run.params
    settings = params.lesions
    store = unit_store(run.catalog.units)
    found = []
    for name, records in manifests(run, Analysis.LESIONS).items():
        design = lesion_design(
            records,
            settings.classes,
            negatives_per_positive=settings.negatives_per_positive,
            placement=NegativePlacement(settings.negative_placement),
            seed=settings.seed,
            canvas_size=params.panel.canvas_size,
        )
        chosen = {s.source_id: source_design(design, s) for s in sources}
        jobs = tuple(
            (s, box_plan(store, s, name, design.items, chosen[s.source_id].boxes, design.canvas_size,
                         params.extraction.chunk_size, params.panel.resolved_switches().resample))
            for s in sources
        )  # fmt: skip
        found.append(LesionCohort(name, design, chosen, JobSet(name, jobs)))
    return found


def lesion_sets(run: Run, sources: Sequence[FeatureSource]) -> list[JobSet]:
    return [cohort.units for cohort in lesion_cohorts(run, sources)]


def lesion_sources(params: Params, device: str, load: bool) -> list[FeatureSource]:
    """The encoders only (the raw pixels have no lesion analysis); none when no cohort enters the lesion study,
    so a run without one loads nothing."""
    return encoder_sources(params, device, load) if params.cohorts_for(Analysis.LESIONS) else []


LESION_UNITS = UnitStep(StageName.LESIONS, lesion_sources, lesion_sets)


def compute(run: Run) -> bool:
    params = run.params
    settings = params.lesions
    config = probe_config(params.probe, device_for(params))
    done = run_step(run, LESION_UNITS)
    cohorts = lesion_cohorts(run, done.sources)
    designs, fits, skipped, excluded, paired, timings = [], [], [], [], [], []
    for cohort, reports in zip(cohorts, done.reports, strict=True):
        name, design, chosen = cohort.name, cohort.design, cohort.chosen
        designs.append(lp.design_summary(design).assign(cohort=name))
        excluded += [chosen[s.source_id].exclusions.assign(cohort=name) for s in done.sources]
        cohort_fits, cohort_skipped = [], []
        for (source, plan), report in zip(cohort.units.jobs, reports, strict=True):
            timings.append(
                {
                    "step": "extraction",
                    "cohort": name,
                    "model": source.source_id,
                    "units": report.units_total,
                    "cache_hits": report.units_cached,
                    "images_encoded": report.images_encoded,
                    "seconds": round(report.seconds, 1),
                }
            )
            if not report.complete:
                continue
            started = time.perf_counter()
            features = read_features(source, plan.units, done.store)
            # One thread, as in the probes stage: the numbers do not depend on the core count.
            with one_thread():
                found, missed = lp.study_source(
                    design, chosen[source.source_id], features, model=source.source_id, config=config,
                    n_boot=params.probe.n_boot,
                )  # fmt: skip
            cohort_fits += found
            cohort_skipped += missed
            seconds = round(time.perf_counter() - started, 1)
            timings.append({"step": "probes", "cohort": name, "model": source.source_id, "seconds": seconds})
        fits.append(lp.fits_frame(cohort_fits).assign(cohort=name))
        skipped.append(lp.skipped_frame(cohort_skipped).assign(cohort=name))
        started = time.perf_counter()
        tests = lp.paired_tests(cohort_fits, n_boot=settings.n_boot, seed=settings.seed, alpha=params.probe.alpha)
        paired.append(tests.assign(cohort=name))
        timings.append({"step": "paired bootstrap", "cohort": name, "seconds": round(time.perf_counter() - started, 1)})
    write_output(run, StageName.LESIONS, TIMING, pd.DataFrame(timings))
    if not done.complete:
        return False
    outputs = {
        DESIGN: _first(pd.concat(designs, ignore_index=True)) if designs else pd.DataFrame(),
        EXCLUDED: pd.concat(excluded, ignore_index=True) if excluded else pd.DataFrame(),
        FITS: _first(_concat(fits, lp.fits_frame([]).assign(cohort=""))),
        SKIPPED: _concat(skipped, lp.skipped_frame([]).assign(cohort="")),
        PAIRED: _first(pd.concat(paired, ignore_index=True)) if paired else pd.DataFrame(),
    }
    for name, frame in outputs.items():
        write_output(run, StageName.LESIONS, name, frame)
    return True


def _concat(frames: list[pd.DataFrame], empty: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames or [empty], ignore_index=True)


def _first(frame: pd.DataFrame) -> pd.DataFrame:
    """The cohort column first."""
    return frame[["cohort", *[c for c in frame.columns if c != "cohort"]]]
