"""The red run-label footer of figures from runs that are not the study: placed below everything a figure draws."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.text import Text

FOOTER_GAP_PT = 4.0
FOOTER_SIZE_PT = 7.0
FOOTER_COLOUR = "firebrick"


def add_footer(figure: Figure, text: str) -> Text:
    """Write ``text`` centred under the lowest thing drawn (tick labels, colorbars, legends and all).

    The figure is laid out first and its layout then frozen: a layout engine run again at save time would move
    the axes down over a footer it does not know about. Saving with ``bbox_inches="tight"`` keeps the footer in.
    """
    figure.draw_without_rendering()
    figure.set_layout_engine("none")
    _pin_figure_legends(figure)
    bottom = figure.get_tightbbox().y0 - FOOTER_GAP_PT / 72
    return figure.text(
        0.5, bottom / figure.get_figheight(), text, ha="center", va="top", fontsize=FOOTER_SIZE_PT, color=FOOTER_COLOUR
    )


def _pin_figure_legends(figure: Figure) -> None:
    """Anchor figure legends to the figure as drawn, not to its edges: saving with a tight bounding box moves the
    lower edge down to the footer, and a legend anchored to that edge would follow it onto the footer."""
    for legend in figure.legends:
        if legend.get_bbox_to_anchor() is figure.bbox:
            legend.set_bbox_to_anchor((0, 0, 1, 1), transform=figure.transFigure)
