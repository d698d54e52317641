"""Figures are legible as saved: the run footer, titles, legends and cell numbers never cover data or each other.

Every check draws a figure made from tiny synthetic inputs into a PNG the way ``Outputs.figure`` saves it (tight
bounding box, which moves the figure's edges and what is anchored to them) and compares the window extents, in
pixels, of what was drawn.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.backend_bases import DrawEvent, RendererBase
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.path import Path as DrawnPath
from matplotlib.transforms import Bbox

from lesionsignal.analysis.lesion_probes import Level
from lesionsignal.core.box import Box
from lesionsignal.core.kinds import RunKind
from lesionsignal.data.demo_cohort import read_demo
from lesionsignal.paper.cohort_figures import plot_box_sizes, plot_examples
from lesionsignal.paper.figures import (
    plot_directional_curves,
    plot_heatmap,
    plot_pool_aucs,
    plot_sfdi_recovery,
    plot_stratum_gaps,
    plot_umap_panels,
)
from lesionsignal.paper.outputs import Outputs, RunLabel
from lesionsignal.stimuli.gallery import GalleryPanel, plot_gallery
from lesionsignal.stimuli.panel import panel

COHORT = Path(__file__).parent / "fixtures" / "cohorts" / "demo"
MODELS = ("enc-a", "enc-b", "enc-c")
CLASSES = ("Calcification", "Nodule", "Mass")
POOLS = ("cls", "patch_mean", "patch_local")
TOLERANCE_PX = 0.5  # extents may touch; they may not share more than half a pixel
SAVED_DPI = 110  # params figures.dpi by default


# ---------------------------------------------------------------------------------------------- synthetic inputs


def _heatmap_frame(n_rows: int, n_cols: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    values = rng.uniform(0.4, 1.0, size=(n_rows, n_cols))
    values[0, -1] = np.nan
    models = [f"encoder-{k} · cohort" for k in range(n_rows)]
    conditions = [f"dir_lateral_L{k:02d}_P64" for k in range(n_cols)]
    return pd.DataFrame(values, index=models, columns=conditions)


def _sweep() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [
        {"model": m, "dataset": "nih", "direction": d, "length": n, "patch": p, "auc": 0.5 + rng.normal(0, 0.01)}
        for m in MODELS
        for d in ("cranio", "lateral")
        for n in (11, 21, 31)
        for p in (16, 32, 64)
    ]
    sweep = pd.DataFrame(rows)
    return sweep.assign(ci_low=sweep["auc"] - 0.12, ci_high=sweep["auc"] + 0.12)


def _lesion_results() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows = [
        {"level": lv.value, "lesion_class": c, "model": m, "pool": p, "auc": rng.uniform(0.35, 0.75)}
        for lv in (Level.IMAGE, Level.BOX)
        for c in CLASSES
        for m in MODELS
        for p in POOLS
    ]
    frame = pd.DataFrame(rows)
    return frame.assign(ci_low=frame["auc"] - 0.15, ci_high=frame["auc"] + 0.15, gap=rng.uniform(-0.2, 0.2, len(rows)))


def _sfdi_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    sfdi = pd.DataFrame([{"model": m, "pool": p, "sfdi": 0.502} for m in MODELS for p in POOLS])
    return sfdi, pd.DataFrame({"model": list(MODELS), "recovery": [0.002, -0.001, 0.003]})


def _umap_panels() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 60)
    return [(f"S8 / {pool}", rng.normal(size=(120, 2)), labels) for pool in POOLS * 2]


def _gallery_panels() -> list[GalleryPanel]:
    rng = np.random.default_rng(4)
    film = rng.integers(0, 255, size=(128, 128), dtype=np.uint8)
    crop = film[32:96, 32:96]
    return [
        GalleryPanel("person1946_bacteria_4874", c, film, Box(56, 56, 72, 72), Box(32, 32, 96, 96), crop, crop + 1)
        for c in panel(("C1", "dir_cranio_L21_P64", "ground_glass_64"))
    ]


FIGURES: dict[str, Callable[[], Figure]] = {
    "heatmap": lambda: plot_heatmap(_heatmap_frame(3, 29), "Detection AUC, pool: cls"),
    "directional_curves": lambda: plot_directional_curves(_sweep(), "Directional blur: CLS AUC against P"),
    "pool_aucs": lambda: plot_pool_aucs(_lesion_results(), Level.BOX, "Box level: AUC by pool and lesion class"),
    "stratum_gaps": lambda: plot_stratum_gaps(_lesion_results(), "Stratum gap AUC(large) - AUC(small)"),
    "stratum_gaps_one_model": lambda: plot_stratum_gaps(_lesion_results().query("model == 'enc-a'"), "Gaps"),
    "sfdi_recovery": lambda: plot_sfdi_recovery(*_sfdi_rows(), "SFDI and patch-local recovery, full panel"),
    "umap_panels": lambda: plot_umap_panels(_umap_panels(), "enc-a on demo: clean vs perturbed"),
    "examples": lambda: plot_examples(read_demo(COHORT), n=5, seed=0, title="Example films, cohort demo"),
    "box_sizes": lambda: plot_box_sizes(read_demo(COHORT), CLASSES, "Lesion box sizes, cohort demo"),
    "gallery": lambda: plot_gallery(_gallery_panels(), "directional_blur on person1946_bacteria_4874"),
}
LEGENDED = ("directional_curves", "pool_aucs", "stratum_gaps", "sfdi_recovery", "umap_panels", "box_sizes")


# ---------------------------------------------------------------------------------------------- geometry helpers


def _as_saved(figure: Figure, check: Callable[[RendererBase], None]) -> None:
    """Run ``check`` while the figure is drawn into a PNG saved as ``Outputs.figure`` saves it; raise what it raised.

    Saving with a tight bounding box draws twice, the second time with the figure's edges moved to the saved area:
    that last drawing is the one that counts.
    """
    outcomes: list[AssertionError | None] = []

    def on_draw(event: DrawEvent) -> None:
        try:
            check(event.renderer)
        except AssertionError as error:  # the callback registry would print it and carry on
            outcomes.append(error)
        else:
            outcomes.append(None)

    connection = figure.canvas.mpl_connect("draw_event", on_draw)
    try:
        figure.savefig(io.BytesIO(), format="png", dpi=SAVED_DPI, bbox_inches="tight")
    finally:
        figure.canvas.mpl_disconnect(connection)
    assert outcomes, "the figure was never drawn"
    if outcomes[-1] is not None:
        raise outcomes[-1]


def _overlap(a: Bbox, b: Bbox) -> bool:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width > TOLERANCE_PX and height > TOLERANCE_PX


def _axes(figure: Figure) -> list[Axes]:
    return [ax for ax in figure.axes if ax.get_visible()]


def _drawn_paths(artist: Line2D | LineCollection) -> list[DrawnPath]:
    paths = [artist.get_path()] if isinstance(artist, Line2D) else artist.get_paths()
    return [artist.get_transform().transform_path(p) for p in paths]


def _touches(artist: object, box: Bbox, renderer: RendererBase) -> bool:
    """Whether a bar, an error-bar line or cap, or a scatter point drawn by ``artist`` reaches into ``box``."""
    if isinstance(artist, LineCollection):
        return any(p.intersects_bbox(box, filled=False) for p in _drawn_paths(artist))
    if isinstance(artist, Line2D):
        drawn = _drawn_paths(artist)
        has_line = artist.get_linestyle() not in ("None", "", " ")
        if has_line and any(p.intersects_bbox(box, filled=False) for p in drawn):
            return True
        radius = artist.get_markersize() * renderer.points_to_pixels(1.0) / 2
        has_markers = artist.get_marker() not in ("None", "", " ", None)
        return has_markers and any(box.padded(radius).contains(x, y) for p in drawn for x, y in p.vertices)
    if isinstance(artist, PathCollection):
        points = artist.get_offset_transform().transform(artist.get_offsets())
        return any(box.contains(x, y) for x, y in points)
    return _overlap(artist.get_window_extent(renderer), box)


def _data_artists(figure: Figure) -> Iterator[object]:
    """Bars (histograms included), every part of every error bar, and scatter points: what a legend may not hide."""
    for ax in _axes(figure):
        for container in ax.containers:
            if isinstance(container, BarContainer):
                yield from container.patches
            elif isinstance(container, ErrorbarContainer):
                data_line, caps, bars = container.lines
                yield from [a for a in (data_line, *caps, *bars) if a is not None]
        yield from (c for c in ax.collections if isinstance(c, PathCollection))


def _legends(figure: Figure) -> list[object]:
    return [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]


def _saved(name: str, tmp_path: Path) -> Figure:
    """The figure as ``Outputs.figure`` leaves it for a run that is not the study (footer drawn, files written)."""
    label = RunLabel("demo", RunKind.DEMO, "demo: DEMO run; numbers are not the paper's and are not comparable")
    figure = FIGURES[name]()
    Outputs(label, "99_test", tmp_path / "t", tmp_path / "f", tmp_path / "r", root=tmp_path, dpi=60).figure(
        figure, name, "caption"
    )
    return figure


# ---------------------------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("name", FIGURES)
def test_footer_sits_below_everything_and_inside_the_saved_area(name: str, tmp_path: Path) -> None:
    figure = _saved(name, tmp_path)
    (footer,) = [t for t in figure.texts if t.get_text().startswith("demo: DEMO run")]

    def check(renderer: RendererBase) -> None:
        extent = footer.get_window_extent(renderer)
        for ax in (ax for ax in figure.axes if ax.get_visible()):
            assert not _overlap(extent, ax.get_window_extent(renderer)), f"{name}: footer over {ax.get_title()!r}"
            assert extent.y1 <= ax.get_tightbbox(renderer).y0 + TOLERANCE_PX, f"{name}: footer over axes labels"
        for other in [*figure.texts, *_legends(figure)]:
            if other is not footer and other.get_visible():
                assert not _overlap(extent, other.get_window_extent(renderer)), f"{name}: footer over {other}"
        saved = figure.bbox  # while saving: the saved area
        assert saved.x0 - TOLERANCE_PX <= extent.x0 and extent.x1 <= saved.x1 + TOLERANCE_PX, "footer cut off"
        assert saved.y0 - TOLERANCE_PX <= extent.y0, "footer cut off"

    _as_saved(figure, check)


@pytest.mark.parametrize("name", FIGURES)
def test_titles_clear_each_other_and_other_axes(name: str) -> None:
    figure = FIGURES[name]()

    def check(renderer: RendererBase) -> None:
        titled = [(ax, ax.title.get_window_extent(renderer)) for ax in _axes(figure) if ax.get_title()]
        for (_, a), (_, b) in combinations(titled, 2):
            assert not _overlap(a, b), f"{name}: two titles overlap"
        for ax, title in titled:
            for other in _axes(figure):
                if other is not ax:
                    assert not _overlap(title, other.get_window_extent(renderer)), f"{name}: {ax.get_title()!r} hidden"

    _as_saved(figure, check)


@pytest.mark.parametrize("name", LEGENDED)
def test_legends_hide_no_data(name: str) -> None:
    figure = FIGURES[name]()
    assert _legends(figure), f"{name}: no legend"

    def check(renderer: RendererBase) -> None:
        for legend in _legends(figure):
            box = legend.get_window_extent(renderer)
            hidden = [a for a in _data_artists(figure) if _touches(a, box, renderer)]
            assert not hidden, f"{name}: the legend covers {len(hidden)} data artist(s), e.g. {hidden[0]}"

    _as_saved(figure, check)


def test_sfdi_bars_start_at_zero_with_chance_marked() -> None:
    figure = FIGURES["sfdi_recovery"]()
    bars = [(ax, p) for ax in figure.axes for c in ax.containers if isinstance(c, BarContainer) for p in c.patches]
    assert bars
    for ax, bar in bars:
        assert bar.get_y() == 0.0, "a bar starts away from 0"
        low, high = ax.get_ylim()
        assert low <= 0.0 <= high
    sfdi_axes = figure.axes[0]
    chance = [line for line in sfdi_axes.lines if set(line.get_ydata()) == {0.5}]
    assert chance and "chance" in chance[0].get_label()


@pytest.mark.parametrize("shape", [(3, 29), (10, 30), (1, 2)])
def test_heatmap_numbers_are_legible_and_fit_their_cells(shape: tuple[int, int]) -> None:
    frame = _heatmap_frame(*shape)
    figure = plot_heatmap(frame, "Detection AUC, pool: cls")
    ax = figure.axes[0]
    assert len(ax.texts) == frame.size - 1  # the one NaN cell is left blank
    assert all(text.get_fontsize() >= 8 for text in ax.texts)
    assert all(tick.get_fontsize() >= 7 for tick in [*ax.get_xticklabels(), *ax.get_yticklabels()])

    def check(renderer: RendererBase) -> None:
        extents = []
        for text in ax.texts:
            j, i = text.get_position()
            corners = ax.transData.transform([(j - 0.5, i - 0.5), (j + 0.5, i + 0.5)])
            cell = Bbox([corners.min(axis=0), corners.max(axis=0)])  # the image's y axis points down
            extent = text.get_window_extent(renderer)
            assert cell.x0 < extent.x0 and extent.x1 < cell.x1 and cell.y0 < extent.y0 and extent.y1 < cell.y1
            extents.append(extent)
        for a, b in combinations(extents, 2):
            assert not _overlap(a, b)

    _as_saved(figure, check)
