"""The lesions stage: natural lesions with boxes (ChestX-Det10 in the study, the demo cohort's lesions here).

The rows (every negative box included) are decided from the manifest alone; then each image is encoded once per
encoder, through the one extraction engine, and pooled at exactly the boxes the rows need; then the image-level
and box-level probes, their size strata, and the paired bootstrap of patch-local minus CLS.

Beside them, what a clinical reader asks of the same probes: every probe's operating points, size strata beyond
the median with their detectable differences, the patch-local probe against box jitter, and (for a split that
shares patients, as ChestX-Det10's official one does) the same probes on the patient-disjoint re-split. The jittered
and re-split boxes that the first pass did not pool at are pooled in a second pass over the images that need them,
a plan of its own, so the first pass's units and every number made from them stay as they were: one more forward
pass per lesion image and encoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from lesionsignal.analysis import lesion_probes as lp
from lesionsignal.analysis.box_jitter import JitterPlan, jitter_draws, jitter_fits, jitter_frame, jitter_plan
from lesionsignal.analysis.box_jitter import patch_pixels as cell_pixels
from lesionsignal.analysis.lesion_design import LesionDesign, SourceDesign, lesion_design, source_design
from lesionsignal.analysis.lesion_reporting import operating_tables, size_strata_tables
from lesionsignal.analysis.lesions import NegativePlacement
from lesionsignal.analysis.power import PowerSettings
from lesionsignal.analysis.probe import ProbeConfig
from lesionsignal.analysis.size_strata import StrataScheme
from lesionsignal.analysis.split_comparison import compare_splits
from lesionsignal.config.params import Analysis, Params
from lesionsignal.core.box import Box
from lesionsignal.core.cache import Store
from lesionsignal.core.parallel import one_thread
from lesionsignal.data.chestxdet10 import patient_disjoint_manifest
from lesionsignal.data.images import ImageItem
from lesionsignal.data.manifest import Manifest, SplitPolicy
from lesionsignal.data.validation import mixed_patients
from lesionsignal.features.extraction import (
    ExtractionReport,
    Plan,
    PooledFeatures,
    box_plan,
    read_features,
    unit_store,
    with_local,
)
from lesionsignal.features.pools import FeatureSource
from lesionsignal.pipeline.cohorts import manifests
from lesionsignal.pipeline.executors import run_step
from lesionsignal.pipeline.probes import operating_settings, probe_config
from lesionsignal.pipeline.sources import device_for, encoder_sources
from lesionsignal.pipeline.stage import Run, StageName, write_output
from lesionsignal.pipeline.units import JobSet, UnitStep

DESIGN = "design.json"  # per cohort, class and split: images, boxes, negatives, median positive area
EXCLUDED = "excluded.json"  # box-level rows an encoder could not pool (box outside its crop)
FITS = "fits.json"  # one row per probe: AUC, CI, strata, sizes
SKIPPED = "skipped.json"  # probes that could not be fitted, and why
PAIRED = "paired.json"  # patch-local minus CLS per (cohort, model, class), BH q-values
OPERATING = "operating_points.json"  # every probe's sensitivity at fixed specificities, PPV and NPV
SENSITIVITY_GAPS = "sensitivity_gaps.json"  # box level: patch-local minus CLS sensitivity, paired interval
STRATA = "size_strata.json"  # every probe's strata under every scheme, with counts and detectable differences
STRATA_GAPS = "size_strata_gaps.json"  # per scheme: smallest-to-largest stratum gap against the detectable gap
JITTER = "jitter.json"  # the patch-local box-level probe at every box jitter
SPLIT_COMPARISON = "split_comparison.json"  # official split against the patient-disjoint re-split (when it differs)
SPLITS_ANALYSED = "splits_analysed.json"  # each analysed split's images, patients, and patients on both sides
TIMING = "timing.json"
REPORTING = (OPERATING, SENSITIVITY_GAPS, STRATA, STRATA_GAPS, JITTER, SPLIT_COMPARISON, SPLITS_ANALYSED)


@dataclass(frozen=True)
class Settings:
    """The stage's settings, read once from the parameters."""

    params: Params
    config: ProbeConfig
    schemes: tuple[StrataScheme, ...]
    power: PowerSettings

    @classmethod
    def of(cls, params: Params) -> Settings:
        lesions = params.lesions
        return cls(
            params,
            probe_config(params.probe, device_for(params)),
            tuple(StrataScheme(tuple(cuts)) for cuts in lesions.size_strata),
            PowerSettings(lesions.power_alpha, lesions.power),
        )


