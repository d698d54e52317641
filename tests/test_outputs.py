"""Tables and figures are written deterministically, in every format, with the run's label attached."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from lesionsignal.config.params import load_params
from lesionsignal.core.files import atomic_write_text
from lesionsignal.paper.outputs import Outputs, frame_to_latex, frame_to_markdown

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def outputs(tmp_path: Path) -> Outputs:
    label = load_params(ROOT / "params" / "smoke.yaml").label
    return Outputs(label, "99_test", tmp_path / "t", tmp_path / "f", tmp_path / "r", root=tmp_path, dpi=60)


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"model": ["a_b", "c"], "auc": [0.123456, 1.0], "n": [3, 4]})


def test_table_formats_label_and_log(outputs: Outputs, tmp_path: Path) -> None:
    csv = outputs.table(_frame(), "t1", "A test table").path
    text = csv.read_text()
    assert text.splitlines()[0] == "model,auc,n,run"
    assert "0.1235" in text and ",smoke" in text
    markdown = csv.with_suffix(".md").read_text()
    assert "| model | auc | n |" in markdown and "SMOKE run" in markdown
    latex = csv.with_suffix(".tex").read_text()
    assert r"a\_b" in latex and r"\begin{tabular}{lrr}" in latex and "not comparable" in latex
    log = json.loads(outputs.log_path.read_text())
    assert log["outputs"][0]["name"] == "t1" and log["notebook"] == "99_test"


def test_table_bytes_are_deterministic(outputs: Outputs) -> None:
    first = outputs.table(_frame(), "t2", "x").path.read_bytes()
    second = outputs.table(_frame(), "t2", "x").path.read_bytes()
    assert first == second
    assert len(json.loads(outputs.log_path.read_text())["outputs"]) == 1  # rewriting replaces the log entry


def test_empty_table_is_refused(outputs: Outputs) -> None:
    with pytest.raises(ValueError, match="empty"):
        outputs.table(pd.DataFrame({"a": []}), "t3", "x")


def test_figure_png_and_pdf_deterministic(outputs: Outputs) -> None:
    def draw() -> bytes:
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        png = outputs.figure(fig, "f1", "A test figure").path
        return png.read_bytes() + png.with_suffix(".pdf").read_bytes()

    assert draw() == draw()


def test_markdown_and_latex_render_nan_as_blank() -> None:
    frame = pd.DataFrame({"x": [float("nan"), 0.5]})
    assert "|  |" in frame_to_markdown(frame)
    assert r"0.5000 \\" in frame_to_latex(frame)


def test_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_figure_made_without_pyplot_is_labelled_and_saved(outputs: Outputs) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    png = outputs.figure(fig, "f2", "no pyplot").path
    assert png.is_file() and png.with_suffix(".pdf").is_file()
    assert any("SMOKE run" in t.get_text() for t in fig.texts)


def test_a_written_table_displays_as_a_captioned_html_table_with_the_csv_formatting(outputs: Outputs) -> None:
    from lesionsignal.paper.outputs import DISPLAY_ROWS

    written = outputs.table(_frame(), "t4", "A shown table")
    html = written._repr_html_()
    assert "<caption>t4: A shown table</caption>" in html and "<td class='num'>0.1235</td>" in html
    assert "a_b" in html and "SMOKE run" in html and "more rows" not in html
    long = pd.DataFrame({"i": range(DISPLAY_ROWS + 5)})
    shown = outputs.table(long, "t5", "long")._repr_html_()
    assert shown.count("<tr>") == DISPLAY_ROWS + 1 and f"and 5 more rows ({DISPLAY_ROWS + 5} in all)" in shown


def test_a_written_figure_displays_as_the_saved_png(outputs: Outputs) -> None:
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    written = outputs.figure(fig, "f3", "shown")
    assert written._repr_png_() == written.path.read_bytes()
    assert repr(written) == "figure f3: shown"
