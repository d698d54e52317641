"""The preflight: everything a run needs, checked within seconds and before any heavy compute, every problem at once.

``make check PARAMS=...`` (``python -m lesionsignal.pipeline.preflight --params ...``), and the first step of
``make paper``, checks:
- the parameter file (keys, types, values);
- every input file and image folder the cohorts name;
- every cohort, read by its adapter and validated: images, patients and positives per split and label, lesion boxes
  per class and split, patients in both splits, exclusions;
- each encoder: known to the registry, its configuration on this machine (a local folder, or the hub cache);
- the device (GPU, its free memory against each encoder's weights) and the disk space for the caches;
- the plan: forward passes per encoder, and the time they take at the device's measured rate (a lower bound).
It writes ``preflight.json`` and ``preflight.md`` into the run's report folder, prints the summary, and exits
non-zero when any problem is fatal. Nothing is rendered, encoded or fitted: a demo cohort that is not rendered yet
is reported from its parameters.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from lesionsignal.config.execution import ClusterKind, ExecutorKind
from lesionsignal.config.params import (
    Analysis,
    CohortKind,
    CohortParams,
    EncoderParams,
    Params,
    load_params,
    project_root,
    shown_path,
)
from lesionsignal.core.errors import UserError, user_errors_exit
from lesionsignal.core.files import atomic_write_text
from lesionsignal.core.validate import ParamsError
from lesionsignal.data.canvas_store import canvas_bytes
from lesionsignal.data.manifest import MAX_SHOWN, Manifest, ManifestError
from lesionsignal.data.registry import ct_paths
from lesionsignal.data.summary import describe
from lesionsignal.data.validation import mixed_patients
from lesionsignal.demo.folder import output_paths
from lesionsignal.features.cost import DeviceSpeed, device_speed, encoder_cost
from lesionsignal.features.registry import EncoderSpec, precision_problem, resolve_spec
from lesionsignal.features.sources import check_source, hub_offline, is_remote
from lesionsignal.paper.outputs import frame_to_markdown
from lesionsignal.pipeline import cohorts as cohort_stage
from lesionsignal.pipeline.catalog import Catalog
from lesionsignal.pipeline.device_workers import planning_device
from lesionsignal.pipeline.embeddings import conditions, twin_pairs
from lesionsignal.pipeline.sources import device_for
from lesionsignal.pipeline.stage import Run

REPORT = "preflight"
POOLS_STORED = 3  # CLS, patch-mean and patch-local vectors kept per image and condition
RAW_WIDTH = 64 * 64 + 32 * 32  # the raw-pixel baselines: the 64 x 64 image and the 32 x 32 window
FLOAT_BYTES = 4
COPIES = 2  # the cached extraction units, and the per-condition files assembled from them


class Severity(enum.StrEnum):
    FATAL = "fatal"  # the run cannot succeed as configured
    WARNING = "warning"  # the run can succeed; the user should know
    NOTE = "note"  # how the run will go


@dataclass(frozen=True)
class Finding:
    severity: Severity
    where: str  # the parameter key, file or row
    message: str

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.where}: {self.message}"


@dataclass(frozen=True)
class EncoderPlan:
    encoder: str
    source: str
    dtype: str
    dim: int  # width of each stored vector
    forward_passes: int
    gflops_per_image: float | None
    parameters: int | None
    hours_at_measured_rate: float | None  # a lower bound: the model alone at the device's matrix-product rate


@dataclass
class Report:
    run: str
    label: str
    params_file: str
    findings: list[Finding] = field(default_factory=list)
    counts: list[dict] = field(default_factory=list)  # cohort, split, label, images, patients, positives
    boxes: list[dict] = field(default_factory=list)  # cohort, split, label, boxes, images
    encoders: list[EncoderPlan] = field(default_factory=list)
    device: DeviceSpeed | None = None
    disk: dict = field(default_factory=dict)

    def add(self, severity: Severity, where: str, message: str) -> None:
        self.findings.append(Finding(severity, where, message))

    @property
    def fatal(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.FATAL]

    def to_json(self) -> str:
        payload = asdict(self)
        payload["ok"] = not self.fatal
        return json.dumps(payload, indent=1, default=str) + "\n"

    def to_markdown(self) -> str:
        verdict = "FAILED: fix the fatal problems below" if self.fatal else "passed"
        title = f"{self.run} ({self.params_file})" if self.run else self.params_file
        parts = [f"# Preflight of {title}: {verdict}", ""] + ([f"_{self.label}_", ""] if self.label else [])
        parts += ["## Problems and notes", ""]
        parts += [f"- {f}" for f in self.findings] or ["- none"]
        for title, rows in (("Cohorts", self.counts), ("Lesion boxes", self.boxes)):
            if rows:
                parts += ["", f"## {title}", "", frame_to_markdown(pd.DataFrame(rows))]
        if self.encoders:
            parts += ["", "## Encoders and the plan", "", frame_to_markdown(pd.DataFrame(map(asdict, self.encoders)))]
            parts += ["_Hours: the model alone at the device's measured matrix-product rate; a lower bound._"]
        if self.device is not None:
            parts += ["", "## Device", "", frame_to_markdown(pd.DataFrame([asdict(self.device)]))]
        if self.disk:
            parts += ["", "## Disk", "", frame_to_markdown(pd.DataFrame([self.disk]))]
        return "\n".join(parts) + "\n"


def check(params_file: str | Path, root: Path, *, measure: bool = True) -> Report:
    """Every check of the run; problems become findings, never exceptions (a bug still raises)."""
    return _checked(params_file, root, measure)[0]


def check_and_write(params_file: str | Path, root: Path) -> tuple[Report, Params | None]:
    """The preflight with its report written into the run's report folder, and the parameters when they parse
    (read once for both, and for the caller that goes on to run)."""
    report, params = _checked(params_file, root, measure=True)
    if params is not None:
        write_report(report, Catalog(params, root).reports)
    return report, params


def _checked(params_file: str | Path, root: Path, measure: bool) -> tuple[Report, Params | None]:
    path = Path(params_file)
    try:
        params = load_params(path if path.is_absolute() else root / path)
    except ParamsError as err:
        report = Report("", "", err.source)
        for key, reason in err.problems:
            report.add(Severity.FATAL, f"{err.source}: {key or '<top level>'}", reason)
        return report, None
    run = Run(params, Catalog(params, root), progress=False)
    report = Report(params.name, params.label.text, params.source)
    missing = params.missing_files(root)
    for key, missing_path in missing:
        report.add(Severity.FATAL, key, f"{missing_path} does not exist")
    unreadable = {key.split(".", 1)[0] for key, _ in missing}  # "cohorts[i]"
    readable = {c.name for i, c in enumerate(params.cohorts) if f"cohorts[{i}]" not in unreadable}
    sizes = _check_cohorts(run, readable, report)
    _check_encoders(run, sizes, report, measure)
    _check_learning(params, report)
    return report, params


def _check_learning(params: Params, report: Report) -> None:
    """The learning checks compare trained encoders with their random-init twins: a learning cohort in a run
    without such a pair would have nothing to compare."""
    learning = params.cohorts_for(Analysis.LEARNING)
    if not learning:
        return
    try:
        pairs = twin_pairs(params)
    except (UserError, ValueError, FileNotFoundError):
        return  # an unknown encoder, already reported under encoders
    if not pairs:
        report.add(
            Severity.FATAL,
            f"cohort {learning[0].name}",
            "uses learning, but no encoder of the run is a trained encoder listed beside its random-init twin "
            "(e.g. demo-dino-vit and demo-dino-vit-random); add the pair or drop learning from uses",
        )


@dataclass(frozen=True)
class CohortSize:
    """A cohort's images: all of them (the lesion analysis reads every one) and its detection set (the panel's and
    the disease probes', ``n_images`` drawn from them)."""

    all: int
    detection: int

    @classmethod
    def of(cls, available: int, cohort: CohortParams) -> CohortSize:
        return cls(available, available if cohort.n_images is None else min(cohort.n_images, available))


