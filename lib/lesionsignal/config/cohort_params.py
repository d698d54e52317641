"""Cohort entries of a run configuration: the kinds of cohort, the analyses a cohort enters, and each cohort's
files and settings, validated as the parameter file is read (config.params holds the run around them)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from lesionsignal.core.validate import FieldError
from lesionsignal.demo.config import DemoCohortConfig


class CohortKind(enum.Enum):
    DEMO = "demo"  # rendered from the real chest CT (lesionsignal.demo)
    REAL_FILMS = "real_films"  # the 17 real films of the registry packages
    NIH = "nih"
    MIMIC = "mimic"
    INSTITUTIONAL = "institutional"
    CHESTXDET10 = "chestxdet10"


class Analysis(enum.Enum):
    PANEL = "panel"  # controlled-stimulus detection (clean vs perturbed)
    DISEASE = "disease"  # globally decided disease probes, and clean-vs-perturbed disease protocol
    LESIONS = "lesions"  # natural lesions with boxes (ChestX-Det10 analyses)
    LEARNING = "learning"  # the learning checks: each trained encoder against its random-init twin, clean films only


_COHORT_FILES: dict[CohortKind, tuple[str, ...]] = {
    CohortKind.DEMO: (),
    CohortKind.REAL_FILMS: (),
    CohortKind.NIH: ("csv", "image_dirs"),
    CohortKind.MIMIC: ("root", "metadata_csv", "chexpert_csv", "split_csv"),
    CohortKind.INSTITUTIONAL: ("csv", "root"),
    CohortKind.CHESTXDET10: ("train_json", "test_json", "image_dirs"),
}

# Fields no other kind reads: set on another kind, they would be ignored, so they are refused instead.
_CHESTXDET10_ONLY = ("name_map_jsons", "name_map_csv", "box_corners", "split")


@dataclass(frozen=True)
class DemoFilms:
    """A demo cohort's own generator settings where they differ from the run's ``demo_cohort`` section: a second
    demo cohort of other subjects (another seed), for instance the learning checks' own films."""

    n_images: int | None = None
    images_per_subject: int | None = None
    test_fraction: float | None = None
    seed: int | None = None

    def applied(self, base: DemoCohortConfig) -> DemoCohortConfig:
        """``base`` with the settings given here; DemoCohortConfig validates the result."""
        return replace(base, **{k: v for k, v in asdict(self).items() if v is not None})


