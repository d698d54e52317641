"""Run configurations: YAML files in params/ parsed into validated, frozen dataclasses before any compute.

Relative paths in a parameter file are relative to the project root (the folder holding pyproject.toml), so a
notebook opened from notebooks/ and `make` run from the root see the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import yaml

from lesionsignal.config.cohort_params import Analysis, CohortKind, CohortParams
from lesionsignal.config.execution import ExecutorKind, SlurmParams, check_devices
from lesionsignal.core.kinds import RunKind
from lesionsignal.core.validate import FieldError, ParamsError, build
from lesionsignal.demo.config import DemoCohortConfig
from lesionsignal.demo.overlap import shared_subjects
from lesionsignal.paper.outputs import RunLabel
from lesionsignal.paper.registry import SFDI_PANEL
from lesionsignal.stimuli.convention import Convention, PanelSwitches
from lesionsignal.stimuli.panel import (
    Condition,
    Family,
    PanelError,
    all_condition_names,
    condition_names,
    resolve_panel,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Paths:
    data_cache: Path = Path(".cache/data")  # registry packages extracted by `make data`
    cache: Path = Path(".cache/work")  # content-addressed caches any run may share (cohorts, units, probes)
    work: Path = Path(".cache/work")  # this run's stage outputs (runs/<run name>/<stage>/)
    figures: Path = Path("figures")
    tables: Path = Path("tables")
    reports: Path = Path("reports")  # executed notebooks and the index page


@dataclass(frozen=True)
class PanelParams:
    canvas_size: int = 1024
    margin: float = 0.15  # the paper's central 70 %; the authors' final code used 0.20
    base_seed: int = 42
    conditions: tuple[str, ...] = ()  # empty: the whole 29-condition panel
    # families the paper did not test (quantum_noise, jpeg, line_streak), added to the panel when listed here
    extra_families: tuple[Family, ...] = ()
    # spec: the protocol text; authors: the authors' code pixel for pixel (docs/PROTOCOL.md section 2)
    convention: Convention = Convention.SPEC
    switches: dict[str, str] = field(default_factory=dict)  # single switches set apart from the convention

    def resolved_switches(self) -> PanelSwitches:
        """The convention's switches with this run's overrides."""
        return PanelSwitches.for_convention(self.convention).with_overrides(self.switches)

    def chosen(self) -> list[Condition]:
        """The run's conditions: ``conditions`` (empty: the paper's 29), then the switched-on extra families'."""
        return resolve_panel(self.conditions, self.extra_families)

    def __post_init__(self) -> None:
        try:
            self.resolved_switches()
        except PanelError as err:
            raise FieldError("switches", str(err)) from None
        if self.canvas_size < 64:
            raise FieldError("canvas_size", f"must be at least 64, got {self.canvas_size}")
        if not 0.0 <= self.margin < 0.5:
            raise FieldError("margin", f"must be in [0, 0.5), got {self.margin}")
        known = all_condition_names()
        for i, name in enumerate(self.conditions):
            if name not in known:
                raise FieldError(f"conditions[{i}]", f"unknown condition {name!r} (known: {', '.join(known)})")
        try:
            self.chosen()
        except PanelError as err:
            raise FieldError("extra_families", str(err)) from None


@dataclass(frozen=True)
class GalleryParams:
    films: tuple[str, ...] = ("RG1_UNCR",)  # real-film ids (see lesionsignal.data.registry) shown in the gallery
    conditions: tuple[str, ...] = ()  # empty: every condition of the panel
    crop: int = 96  # side of the zoomed crop around the patch, in canvas pixels

    def __post_init__(self) -> None:
        if not self.films:
            raise FieldError("films", "name at least one film")
        if self.crop < 8:
            raise FieldError("crop", f"must be at least 8 px, got {self.crop}")


@dataclass(frozen=True)
class FigureParams:
    dpi: int = 110  # of every PNG the run writes

    def __post_init__(self) -> None:
        if self.dpi < 20:
            raise FieldError("dpi", f"must be at least 20, got {self.dpi}")


@dataclass(frozen=True)
class EncoderParams:
    """One encoder: a registry id (lesionsignal.features.registry), optionally from a local folder or another hub id."""

    id: str
    source: str | None = None  # hub id or local directory; None: the registry's hub id
    revision: str | None = None  # pinned hub revision (commit) for reproducibility
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # half precision is for GPUs
    batch_size: int = 16
    seed: int = 0  # random-init demo encoders only

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise FieldError("batch_size", f"must be positive, got {self.batch_size}")


