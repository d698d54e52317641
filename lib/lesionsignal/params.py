"""Run configurations: YAML files in params/ parsed into validated, frozen dataclasses before any compute.

Relative paths in a parameter file are relative to the project root (the folder holding pyproject.toml), so a
notebook opened from notebooks/ and `make` run from the root see the same files.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from lesionsignal.validate import FieldError, ParamsError, build

PERTURBATION_FAMILIES = ("geometric", "iso_blur", "directional_blur", "reticular", "ground_glass")


class RunKind(enum.Enum):
    """What a run is: its results are labelled with it everywhere they appear."""

    DEMO = "demo"  # embedded default: rendered demo cohort, random-init demo encoders
    SMOKE = "smoke"  # tiny, for tests
    STUDY = "study"  # real data and real weights: comparable with the paper


@dataclass(frozen=True)
class Paths:
    data_cache: Path = Path(".cache/data")  # registry packages extracted by `make data`
    work: Path = Path(".cache/work")  # content-addressed caches (cohorts, embeddings, probes)
    figures: Path = Path("figures")
    tables: Path = Path("tables")
    reports: Path = Path("reports")  # executed notebooks and the index page


@dataclass(frozen=True)
class PanelParams:
    canvas_size: int = 1024
    margin: float = 0.15  # the paper's central 70 %; the authors' final code used 0.20
    base_seed: int = 42
    conditions: tuple[str, ...] = ()  # empty: the whole 29-condition panel

    def __post_init__(self) -> None:
        if self.canvas_size < 64:
            raise FieldError("canvas_size", f"must be at least 64, got {self.canvas_size}")
        if not 0.0 <= self.margin < 0.5:
            raise FieldError("margin", f"must be in [0, 0.5), got {self.margin}")
        from lesionsignal.perturb import condition_names

        known = condition_names()
        for i, name in enumerate(self.conditions):
            if name not in known:
                raise FieldError(f"conditions[{i}]", f"unknown condition {name!r} (known: {', '.join(known)})")


@dataclass(frozen=True)
class GalleryParams:
    films: tuple[str, ...] = ("RG1_UNCR",)  # real-film ids (see lesionsignal.registry_data) shown in the gallery
    conditions: tuple[str, ...] = ()  # empty: every condition of the panel
    crop: int = 96  # side of the zoomed crop around the patch, in canvas pixels
    dpi: int = 110

    def __post_init__(self) -> None:
        if not self.films:
            raise FieldError("films", "name at least one film")
        if self.crop < 8:
            raise FieldError("crop", f"must be at least 8 px, got {self.crop}")


@dataclass(frozen=True)
class Params:
    name: str
    run: RunKind
    description: str = ""
    paths: Paths = field(default_factory=Paths)
    panel: PanelParams = field(default_factory=PanelParams)
    gallery: GalleryParams = field(default_factory=GalleryParams)
    source: str = ""  # the YAML file these came from

    @property
    def is_demo(self) -> bool:
        return self.run is not RunKind.STUDY

    @property
    def label(self) -> str:
        """Words that travel with every table and figure of this run."""
        if self.run is RunKind.STUDY:
            return f"{self.name}: study run (real data, real weights)"
        return (
            f"{self.name}: {self.run.value.upper()} run (rendered demo cohort and random-init demo encoders); "
            "numbers are not the paper's and are not comparable with it"
        )

    def digest(self) -> str:
        """Content hash of the parameters (not of the file name), for cache keys and provenance."""
        payload = asdict(self)
        payload.pop("source", None)
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def project_root(start: Path | None = None) -> Path:
    """The folder holding this project's pyproject.toml, searched upwards from ``start`` (default: cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and 'name = "lesionsignal"' in candidate.read_text():
            return folder
    raise FileNotFoundError(f"no lesionsignal project (pyproject.toml) found above {here}")


def load_params(path: str | Path) -> Params:
    """Parse and validate a parameter file; any problem raises ParamsError naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(path, "", "parameter file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(path, "", f"not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParamsError(path, "", "expected a mapping at the top level")
    if "source" in data:
        raise ParamsError(path, "source", "reserved key (set from the file name)")
    data = {**data, "source": str(path)}
    return build(Params, data, source=path)


def resolve(params: Params, relative: Path, root: Path | None = None) -> Path:
    """An absolute path for a path from the parameters."""
    if relative.is_absolute():
        return relative
    return (root or project_root()) / relative