@dataclass(frozen=True)
class SourceWork:
    """One encoder on one cohort: its rows of the design, its jittered rows, and its rows of the re-split."""

    chosen: SourceDesign
    jitter: JitterPlan | None
    resplit: SourceDesign | None


@dataclass
class Collected:
    """The stage's frames as the cohorts add to them."""

    designs: list[pd.DataFrame] = field(default_factory=list)
    fits: list[pd.DataFrame] = field(default_factory=list)
    skipped: list[pd.DataFrame] = field(default_factory=list)
    excluded: list[pd.DataFrame] = field(default_factory=list)
    paired: list[pd.DataFrame] = field(default_factory=list)
    reporting: dict[str, list[pd.DataFrame]] = field(default_factory=lambda: {name: [] for name in REPORTING})
    timings: list[dict] = field(default_factory=list)


def _design(records: Manifest, params: Params) -> LesionDesign:
    settings = params.lesions
    return lesion_design(
        records,
        settings.classes,
        negatives_per_positive=settings.negatives_per_positive,
        placement=NegativePlacement(settings.negative_placement),
        seed=settings.seed,
        canvas_size=params.panel.canvas_size,
    )


def _visible(source: FeatureSource, canvas: int) -> Callable[[Box], bool]:
    seen: dict[Box, bool] = {}

    def visible(box: Box) -> bool:
        if box not in seen:
            seen[box] = source.can_pool(box, canvas)
        return seen[box]

    return visible


def resplit_of(records: Manifest, params: Params, cohort: str) -> Manifest | None:
    """The patient-disjoint re-split of a split that shares patients; None when none is asked for or none crosses
    (the demo cohort's split is patient-disjoint by construction: a re-split would be the very same split)."""
    if not params.lesions.compare_splits or records.split_policy is not SplitPolicy.OVERLAP_REPORTED:
        return None
    if not mixed_patients([r.patient_id for r in records.records], [r.split for r in records.records]):
        return None
    return patient_disjoint_manifest(records, params.cohort(cohort).seed)


def splits_analysed(cohort: str, records: Manifest, resplit: Manifest | None) -> pd.DataFrame:
    """Per analysed split and part: images, patients, and patients who also have images in another part."""
    rows = []
    compared = {"as read": records, **({"patient-disjoint re-split": resplit} if resplit is not None else {})}
    for name, manifest in compared.items():
        crossing = set(mixed_patients([r.patient_id for r in manifest.records], [r.split for r in manifest.records]))
        for split in manifest.splits:
            patients = {r.patient_id for r in manifest.records if r.split == split}
            rows.append(
                {
                    "cohort": cohort,
                    "analysed_split": name,
                    "split": split,
                    "images": sum(r.split == split for r in manifest.records),
                    "patients": len(patients),
                    "patients_in_another_split": len(patients & crossing),
                }
            )
    return pd.DataFrame(rows)


def _work(design: LesionDesign, resplit: LesionDesign | None, source: FeatureSource, params: Params) -> SourceWork:
    chosen = source_design(design, source)
    levels = params.lesions.jitter
    plan = None
    if levels:
        canvas = design.canvas_size
        geometry = source.spec.geometry
        pixels = cell_pixels(geometry.patch, geometry.resize, canvas)
        draws = jitter_draws(design.samples, params.lesions.seed)
        plan = jitter_plan(chosen.samples, draws, levels, pixels, canvas, _visible(source, canvas))
    return SourceWork(chosen, plan, source_design(resplit, source) if resplit is not None else None)


