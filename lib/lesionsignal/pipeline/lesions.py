"""The lesions stage: natural lesions with boxes (ChestX-Det10 in the study, the demo cohort's lesions here).

The rows (every negative box included) are decided from the manifest alone; then each image is encoded once per
encoder, through the one extraction engine, and pooled at exactly the boxes the rows need; then the image-level
and box-level probes, their size strata, and the paired bootstrap of patch-local minus CLS.
"""

from __future__ import annotations

import time

import pandas as pd

from lesionsignal.analysis import lesion_probes as lp
from lesionsignal.analysis.lesion_design import lesion_design, source_design
from lesionsignal.analysis.lesions import NegativePlacement
from lesionsignal.config.params import Analysis
from lesionsignal.core.parallel import one_thread
from lesionsignal.features.extraction import box_plan, read_features, unit_store
from lesionsignal.pipeline.cohorts import manifests
from lesionsignal.pipeline.embeddings import device_for, encoder_sources, extract
from lesionsignal.pipeline.probes import probe_config
from lesionsignal.pipeline.stage import Run, StageName, write_output

DESIGN = "design.json"  # per cohort, class and split: images, boxes, negatives, median positive area
EXCLUDED = "excluded.json"  # box-level rows an encoder could not pool (box outside its crop)
FITS = "fits.json"  # one row per probe: AUC, CI, strata, sizes
SKIPPED = "skipped.json"  # probes that could not be fitted, and why
PAIRED = "paired.json"  # patch-local minus CLS per (cohort, model, class), BH q-values
TIMING = "timing.json"


def compute(run: Run) -> bool:
    params = run.params
    settings = params.lesions
    device = device_for(params)
    config = probe_config(params.probe, device)
    store = unit_store(run.catalog.units)
    cohorts = manifests(run, Analysis.LESIONS)
    sources = encoder_sources(params) if cohorts else []
    designs, fits, skipped, excluded, paired, timings = [], [], [], [], [], []
    complete = True
    for name, records in cohorts.items():
        design = lesion_design(
            records,
            settings.classes,
            negatives_per_positive=settings.negatives_per_positive,
            placement=NegativePlacement(settings.negative_placement),
            seed=settings.seed,
            canvas_size=params.panel.canvas_size,
        )
        designs.append(lp.design_summary(design).assign(cohort=name))
        chosen = {s.source_id: source_design(design, s) for s in sources}
        jobs = [
            (s, box_plan(store, s, name, design.items, chosen[s.source_id].boxes, design.canvas_size,
                         params.extraction.chunk_size, params.panel.resolved_switches().resample))
            for s in sources
        ]  # fmt: skip
        excluded += [chosen[s.source_id].exclusions.assign(cohort=name) for s in sources]
        reports = extract(run, jobs, store)
        cohort_fits, cohort_skipped = [], []
        for (source, plan), report in zip(jobs, reports, strict=True):
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
            complete &= report.complete
            if not report.complete:
                continue
            started = time.perf_counter()
            features = read_features(source, plan.units, store)
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
    if not complete:
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