@dataclass(frozen=True)
class ExtractionParams:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 2  # threads preparing images while the model runs
    chunk_size: int = 64  # images per cached unit: the most a crash can lose
    canvas_store: bool = True  # keep decoded canvases on disk (1 MiB per image at 1024 px) for later runs and shards
    shard_index: int = 0
    shard_count: int = 1
    executor: ExecutorKind = ExecutorKind.LOCAL  # where the units are computed (config.execution)
    devices: tuple[str, ...] = ()  # gpus executor: one worker per entry (cuda:0, cpu, ...); empty: every CUDA device
    slurm: SlurmParams = field(default_factory=SlurmParams)  # slurm executor: the job array

    def __post_init__(self) -> None:
        if not 0 <= self.shard_index < self.shard_count:
            raise FieldError("shard_index", f"need 0 <= shard_index < shard_count, got {self.shard_index}")
        if self.chunk_size < 1 or self.workers < 1:
            raise FieldError("chunk_size", "chunk_size and workers must be positive")
        if self.devices and self.executor is not ExecutorKind.GPUS:
            raise FieldError("devices", f"only the gpus executor reads it (executor is {self.executor.value})")
        check_devices(self.devices, self.device)
        if self.executor is ExecutorKind.SLURM:
            if self.shard_count != 1:
                raise FieldError(
                    "shard_count", "the slurm executor shards by itself (slurm.tasks); leave shard_index and "
                    "shard_count out"
                )  # fmt: skip
            if self.device == "cuda" and self.slurm.gpus_per_task == 0:
                raise FieldError("slurm.gpus_per_task", "extraction.device is cuda: each task needs a GPU (1)")

    @property
    def task_device(self) -> str:
        """The kind of device a Slurm array task extracts on (what decides each encoder's precision)."""
        if self.device != "auto":
            return self.device
        return "cuda" if self.slurm.gpus_per_task > 0 else "cpu"


@dataclass(frozen=True)
class ProbeParams:
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # the authors' code; the paper's text lost the grid
    folds: int = 5
    seed: int = 42
    max_iter: int = 2000
    solver: Literal["fast", "sklearn"] = "fast"
    n_boot: int = 1000
    paired_n_boot: int = 10000  # clean-vs-perturbed deltas: with 1,000, no cell could pass BH over 81 cells
    n_perm: int = 5000
    alpha: float = 0.05
    workers: int = 2  # probe processes (each single-threaded: small probes run faster one thread each)
    finetuned_cnn: bool = True  # the fine-tuned CNN pixel-signal ceiling
    cnn_epochs: int = 3

    def __post_init__(self) -> None:
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise FieldError("c_grid", f"need positive C values, got {list(self.c_grid)}")
        if self.folds < 2:
            raise FieldError("folds", f"need at least 2 folds, got {self.folds}")


@dataclass(frozen=True)
class OperatingPointParams:
    """Sensitivity at fixed specificities and PPV / NPV for every probe (docs/PROTOCOL.md section 6.1)."""

    specificities: tuple[float, ...] = (0.90, 0.95)  # thresholds chosen on out-of-fold training scores
    prevalence: float = 0.03  # for PPV / NPV: small lesions in a screening cohort are a few percent of films
    n_boot: int = 1000  # resamples of the training and the test rows (the seed is probe.seed)

    def __post_init__(self) -> None:
        if not self.specificities:
            raise FieldError("specificities", "name at least one target specificity")
        for i, value in enumerate(self.specificities):
            if not 0.0 < value < 1.0:
                raise FieldError(f"specificities[{i}]", f"must lie strictly between 0 and 1, got {value}")
        if len(set(self.specificities)) != len(self.specificities):
            raise FieldError("specificities", f"values repeat: {list(self.specificities)}")
        if not 0.0 < self.prevalence < 1.0:
            raise FieldError("prevalence", f"must lie strictly between 0 and 1 (a fraction), got {self.prevalence}")
        if self.n_boot < 1:
            raise FieldError("n_boot", f"must be positive, got {self.n_boot}")