def second_pass_boxes(design: LesionDesign, work: SourceWork) -> dict[str, tuple[Box, ...]]:
    """Per image, the boxes the jittered or re-split rows need that the first pass did not pool at."""
    first = {item.image_id: set(boxes) for item, boxes in zip(design.items, work.chosen.boxes, strict=True)}
    wanted: dict[str, set[Box]] = {}
    if work.jitter is not None:
        for image_id, boxes in work.jitter.boxes_by_image().items():
            wanted.setdefault(image_id, set()).update(boxes)
    if work.resplit is not None:
        for item, boxes in zip(design.items, work.resplit.boxes, strict=True):
            wanted.setdefault(item.image_id, set()).update(boxes)
    missing = {image_id: boxes - first.get(image_id, set()) for image_id, boxes in wanted.items()}
    return {image_id: tuple(sorted(boxes, key=Box.as_tuple)) for image_id, boxes in missing.items() if boxes}


def _plans(
    store: Store,
    name: str,
    images: Sequence[ImageItem],
    boxes: dict[str, tuple[FeatureSource, Sequence[Sequence[Box]]]],
    params: Params,
) -> list[tuple[FeatureSource, Plan]]:
    """One box plan per source (``boxes[source id]``: the source and its boxes per image, aligned with ``images``);
    every source's plan covers the same images, as the engine asks of plans extracted together."""
    canvas, chunk = params.panel.canvas_size, params.extraction.chunk_size
    resample = params.panel.resolved_switches().resample
    return [
        (source, box_plan(store, source, name, images, own, canvas, chunk, resample)) for source, own in boxes.values()
    ]


def _second_plans(
    store: Store,
    name: str,
    design: LesionDesign,
    work: dict[str, SourceWork],
    sources: Sequence[FeatureSource],
    params: Params,
) -> list[tuple[FeatureSource, Plan]]:
    """The second pass: only the images some source needs again, each pooled at its new boxes."""
    extra = {s.source_id: second_pass_boxes(design, work[s.source_id]) for s in sources}
    needed = {image_id for own in extra.values() for image_id in own}
    images = [item for item in design.items if item.image_id in needed]
    if not images:
        return []
    boxes = {s.source_id: (s, [extra[s.source_id].get(item.image_id, ()) for item in images]) for s in sources}
    return _plans(store, f"{name} (second pass)", images, boxes, params)


def _extraction_rows(step: str, cohort: str, reports: Sequence[ExtractionReport]) -> list[dict]:
    return [
        {
            "step": step,
            "cohort": cohort,
            "model": report.source_id,
            "units": report.units_total,
            "cache_hits": report.units_cached,
            "images_encoded": report.images_encoded,
            "seconds": round(report.seconds, 1),
        }
        for report in reports
    ]


def _reporting(
    cohort: str, fits: list[lp.PoolFit], resplit_fits: list[lp.PoolFit], settings: Settings, out: Collected
) -> None:
    """Operating points, size strata and the split comparison of one cohort's fits."""
    params = settings.params
    n_boot, seed = params.probe.n_boot, params.probe.seed
    started = time.perf_counter()
    with one_thread():
        points, gaps = operating_tables(fits, operating_settings(params))
        strata, strata_gaps = size_strata_tables(fits, settings.schemes, settings.power, n_boot, seed)
        compared = compare_splits(fits, resplit_fits, n_boot, seed)
    frames = {OPERATING: points, SENSITIVITY_GAPS: gaps, STRATA: strata, STRATA_GAPS: strata_gaps}
    for key, frame in {**frames, SPLIT_COMPARISON: compared}.items():
        out.reporting[key].append(frame.assign(cohort=cohort))
    seconds = round(time.perf_counter() - started, 1)
    out.timings.append(
        {"step": "operating points, size strata, split comparison", "cohort": cohort, "seconds": seconds}
    )


