"""The demo encoder's training configuration (params/demo_encoder.yaml), validated before anything is rendered.

The trained encoder's registry id names where the model folder goes (its registry source) and which digest the
result must be given; the demo run's parameter file names the cohort whose subjects training must not see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lesionsignal.analysis.probe import ProbeConfig
from lesionsignal.config.params import read_params_file
from lesionsignal.core.validate import FieldError
from lesionsignal.training.recipe import Recipe


@dataclass(frozen=True)
class TrainingFilms:
    """The films DINO trains on: rendered by the demo-cohort generator with its own seed (so its own subjects)."""

    n_images: int = 2000
    images_per_subject: int = 2
    held_out_fraction: float = 0.1  # subjects kept out of training for the retrieval check
    seed: int = 2026
    workers: int = 2

    def __post_init__(self) -> None:
        if self.images_per_subject < 2:
            raise FieldError("images_per_subject", "must be at least 2 (the retrieval check pairs a subject's films)")
        if not 0.0 < self.held_out_fraction < 0.5:
            raise FieldError("held_out_fraction", f"must be in (0, 0.5), got {self.held_out_fraction}")
        if self.n_images < 4 or self.workers < 1:
            raise FieldError("n_images", "needs at least 4 films and 1 worker")


@dataclass(frozen=True)
class TrainingPaths:
    data_cache: Path = Path(".cache/data")  # the chest CT the films are rendered from (`make data`)
    cache: Path = Path(".cache/work")  # rendered films (cohorts/) and training checkpoints (training/)


@dataclass(frozen=True)
class Evaluation:
    """The trained encoder against its random-init twin on the training generator's own labels: linear disease
    probes fitted on the training films (folds grouped by subject), tested on the held-out subjects' films, and
    same-subject retrieval among those; paired intervals from resampling subjects."""

    twin_seed: int = 0  # the random-init twin (the registry entry whose twin_of names the trained encoder)
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    folds: int = 5
    n_boot: int = 1000
    seed: int = 42

    def __post_init__(self) -> None:
        self.probe_config()  # a bad C grid or fold count stops here, not after the training
        if self.n_boot < 1:
            raise FieldError("n_boot", f"must be at least 1, got {self.n_boot}")

    def probe_config(self) -> ProbeConfig:
        return ProbeConfig(c_grid=self.c_grid, folds=self.folds, seed=self.seed)


@dataclass(frozen=True)
class DemoEncoderParams:
    name: str
    encoder: str  # registry id of the trained encoder: its source is the model folder written
    demo_params: Path  # the demo run whose cohort's subjects training must not see
    films: TrainingFilms = field(default_factory=TrainingFilms)
    recipe: Recipe = field(default_factory=Recipe)
    paths: TrainingPaths = field(default_factory=TrainingPaths)
    evaluation: Evaluation = field(default_factory=Evaluation)
    source: str = ""


def load_training_params(path: str | Path) -> DemoEncoderParams:
    """Parse and validate a demo-encoder parameter file; a problem raises ParamsError naming the file and key."""
    return read_params_file(path, DemoEncoderParams)