@dataclass(frozen=True)
class LesionParams:
    classes: tuple[str, ...] = ("Calcification", "Nodule", "Mass")
    negatives_per_positive: int = 2
    negative_placement: Literal["same_position", "uniform"] = "same_position"  # the authors: uniform
    n_boot: int = 10000
    seed: int = 42  # negatives' images and (uniform) positions, the paired bootstrap, the box jitter's draws
    # size strata beyond the median split: each entry cuts the test positives' areas at these percentiles
    size_strata: tuple[tuple[float, ...], ...] = ((0.5,), (1 / 3,), (2 / 3,), (1 / 3, 2 / 3))
    power_alpha: float = 0.05  # the detectable AUC differences of the strata: two-sided level ...
    power: float = 0.8  # ... and power
    jitter: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)  # box jitter of the patch-local probe, in encoder patches
    # an official split that shares patients (ChestX-Det10's) is also analysed re-split by patient, side by side
    compare_splits: bool = True

    @property
    def second_pass(self) -> bool:
        """Whether the lesion images may be encoded once more, for boxes the official design does not pool at."""
        return any(j > 0 for j in self.jitter) or self.compare_splits

    def __post_init__(self) -> None:
        for i, cuts in enumerate(self.size_strata):
            if not cuts or any(not 0.0 < c < 1.0 for c in cuts) or list(cuts) != sorted(set(cuts)):
                raise FieldError(f"size_strata[{i}]", f"need increasing fractions inside (0, 1), got {list(cuts)}")
        if not 0.0 < self.power_alpha < 1.0:
            raise FieldError("power_alpha", f"must lie strictly between 0 and 1, got {self.power_alpha}")
        if not 0.0 < self.power < 1.0:
            raise FieldError("power", f"must lie strictly between 0 and 1, got {self.power}")
        for i, level in enumerate(self.jitter):
            if level < 0:
                raise FieldError(f"jitter[{i}]", f"a jitter is a non-negative number of patches, got {level}")
        if len(set(self.jitter)) != len(self.jitter):
            raise FieldError("jitter", f"values repeat: {list(self.jitter)}")


@dataclass(frozen=True)
class SfdiParams:
    panel: tuple[str, ...] = SFDI_PANEL  # the paper's T12 panel


@dataclass(frozen=True)
class SeparationParams:
    conditions: tuple[str, ...] = ()  # empty: every extracted condition
    silhouette_points: int = 5000
    umap_points: int = 10000
    n_neighbors: int = 30
    min_dist: float = 0.1
    shrink: float = 0.1
    seed: int = 42


@dataclass(frozen=True)
class DepthParams:
    """Section 07: where in the forward pass the signal is lost, and whether the model finds the region itself.

    Only a subset is read at every block and keeps its last token grid (half precision): ``panel_images`` images of
    each panel cohort's detection set under ``conditions``, and ``lesion_images`` of each lesion cohort."""

    conditions: tuple[str, ...] = ()  # panel conditions read at every block; empty: no panel part
    panel_images: int = 200  # of the detection set, drawn with ``seed`` (train / test as the cohort splits them)
    lesion_images: int | None = None  # of each lesion cohort; None: every image
    roi_tokens: int = 4  # tokens a model-chosen ROI keeps
    mil_pool: Literal["max", "top_k"] = "top_k"  # the MIL scorer's image score
    mil_top_k: int = 4
    mil_l2: float = 1e-2
    attentive_weight_decays: tuple[float, ...] = (1e-3, 1e-1)  # chosen by the probe's grouped CV
    knn_k: tuple[int, ...] = (5, 15, 45)  # chosen by the probe's grouped CV
    fit_steps: int = 50  # L-BFGS iterations of the attentive probe and the MIL scorer
    native_conditions: tuple[str, ...] = ()  # drawn at each encoder's native resolution; empty: no native part
    native_images: int | None = None  # of the detection set; None: all of it
    seed: int = 42  # the subsets, and the borrowed boxes of the box cohort's negatives

    def __post_init__(self) -> None:
        known = condition_names()
        for key in ("conditions", "native_conditions"):
            for i, name in enumerate(getattr(self, key)):
                if name not in known:
                    raise FieldError(f"{key}[{i}]", f"unknown condition {name!r} (known: {', '.join(known)})")
        for key in ("panel_images", "lesion_images", "native_images"):
            value = getattr(self, key)
            if value is not None and value < 8:
                raise FieldError(key, f"need at least 8 images, got {value}")
        for key in ("roi_tokens", "mil_top_k", "fit_steps"):
            if getattr(self, key) < 1:
                raise FieldError(key, f"must be at least 1, got {getattr(self, key)}")
        if not self.mil_l2 >= 0:
            raise FieldError("mil_l2", f"must be non-negative, got {self.mil_l2}")
        if not self.attentive_weight_decays or any(not w > 0 for w in self.attentive_weight_decays):
            raise FieldError(
                "attentive_weight_decays", f"need positive values, got {list(self.attentive_weight_decays)}"
            )
        if not self.knn_k or any(k < 1 for k in self.knn_k):
            raise FieldError("knn_k", f"need positive neighbour counts, got {list(self.knn_k)}")