def _source(
    cohort: str,
    designs: tuple[LesionDesign, LesionDesign | None],
    source: FeatureSource,
    work: SourceWork,
    features: PooledFeatures,
    settings: Settings,
    out: Collected,
) -> tuple[list[lp.PoolFit], list[lp.PoolFit], list[lp.Skipped]]:
    """The probes of one source: the study's, the jittered patch-local ones, and the re-split's."""
    design, resplit = designs
    model, n_boot = source.source_id, settings.params.probe.n_boot
    started = time.perf_counter()
    # One thread, as in the probes stage: the numbers do not depend on the core count.
    with one_thread():
        found, skipped = lp.study_source(
            design, work.chosen, features, model=model, config=settings.config, n_boot=n_boot
        )
    out.timings.append({"step": "probes", "cohort": cohort, "model": model, "seconds": _since(started)})
    started = time.perf_counter()
    resplit_found: list[lp.PoolFit] = []
    with one_thread():
        if work.jitter is not None:
            jittered, missed = jitter_fits(work.jitter, features, model=model, config=settings.config, n_boot=n_boot)
            out.reporting[JITTER].append(jitter_frame(work.jitter, jittered).assign(cohort=cohort))
            skipped += missed
        if work.resplit is not None and resplit is not None:
            resplit_found, _ = lp.study_source(
                resplit, work.resplit, features, model=model, config=settings.config, n_boot=n_boot
            )
    out.timings.append(
        {"step": "jitter and re-split probes", "cohort": cohort, "model": model, "seconds": _since(started)}
    )
    return found, resplit_found, skipped


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 1)


@dataclass(frozen=True)
class LesionCohort:
    """One lesion cohort planned from its manifest alone: the design (and the re-split's), what each source pools,
    and the units of both passes."""

    name: str
    design: LesionDesign
    resplit: LesionDesign | None
    splits: pd.DataFrame  # splits_analysed
    work: dict[str, SourceWork]  # per source id
    first: JobSet
    second: JobSet | None  # the jittered and re-split boxes the first pass did not pool at

    @property
    def sets(self) -> list[JobSet]:
        return [self.first] if self.second is None else [self.first, self.second]


def plan_cohort(run: Run, name: str, records: Manifest, sources: Sequence[FeatureSource]) -> LesionCohort:
    params = run.params
    store = unit_store(run.catalog.units)
    design = _design(records, params)
    resplit_manifest = resplit_of(records, params, name)
    resplit = _design(resplit_manifest, params) if resplit_manifest is not None else None
    work = {s.source_id: _work(design, resplit, s, params) for s in sources}
    boxes = {s.source_id: (s, work[s.source_id].chosen.boxes) for s in sources}
    first = JobSet(name, tuple(_plans(store, name, design.items, boxes, params)))
    second = _second_plans(store, name, design, work, sources, params)
    return LesionCohort(
        name,
        design,
        resplit,
        splits_analysed(name, records, resplit_manifest),
        work,
        first,
        JobSet(f"{name} (second pass)", tuple(second)) if second else None,
    )


def lesion_cohorts(run: Run, sources: Sequence[FeatureSource]) -> list[LesionCohort]:
    return [plan_cohort(run, name, records, sources) for name, records in manifests(run, Analysis.LESIONS).items()]


def lesion_sets(run: Run, sources: Sequence[FeatureSource]) -> list[JobSet]:
    return [job_set for cohort in lesion_cohorts(run, sources) for job_set in cohort.sets]


def lesion_sources(params: Params, device: str, load: bool) -> list[FeatureSource]:
    """The encoders only (the raw pixels have no lesion analysis); none when no cohort enters the lesion study,
    so a run without one loads nothing."""
    return encoder_sources(params, device, load) if params.cohorts_for(Analysis.LESIONS) else []