@dataclass(frozen=True)
class CohortParams:
    """One cohort: where its files are, and which analyses it enters. Only the kind's own fields are needed."""

    name: str
    kind: CohortKind
    uses: tuple[Analysis, ...] = (Analysis.PANEL, Analysis.DISEASE)
    root: Path | None = None  # image folder (MIMIC: the files/ parent; institutional: images)
    csv: Path | None = None  # NIH Data_Entry_2017_v2020.csv, or the institutional cohort's CSV
    image_dirs: tuple[Path, ...] = ()  # NIH and ChestX-Det10 image folders; each image must lie in exactly one
    split_lists: tuple[Path, ...] = ()  # NIH official train_val_list.txt and test_list.txt (empty: grouped split)
    metadata_csv: Path | None = None  # MIMIC
    chexpert_csv: Path | None = None  # MIMIC
    split_csv: Path | None = None  # MIMIC
    subsample_manifest: Path | None = None  # MIMIC: the probe-training subsample of the official train split
    train_json: Path | None = None  # ChestX-Det10, either release (numeric or NIH file names)
    test_json: Path | None = None  # ChestX-Det10
    # ChestX-Det10, for numeric file names: the first-release train and test JSONs, which hold the same records in
    # the same order under NIH file names (matched record by record, syms and boxes checked); the NIH name gives
    # the patient id and the image file's name. Empty, with no name_map_csv: no patient ids (each image its own).
    name_map_jsons: tuple[Path, ...] = ()
    name_map_csv: Path | None = None  # ChestX-Det10: instead of name_map_jsons, a CSV with columns file_name, nih_name
    box_corners: Literal["inclusive", "half_open"] = "inclusive"  # ChestX-Det10: its x2, y2 are the last pixel inside
    # ChestX-Det10: the published split (the paper's; 271 patients cross it, reported), or a patient-disjoint re-split
    # at the official test size, drawn with `seed` (needs NIH names: the first release or a name map)
    split: Literal["official", "patient_disjoint"] = "official"
    window_columns: tuple[str, ...] = ()  # institutional: the (min, max) columns of each 16-bit image's window
    columns: dict[str, str] = field(default_factory=dict)  # institutional: path / patient_id / split / view -> column
    label_columns: dict[str, str] = field(default_factory=dict)  # institutional: label name -> CSV column
    split_map: dict[str, str] = field(default_factory=dict)  # institutional: rename split values, e.g. {val: train}
    lung_lesion_from: tuple[str, ...] = ("Mass", "Nodule")  # the paper's text; the authors' code used Nodule only
    n_images: int | None = None  # detection-set size drawn with default_rng(seed) (the study: 40,000); None: all
    test_fraction: float = 0.2
    seed: int = 42  # the detection-set draw; ChestX-Det10: the patient-disjoint re-split
    exclude_invalid: bool = False  # True: invalid rows go to an exclusion list beside the manifest instead of failing
    generator: DemoFilms | None = None  # demo: this cohort's own films, over the run's demo_cohort section

    def required_files(self) -> list[tuple[str, Path]]:
        """(field, path) of every input file or folder this kind reads."""
        pairs = []
        for name in _COHORT_FILES[self.kind]:
            value = getattr(self, name)
            if value is None or value == ():
                raise FieldError(name, f"required for a {self.kind.value} cohort")
            for i, path in enumerate(value if isinstance(value, tuple) else (value,)):
                pairs.append((f"{name}[{i}]" if isinstance(value, tuple) else name, path))
        for name in ("split_lists", "subsample_manifest", "name_map_jsons", "name_map_csv"):
            value = getattr(self, name)
            for i, path in enumerate(value if isinstance(value, tuple) else (() if value is None else (value,))):
                pairs.append((f"{name}[{i}]" if isinstance(value, tuple) else name, path))
        return pairs

    def __post_init__(self) -> None:
        self._check_chestxdet10()  # first: its hint for a misplaced root beats "image_dirs: required"
        if self.generator is not None and self.kind is not CohortKind.DEMO:
            raise FieldError("generator", f"only for demo cohorts (this one is {self.kind.value})")
        self.required_files()
        if self.n_images is not None and self.n_images < 4:
            raise FieldError("n_images", f"need at least 4 images, got {self.n_images}")
        if self.split_lists and len(self.split_lists) != 2:
            raise FieldError("split_lists", "give both train_val_list.txt and test_list.txt")
        unknown = sorted(set(self.columns) - {"path", "patient_id", "split", "view"})
        if unknown:
            raise FieldError("columns", f"unknown column roles {unknown} (known: path, patient_id, split, view)")
        if self.window_columns and len(self.window_columns) != 2:
            raise FieldError("window_columns", "give the window's minimum and maximum columns")

    def _check_chestxdet10(self) -> None:
        if self.kind is not CohortKind.CHESTXDET10:
            for item in fields(self):
                if item.name in _CHESTXDET10_ONLY and getattr(self, item.name) != item.default:
                    raise FieldError(item.name, f"only for chestxdet10 cohorts (this one is {self.kind.value})")
            return
        if self.root is not None:
            raise FieldError("root", "ChestX-Det10 images are found in image_dirs (one or more folders); move it there")
        if self.name_map_jsons and len(self.name_map_jsons) != 2:
            raise FieldError("name_map_jsons", "give the first-release train and test JSONs, in that order")
        if self.name_map_jsons and self.name_map_csv is not None:
            raise FieldError("name_map_csv", "give name_map_jsons or name_map_csv, not both")
