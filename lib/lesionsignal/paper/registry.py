"""The paper's tables in one place: which conditions each uses, and where its reported values are.

Every other module asks this registry which conditions make a table (T3's six geometric patterns, T9's nine
protocol perturbations, T12's SFDI panel, ...) rather than keeping its own list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

GEOMETRIC = ("C1", "C2", "L4", "L8", "S4", "S8")
ISO_BLUR = ("iso_blur_4", "iso_blur_8")
DIRECTIONAL_REPRESENTATIVE = ("dir_cranio_L21_P64", "dir_lateral_L21_P64")  # the paper's T5 cell: L 21, P 64
PATHOLOGY = ("reticular_fine_32", "reticular_coarse_64", "ground_glass_64")
POOLING_SLICE = ("iso_blur_4", "dir_cranio_L21_P64", "reticular_fine_32")  # the paper's T7 rows
RAW_SLICE = ("iso_blur_4", "iso_blur_8", "dir_cranio_L21_P64", "reticular_fine_32", "ground_glass_64")  # T8 rows
# The clean-vs-perturbed disease protocol: iso 4 and 8, directional cranio-caudal and lateral at P 32 and 64 (L 21),
# reticular fine 32, reticular coarse 64, ground glass 64.
T9_CONDITIONS = (
    "iso_blur_4",
    "iso_blur_8",
    "dir_cranio_L21_P32",
    "dir_cranio_L21_P64",
    "dir_lateral_L21_P32",
    "dir_lateral_L21_P64",
    "reticular_fine_32",
    "reticular_coarse_64",
    "ground_glass_64",
)
# T12: inferred from the authors' outputs (the paper's text does not list it); a parameter (sfdi.panel).
SFDI_PANEL = ("C1", "C2", "L4", "L8", "S4", "S8", "iso_blur_4", "iso_blur_8", "reticular_fine_32", "ground_glass_64")
# UMAP panels when the parameters name none: the smallest drawn pattern and the largest diffuse one, so a figure
# shows both ends of the panel without drawing all of it (UMAP takes seconds per panel).
UMAP_CONDITIONS = ("S8", "ground_glass_64")

DETECTION_KEYS = ("model", "dataset", "pool", "perturbation")


def significant_column(alpha: float) -> str:
    return f"cells_significant_bh_{alpha:g}"


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper: the conditions it is made of (empty: none, or not a panel table) and, where the
    paper reports values, the file holding them with the key columns and the value column to compare."""

    id: str
    title: str
    conditions: tuple[str, ...] = ()
    reported: str | None = None  # CSV in resources/paper_reference/
    keys: tuple[str, ...] = DETECTION_KEYS
    value: str = "auc"


def _tables(*tables: PaperTable) -> Mapping[str, PaperTable]:
    return MappingProxyType({t.id: t for t in tables})


TABLES: Mapping[str, PaperTable] = _tables(
    PaperTable("T2", "disease classification", (), "table02_disease_classification.csv", ("task", "model", "dataset")),
    PaperTable("T3", "geometric", GEOMETRIC, "table03_geometric_cls_nih.csv"),
    PaperTable("T4", "isotropic blur", ISO_BLUR, "table04_iso_blur.csv"),
    PaperTable("T5", "directional blur (L21 P64)", DIRECTIONAL_REPRESENTATIVE, "table05_directional_blur_cls.csv"),
    PaperTable("T6", "reticular / ground glass", PATHOLOGY, "table06_pathology_mimicking_cls.csv"),
    PaperTable("T7", "pooling slice", POOLING_SLICE, "table07_pooling_modes_nih.csv"),
    PaperTable("T8", "raw-pixel slice", RAW_SLICE, "table08_raw_pixel.csv"),
    PaperTable(
        "T9",
        "clean-vs-perturbed disease",
        T9_CONDITIONS,
        "table09_clean_vs_perturbed_significance.csv",
        ("model",),
        significant_column(0.05),
    ),
    PaperTable(
        "T10", "ChestX-Det10 box level", (), "table10_chestxdet10_box_level.csv", ("model", "lesion_class", "pool")
    ),
    PaperTable("T12", "SFDI", SFDI_PANEL, "table12_sfdi.csv", ("model", "dataset"), "sfdi"),
)
# The tables made from the detection probes of the panel, in the order the coverage table lists them.
PANEL_TABLES = tuple(TABLES[t] for t in ("T3", "T4", "T5", "T6", "T7", "T8"))