def _check_cohorts(run: Run, readable: set[str], report: Report) -> dict[str, CohortSize]:
    """Counts of every readable cohort, and its size (all images, detection set)."""
    sizes: dict[str, CohortSize] = {}
    for cohort in run.params.cohorts:
        where = f"cohort {cohort.name}"
        if cohort.name not in readable:
            continue
        try:
            if cohort.kind is CohortKind.DEMO and not _demo_rendered(run, cohort):
                ct_paths(run.catalog.data_cache)  # what the rendering needs
                n = run.params.demo_config(cohort).n_images
                report.add(Severity.NOTE, where, f"not rendered yet: `make paper` renders {n} films first")
                sizes[cohort.name] = CohortSize.of(n, cohort)
                continue
            manifest, exclusions = cohort_stage.checked_cohort(run, cohort)
        except ManifestError as err:
            for problem in err.problems[:MAX_SHOWN]:
                where = f"{err.source} {problem.where}".strip()
                report.add(Severity.FATAL, where, f"{problem.image_id} {problem.reason}".strip())
            if len(err.problems) > MAX_SHOWN:
                report.add(Severity.FATAL, err.source, f"... and {len(err.problems) - MAX_SHOWN} more problems")
            continue
        except UserError as err:
            report.add(Severity.FATAL, where, str(err))
            continue
        if exclusions:
            first = "; ".join(f"{e.image_id}: {e.reason}" for e in exclusions[:3])
            report.add(Severity.WARNING, where, f"{len(exclusions)} image(s) excluded (exclude_invalid), e.g. {first}")
        shared = mixed_patients((r.patient_id for r in manifest.records), (r.split for r in manifest.records))
        if shared:
            report.add(Severity.NOTE, where, f"{len(shared)} patient(s) have images in more than one split")
        report.counts += [{"cohort": cohort.name, **row} for row in describe(manifest).to_dict("records")]
        report.boxes += _box_counts(cohort.name, manifest)
        sizes[cohort.name] = CohortSize.of(len(manifest.records), cohort)
    return sizes