LESION_UNITS = UnitStep(StageName.LESIONS, lesion_sources, lesion_sets)


def analyse_cohort(
    cohort: LesionCohort,
    reports: Sequence[Sequence[ExtractionReport]],
    store: Store,
    settings: Settings,
    out: Collected,
) -> bool:
    """Everything of one lesion cohort from its extracted units (``reports``: per job set of ``cohort.sets``);
    False when some units are not on disk yet (another shard's)."""
    name, design, work = cohort.name, cohort.design, cohort.work
    out.designs.append(lp.design_summary(design).assign(cohort=name))
    out.reporting[SPLITS_ANALYSED].append(cohort.splits)
    sources = [source for source, _ in cohort.first.jobs]
    out.excluded += [work[s.source_id].chosen.exclusions.assign(cohort=name) for s in sources]
    first_reports = reports[0]
    second_reports = reports[1] if cohort.second is not None else []
    out.timings += _extraction_rows("extraction", name, first_reports)
    out.timings += _extraction_rows("second-pass extraction (jittered and re-split boxes)", name, second_reports)
    if not all(r.complete for r in (*first_reports, *second_reports)):
        return False
    more = {source.source_id: plan for source, plan in (cohort.second.jobs if cohort.second else ())}
    fits, resplit_fits, skipped = [], [], []
    for source, plan in cohort.first.jobs:
        features = read_features(source, plan.units, store)
        if source.source_id in more:
            features = with_local(features, read_features(source, more[source.source_id].units, store))
        found, found_resplit, missed = _source(
            name, (design, cohort.resplit), source, work[source.source_id], features, settings, out
        )
        fits += found
        resplit_fits += found_resplit
        skipped += missed
    out.fits.append(lp.fits_frame(fits).assign(cohort=name))
    out.skipped.append(lp.skipped_frame(skipped).assign(cohort=name))
    started = time.perf_counter()
    lesions = settings.params.lesions
    tests = lp.paired_tests(fits, n_boot=lesions.n_boot, seed=lesions.seed, alpha=settings.params.probe.alpha)
    out.paired.append(tests.assign(cohort=name))
    out.timings.append({"step": "paired bootstrap", "cohort": name, "seconds": _since(started)})
    _reporting(name, fits, resplit_fits, settings, out)
    return True


def compute(run: Run) -> bool:
    done = run_step(run, LESION_UNITS)
    cohorts = lesion_cohorts(run, done.sources)
    settings = Settings.of(run.params)
    out = Collected()
    complete = True
    reports = iter(done.reports)  # one entry per job set, in lesion_sets' order
    for cohort in cohorts:
        complete &= analyse_cohort(cohort, [next(reports) for _ in cohort.sets], done.store, settings, out)
    write_output(run, StageName.LESIONS, TIMING, pd.DataFrame(out.timings))
    if not complete:
        return False
    outputs = {
        DESIGN: _first(pd.concat(out.designs, ignore_index=True)) if out.designs else pd.DataFrame(),
        EXCLUDED: pd.concat(out.excluded, ignore_index=True) if out.excluded else pd.DataFrame(),
        FITS: _first(_concat(out.fits, lp.fits_frame([]).assign(cohort=""))),
        SKIPPED: _concat(out.skipped, lp.skipped_frame([]).assign(cohort="")),
        PAIRED: _first(pd.concat(out.paired, ignore_index=True)) if out.paired else pd.DataFrame(),
    }
    for key, frames in out.reporting.items():
        outputs[key] = _first(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()
    for name, frame in outputs.items():
        write_output(run, StageName.LESIONS, name, frame)
    return True


def _concat(frames: list[pd.DataFrame], empty: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames or [empty], ignore_index=True)


def _first(frame: pd.DataFrame) -> pd.DataFrame:
    """The cohort column first."""
    return frame[["cohort", *[c for c in frame.columns if c != "cohort"]]]