@dataclass(frozen=True)
class Params:
    name: str
    run: RunKind
    description: str = ""
    paths: Paths = field(default_factory=Paths)
    panel: PanelParams = field(default_factory=PanelParams)
    gallery: GalleryParams = field(default_factory=GalleryParams)
    figures: FigureParams = field(default_factory=FigureParams)
    demo_cohort: DemoCohortConfig = field(default_factory=DemoCohortConfig)  # the rendered demo cohort's generator
    cohorts: tuple[CohortParams, ...] = ()
    encoders: tuple[EncoderParams, ...] = ()
    extraction: ExtractionParams = field(default_factory=ExtractionParams)
    probe: ProbeParams = field(default_factory=ProbeParams)
    operating_points: OperatingPointParams = field(default_factory=OperatingPointParams)
    lesions: LesionParams = field(default_factory=LesionParams)
    sfdi: SfdiParams = field(default_factory=SfdiParams)
    separation: SeparationParams = field(default_factory=SeparationParams)
    depth: DepthParams = field(default_factory=DepthParams)  # section 07
    source: str = ""  # the YAML file these came from

    @property
    def label(self) -> RunLabel:
        """Words that travel with every table and figure of this run."""
        if self.run.comparable_with_paper:
            text = f"{self.name}: study run (real data, real weights)"
        else:
            text = (
                f"{self.name}: {self.run.value.upper()} run (rendered demo cohort, small demo encoders); "
                "numbers are not the paper's and are not comparable with it"
            )
        return RunLabel(self.name, self.run, text)

    def __post_init__(self) -> None:
        for group in ("cohorts", "encoders"):
            names = [getattr(item, "name", None) or item.id for item in getattr(self, group)]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise FieldError(group, f"names must be unique, repeated: {repeated}")
        self._check_demo_cohorts()

    def _check_demo_cohorts(self) -> None:
        """Each demo cohort's generator is valid, and two demo cohorts of other films share no subject (a subject
        in both would tie the cohorts' results together)."""
        configs: dict[DemoCohortConfig, tuple[int, str]] = {}
        for i, cohort in enumerate(self.cohorts):
            if cohort.kind is not CohortKind.DEMO:
                continue
            try:
                config = self.demo_config(cohort)
            except FieldError as err:
                raise FieldError(f"cohorts[{i}].generator.{err.field}", err.reason) from None
            for other, (j, name) in configs.items():
                shared = [] if other == config else shared_subjects(config, other)
                if shared:
                    raise FieldError(
                        f"cohorts[{i}].generator",
                        f"cohort {cohort.name!r} would draw {len(shared)} subjects of cohort {name!r} (cohorts[{j}]): "
                        "give it a seed of its own",
                    )
            configs.setdefault(config, (i, cohort.name))

    def cohort(self, name: str) -> CohortParams:
        for cohort in self.cohorts:
            if cohort.name == name:
                return cohort
        raise KeyError(f"{self.source}: no cohort named {name!r} (have: {[c.name for c in self.cohorts]})")

    def cohorts_for(self, analysis: Analysis) -> list[CohortParams]:
        return [c for c in self.cohorts if analysis in c.uses]

    def clean_only_cohorts(self) -> list[CohortParams]:
        """Cohorts extracted clean only: those of the learning checks that the panel does not extract."""
        return [c for c in self.cohorts_for(Analysis.LEARNING) if Analysis.PANEL not in c.uses]

    def demo_config(self, cohort: CohortParams) -> DemoCohortConfig:
        """The generator of a demo cohort: the demo_cohort section, with the cohort's own ``generator`` settings."""
        if cohort.kind is not CohortKind.DEMO:
            raise ValueError(f"cohort {cohort.name!r} is a {cohort.kind.value} cohort, not a demo cohort")
        return self.demo_cohort if cohort.generator is None else cohort.generator.applied(self.demo_cohort)

    def missing_files(self, root: Path | None = None) -> list[tuple[str, Path]]:
        """(key, path) of every input file or folder the parameters name that does not exist."""
        return [
            (f"cohorts[{i}].{key}", path)
            for i, cohort in enumerate(self.cohorts)
            for key, path in cohort.required_files()
            if not resolve(path, root).exists()
        ]

    def check_files(self, root: Path | None = None) -> None:
        """Every input file the parameters name must exist: checked before any compute, all at once."""
        missing = self.missing_files(root)
        if missing:
            listed = [f"{key}: {path} does not exist" for key, path in missing]
            raise ParamsError(
                self.source,
                missing[0][0],
                f"{len(missing)} input file(s) missing (relative paths start at the project root; correct them "
                "in the parameter file or put the data there):\n  " + "\n  ".join(listed),
            )

    def digest(self) -> str:
        """Content hash of the parameters (not of the file name), for cache keys and provenance."""
        payload = asdict(self)
        payload.pop("source", None)
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def results_digest(self) -> str:
        """Hash of the settings that can change a number: everything but how fast and how it is shown."""
        payload = asdict(self)
        for section, keys in _NOT_RESULTS.items():
            if not keys:
                payload.pop(section, None)
            for key in keys:
                payload[section].pop(key, None)
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Settings that change speed or presentation, never a result: shards, workers and executors are proven to give the
# same bytes (tests/test_executors.py).
_NOT_RESULTS: dict[str, tuple[str, ...]] = {
    "source": (),
    "description": (),
    "gallery": (),
    "figures": (),
    "demo_cohort": ("workers",),
    "extraction": ("workers", "shard_index", "shard_count", "executor", "devices", "slurm"),
    "probe": ("workers",),
}