def _demo_rendered(run: Run, cohort: CohortParams) -> bool:
    """The folder name carries the generator's digest, so finished outputs there are this cohort's."""
    return all(path.is_file() for path in output_paths(cohort_stage.demo_cohort_folder(run, cohort)).values())


def _box_counts(cohort: str, manifest: Manifest) -> list[dict]:
    boxes = manifest.boxes_frame()
    if boxes.empty:
        return []
    grouped = boxes.groupby(["split", "label"], sort=True)
    return [
        {"cohort": cohort, "split": split, "label": label, "boxes": len(part), "images": part["image_id"].nunique()}
        for (split, label), part in grouped
    ]


def _extraction_device(params: Params, report: Report) -> tuple[str | None, bool]:
    """The kind of device the units are computed on (it decides each encoder's precision), and whether this
    machine has one to measure. A Slurm array's tasks run on the cluster's devices, not on this machine's."""
    settings = params.extraction
    if settings.executor is ExecutorKind.LOCAL:
        try:
            return device_for(params), True
        except RuntimeError as err:
            report.add(Severity.FATAL, "extraction.device", str(err))
            return None, False  # the encoders are still checked; there is no rate to measure
    import torch

    gpus = settings.executor is ExecutorKind.GPUS
    kind = planning_device(settings) if gpus else settings.task_device
    here = kind == "cpu" or torch.cuda.is_available()
    if gpus and not here:
        report.add(Severity.FATAL, "extraction.executor", "gpus: no CUDA device visible here (extraction.devices)")
    return kind, here


