"""Cohort overview: counts per class and split beside ChestX-Det10, and the figures draw from the manifest."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pytest

from lesionsignal.data.demo_cohort import read_demo
from lesionsignal.paper.cohort_figures import (
    CHESTXDET10_COUNTS,
    lesion_counts_vs_chestxdet10,
    plot_box_sizes,
    plot_examples,
)

FIXTURE = Path(__file__).parent / "fixtures" / "cohorts" / "demo"
CLASSES = ("Calcification", "Nodule", "Mass")


@pytest.fixture
def manifest():
    return read_demo(FIXTURE)


def test_counts_per_class_and_split(manifest) -> None:
    table = lesion_counts_vs_chestxdet10(manifest, CLASSES).set_index("class")
    assert table.loc["Nodule", "boxes_train"] == 1 and table.loc["Nodule", "boxes_test"] == 0
    assert table.loc["Mass", "boxes_test"] == 1 and table.loc["Calcification", "images_test"] == 1
    assert table["share_of_boxes"].sum() == pytest.approx(1.0, abs=0.002)
    assert table.loc["Nodule", "chestxdet10_boxes_train"] == 789
    assert table["chestxdet10_share_of_boxes"].sum() == pytest.approx(1.0, abs=0.002)


def test_reference_counts_match_the_spec() -> None:
    assert int(CHESTXDET10_COUNTS[["boxes_train", "boxes_test"]].to_numpy().sum()) == 1462


def test_figures_draw_every_box_of_the_chosen_films(manifest) -> None:
    fig = plot_examples(manifest, n=2, seed=0, title="t")
    drawn = sum(len(ax.patches) for ax in fig.axes)
    assert drawn == sum(len(r.boxes) for r in manifest.records if r.boxes)  # both films with boxes are chosen
    fig = plot_box_sizes(manifest, CLASSES, "t")
    assert len(fig.axes[0].patches) > 0