ROOT_VARIABLE = "LESIONSIGNAL_ROOT"


def _is_project(folder: Path) -> bool:
    candidate = folder / "pyproject.toml"
    return candidate.is_file() and 'name = "lesionsignal"' in candidate.read_text()


def _search_up(start: Path) -> Path | None:
    here = start.resolve()
    return next((folder for folder in (here, *here.parents) if _is_project(folder)), None)


def project_root(start: Path | None = None) -> Path:
    """The folder holding this project's pyproject.toml, wherever the process was started.

    Searched upwards from ``start`` when given; otherwise ``$LESIONSIGNAL_ROOT``, then the checkout this package
    is installed from (``make setup`` installs it editable), then the working directory. So a kernel started in
    notebooks/, in the root, or in a temporary folder finds the same parameter files.
    """
    if start is not None:
        found = _search_up(start)
        if found is None:
            raise FileNotFoundError(f"no lesionsignal project (pyproject.toml) found above {start}")
        return found
    override = os.environ.get(ROOT_VARIABLE)
    if override:
        if not _is_project(Path(override)):
            raise FileNotFoundError(f"${ROOT_VARIABLE}={override} is not a lesionsignal project (no pyproject.toml)")
        return Path(override).resolve()
    found = _search_up(Path(__file__).parent) or _search_up(Path.cwd())
    if found is None:
        raise FileNotFoundError(
            f"no lesionsignal project found above the package ({Path(__file__).parent}) or the working directory "
            f"({Path.cwd()}); set ${ROOT_VARIABLE} to the checkout"
        )
    return found


def shown_path(path: Path, root: Path | None = None) -> str:
    """A path as messages and logs show it: relative to the project root when inside it, so no output carries the
    machine's folders; a path elsewhere (the user's data) as given."""
    try:
        root = (root or project_root()).resolve()
    except FileNotFoundError:
        return str(path)
    absolute = path if path.is_absolute() else Path.cwd() / path
    try:
        return absolute.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def load_params(path: str | Path) -> Params:
    """Parse and validate a run's parameter file; any problem raises ParamsError naming the file and the key."""
    return read_params_file(path, Params)


def read_params_file(path: str | Path, cls: type[T]) -> T:
    """A YAML parameter file as dataclass ``cls`` (its ``source`` field set from the file name), validated."""
    path = Path(path)
    shown = shown_path(path)
    if not path.is_file():
        shipped = sorted(p.name for p in (path.parent.glob("*.yaml") if path.parent.is_dir() else ()))
        others = f" (that folder has: {', '.join(shipped)})" if shipped else ""
        raise ParamsError(
            shown, "", f"parameter file not found{others}; a relative path is taken from the project root"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(shown, "", f"not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParamsError(shown, "", "expected a mapping at the top level")
    if "source" in data:
        raise ParamsError(shown, "source", "reserved key (set from the file name)")
    return build(cls, {**data, "source": shown}, source=shown)


def resolve(relative: Path, root: Path | None = None) -> Path:
    """An absolute path for a path from a parameter file (relative ones are taken from the project root)."""
    if relative.is_absolute():
        return relative
    return (root or project_root()) / relative