def _check_encoders(run: Run, sizes: dict[str, CohortSize], report: Report, measure: bool) -> None:
    params = run.params
    device, here = _extraction_device(params, report)
    passes = _forward_passes(params, sizes)
    speeds: dict[str, DeviceSpeed] = {}
    for i, entry in enumerate(params.encoders):
        where = f"encoders[{i}] ({entry.id})"
        try:
            spec = resolve_spec(entry.id, source=entry.source, revision=entry.revision)
        except (UserError, ValueError, FileNotFoundError) as err:
            report.add(Severity.FATAL, where, str(err))
            continue
        _check_source(entry, spec, where, report)
        cost = encoder_cost(spec)
        dtype = "float32" if device == "cpu" else entry.dtype
        if device == "cpu" and entry.dtype != "float32":
            report.add(Severity.NOTE, where, f"dtype {entry.dtype} is a GPU setting: on the CPU it runs in float32")
        speed = speeds.get(dtype) or (device_speed(device, dtype) if measure and device and here else None)
        if speed is not None:
            speeds[dtype] = speed
            report.device = speed
        hours = None
        if cost is not None and speed is not None:
            hours = passes * cost.flops_per_image / speed.flops_per_second / 3600
            if speed.free_bytes is not None and cost.weight_bytes(dtype) > speed.free_bytes:
                report.add(
                    Severity.FATAL,
                    where,
                    f"weights need {cost.weight_bytes(dtype) / 2**30:.1f} GiB in {dtype}; "
                    f"the GPU has {speed.free_bytes / 2**30:.1f} GiB free",
                )
        report.encoders.append(
            EncoderPlan(
                entry.id,
                _shown_source(spec, run.catalog.root),
                dtype,
                spec.dim,
                passes,
                None if cost is None else round(cost.flops_per_image / 1e9, 3),
                None if cost is None else cost.parameters,
                None if hours is None else round(hours, 4),
            )
        )
    _check_disk(run, passes, _extracted_images(params, sizes), report)
    _check_execution(run, passes, report, measured=here)


def _check_execution(run: Run, passes: int, report: Report, measured: bool) -> None:
    """A Slurm array: whether sbatch is here, what each task does, and whether the time limit looks enough."""
    settings = run.params.extraction
    if settings.executor is not ExecutorKind.SLURM:
        return
    block = settings.slurm
    where = "extraction.slurm"
    if block.cluster is ClusterKind.SLURM and shutil.which("sbatch") is None:
        report.add(Severity.FATAL, f"{where}.cluster", "no sbatch on this machine: run from a Slurm login node")
    at_once = f"at most {block.max_parallel} at once" if block.max_parallel else "as many at once as the queue allows"
    report.add(
        Severity.NOTE,
        where,
        f"{block.tasks} array tasks ({at_once}), each about {-(-passes // block.tasks):,} forward passes per encoder "
        f"on {block.gpus_per_task} GPU, {block.cpus_per_task} CPUs and {block.memory} for at most {block.time}; "
        f"a task past its time is requeued up to {block.max_requeues} times and resumes from its finished units",
    )
    if not measured:
        report.add(Severity.NOTE, where, "no GPU here to measure a rate: `make check` on a GPU node gives the hours")
        return
    slowest = max((plan.hours_at_measured_rate or 0.0 for plan in report.encoders), default=0.0)
    per_task = sum(plan.hours_at_measured_rate or 0.0 for plan in report.encoders) / block.tasks
    if per_task * 60 > block.minutes:
        report.add(
            Severity.WARNING,
            f"{where}.time",
            f"each task needs at least {per_task:.2f} h of model time at this machine's rate ({slowest:.2f} h for "
            f"the slowest encoder over all tasks) but has {block.time}: raise slurm.time or slurm.tasks",
        )


def _shown_source(spec: EncoderSpec, root: Path) -> str:
    """A local folder relative to the checkout (the report goes into pages), else the source as named."""
    if spec.random_init or is_remote(spec):
        return spec.source
    return shown_path(Path(spec.source), root)


def _check_source(entry: EncoderParams, spec: EncoderSpec, where: str, report: Report) -> None:
    """Is the source on this machine, and do its configurations agree with the registry? Is its precision allowed?"""
    found = check_source(spec)
    for mismatch in found.mismatches:
        report.add(Severity.FATAL, where, mismatch)
    if found.missing:
        offline = is_remote(spec) and hub_offline()
        severity = Severity.FATAL if offline or not is_remote(spec) else Severity.WARNING
        fetch = ""
        if is_remote(spec):
            fetch = " (the hub is offline: HF_HUB_OFFLINE is set)" if offline else " (the run will download it)"
        report.add(severity, where, "; ".join(found.missing) + fetch)
    refused = precision_problem(spec, entry.dtype)
    if refused:
        report.add(Severity.FATAL, f"{where}.dtype", refused)


