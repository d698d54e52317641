"""Reported values load for every table, and only study runs are set beside them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lesionsignal.core.kinds import RunKind
from lesionsignal.paper.reference import NotComparable, compare, reported
from lesionsignal.paper.registry import TABLES

REPORTED = sorted(name for name, table in TABLES.items() if table.reported)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("table", REPORTED)
def test_every_reported_table_loads(table: str) -> None:
    frame = reported(table)
    assert len(frame) > 0
    assert "model" in frame.columns


def test_reported_values_match_the_shared_copy() -> None:
    shared = ROOT.parent / "shared" / "paper_reference"
    if not shared.is_dir():
        pytest.skip("../shared/paper_reference not present beside this checkout")
    ours = ROOT / "lib" / "lesionsignal" / "paper" / "resources" / "paper_reference"
    for table in REPORTED:
        name = TABLES[table].reported
        assert (shared / name).read_bytes() == (ours / name).read_bytes()


def test_compare_refuses_demo_runs() -> None:
    for run in (RunKind.DEMO, RunKind.SMOKE):
        with pytest.raises(NotComparable, match="not comparable"):
            compare(pd.DataFrame(), "T3", ["model"], "auc", run)


def test_compare_on_a_study_run_keeps_unreproduced_cells_visible() -> None:
    ours = pd.DataFrame(
        {"model": ["rad-dino"], "dataset": ["nih"], "pool": ["cls"], "perturbation": ["C1"], "auc": [0.55]}
    )
    table = compare(ours, "T3", ["model", "dataset", "pool", "perturbation"], "auc", RunKind.STUDY)
    row = table[(table.model == "rad-dino") & (table.perturbation == "C1")].iloc[0]
    assert row["auc_reported"] == pytest.approx(0.5)
    assert row["difference"] == pytest.approx(0.05)
    assert table["auc_reproduced"].isna().sum() == len(table) - 1