def _forward_passes(params: Params, sizes: dict[str, CohortSize]) -> int:
    """Per encoder: each panel image (the detection set) once clean and once per condition, each lesion image (all
    of the cohort) once, and once more when the box jitter or the split comparison may need boxes the first pass did
    not pool at (an upper bound). A cohort that could not be read counts with its planned ``n_images`` (0 when it
    has none)."""
    n_conditions = len(conditions(params))
    panel = sum(_size(c, sizes).detection for c in params.cohorts_for(Analysis.PANEL)) * (1 + n_conditions)
    clean = sum(_size(c, sizes).detection for c in params.clean_only_cohorts())
    lesions = sum(_size(c, sizes).all for c in params.cohorts_for(Analysis.LESIONS))
    return panel + clean + lesions * (2 if params.lesions.second_pass else 1)


def _extracted_images(params: Params, sizes: dict[str, CohortSize]) -> int:
    """Images the extraction decodes (the canvas store keeps each once): a lesion cohort's every image, a panel
    cohort's (or a clean-only learning cohort's) detection set."""
    lesion = {c.name for c in params.cohorts_for(Analysis.LESIONS)}
    panel, lesions = params.cohorts_for(Analysis.PANEL), params.cohorts_for(Analysis.LESIONS)
    extracted = (*panel, *params.clean_only_cohorts(), *lesions)
    cohorts = {c.name: c for c in extracted}
    return sum(_size(c, sizes).all if name in lesion else _size(c, sizes).detection for name, c in cohorts.items())


def _size(cohort: CohortParams, sizes: dict[str, CohortSize]) -> CohortSize:
    planned = cohort.n_images or 0
    return sizes.get(cohort.name, CohortSize(planned, planned))


def _check_disk(run: Run, passes: int, images: int, report: Report) -> None:
    cache = run.catalog.cache
    existing = next(p for p in (cache, *cache.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    widths = sum(POOLS_STORED * plan.dim for plan in report.encoders) + RAW_WIDTH
    vectors = passes * widths * FLOAT_BYTES * COPIES
    stored = run.params.extraction.canvas_store
    canvases = canvas_bytes(images, run.params.panel.canvas_size) if stored else 0
    report.disk = {
        "cache": str(run.params.paths.cache),
        "free_gib": round(free / 2**30, 2),
        "estimated_vectors_gib": round(vectors / 2**30, 3),
        "canvas_store_gib": round(canvases / 2**30, 3),
    }
    needed = vectors + canvases
    if needed > free:
        what = f"about {vectors / 2**30:.1f} GiB of vectors"
        if canvases:
            what += f" and {canvases / 2**30:.1f} GiB of decoded canvases (extraction.canvas_store: false saves them)"
        report.add(Severity.FATAL, "paths.cache", f"{what} to store; {free / 2**30:.1f} GiB free")


def write_report(report: Report, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{REPORT}.json", folder / f"{REPORT}.md"
    atomic_write_text(json_path, report.to_json())
    atomic_write_text(md_path, report.to_markdown())
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lesionsignal.pipeline.preflight", description=__doc__)
    parser.add_argument("--params", required=True)
    parser.add_argument("--verbose", action="store_true", help="show the traceback of a user error")
    args = parser.parse_args(argv)
    return user_errors_exit(lambda: _run(args.params), verbose_flag=args.verbose)


def _run(params_file: str) -> int:
    root = project_root()
    report, params = check_and_write(params_file, root)
    print(report.to_markdown())
    if params is not None:
        print(f"written: {os.path.relpath(Catalog(params, root).reports / f'{REPORT}.md', root)}")
    return 1 if report.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
