"""Writing the run's tables (CSV, Markdown, LaTeX) and figures (PNG, PDF), each labelled with what the run is.

Every table and figure a notebook makes goes through an ``Outputs`` object, which also records what it wrote in a
small JSON log per notebook; the report index is assembled from those logs. Bytes are deterministic: fixed float
formatting, no timestamps, and PDF/PNG metadata without creation dates.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lesionsignal.core.files import atomic_write_text, atomic_writer
from lesionsignal.core.kinds import RunKind

FLOAT_DIGITS = 4


@dataclass(frozen=True)
class RunLabel:
    """What a run is, in the words that travel with every table (a ``run`` column and the caption) and figure."""

    name: str
    kind: RunKind
    text: str

    @property
    def needs_footer(self) -> bool:
        """Figures of runs that are not comparable with the paper carry the label as a red footer."""
        return not self.kind.comparable_with_paper


def _cell(value: object, digits: int = FLOAT_DIGITS) -> str:
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}f}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def frame_to_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format=f"%.{FLOAT_DIGITS}f", lineterminator="\n")


def frame_to_markdown(frame: pd.DataFrame, title: str = "", note: str = "") -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    parts = [f"**{title}**", ""] if title else []
    parts += [header, rule, *rows]
    if note:
        parts += ["", f"_{note}_"]
    return "\n".join(parts) + "\n"


def frame_to_html(frame: pd.DataFrame, caption: str = "", note: str = "", max_rows: int | None = None) -> str:
    """An HTML table with the same cell formatting as the CSV, for notebooks and the report site.

    Numeric columns are right-aligned; with ``max_rows`` only the first rows are shown and the rest are counted.
    """
    import html

    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    shown = frame if max_rows is None else frame.head(max_rows)
    align = [" class='num'" if num else "" for num in numeric]
    head = "".join(f"<th{a}>{html.escape(str(c))}</th>" for c, a in zip(frame.columns, align, strict=True))
    body = []
    for row in shown.itertuples(index=False):
        cells = "".join(f"<td{a}>{html.escape(_cell(v))}</td>" for v, a in zip(row, align, strict=True))
        body.append(f"<tr>{cells}</tr>")
    parts = ["<table class='ls-table'>"]
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts += [f"<thead><tr>{head}</tr></thead>", "<tbody>", *body, "</tbody></table>"]
    hidden = len(frame) - len(shown)
    if hidden:
        parts.append(f"<p class='ls-more'>… and {hidden} more rows ({len(frame)} in all) in the CSV.</p>")
    if note:
        parts.append(f"<p class='ls-note'><em>{html.escape(note)}</em></p>")
    return "\n".join(parts) + "\n"


# Rows a notebook shows of one table; the CSV and the report site hold them all.
DISPLAY_ROWS = 40


@dataclass(frozen=True)
class WrittenTable:
    """A table as written: displayed in a notebook as a formatted HTML table with its caption."""

    name: str
    caption: str
    note: str
    frame: pd.DataFrame
    path: Path  # the CSV

    def _repr_html_(self) -> str:
        return frame_to_html(self.frame, f"{self.name}: {self.caption}", self.note, DISPLAY_ROWS)

    def __repr__(self) -> str:
        return f"table {self.name}: {self.caption} ({len(self.frame)} rows)"


@dataclass(frozen=True)
class WrittenFigure:
    """A figure as written: displayed in a notebook as the very PNG the run saved."""

    name: str
    caption: str
    path: Path  # the PNG

    def _repr_png_(self) -> bytes:
        return self.path.read_bytes()

    def __repr__(self) -> str:
        return f"figure {self.name}: {self.caption}"


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, repl)
    return text


def frame_to_latex(frame: pd.DataFrame, caption: str = "", label: str = "") -> str:
    align = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in frame.columns)
    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{_latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{tab:{label}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\hline"]
    lines.append(" & ".join(_latex_escape(str(c)) for c in frame.columns) + r" \\")
    lines.append(r"\hline")
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(_latex_escape(_cell(v)) for v in row) + r" \\")
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


@dataclass
class Outputs:
    """Where one notebook of one run writes its tables and figures, and the log of what it wrote."""

    label: RunLabel
    notebook: str
    tables_dir: Path
    figures_dir: Path
    reports_dir: Path
    root: Path  # paths in the log are relative to it
    params_source: str = ""  # the parameter file, as the log records it
    dpi: int = 110
    written: list[dict[str, str]] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.reports_dir / "outputs" / f"{self.notebook}.json"

    def table(self, frame: pd.DataFrame, name: str, caption: str) -> WrittenTable:
        """Write ``frame`` as CSV, Markdown and LaTeX; the run label travels with it (a column and the caption)."""
        if frame.empty:
            raise ValueError(f"table {name!r} is empty: refusing to write an empty result")
        labelled = frame.copy()
        labelled["run"] = self.label.kind.value
        full_caption = f"{caption} [{self.label.text}]"
        base = self.tables_dir / name
        atomic_write_text(base.with_suffix(".csv"), frame_to_csv(labelled))
        atomic_write_text(base.with_suffix(".md"), frame_to_markdown(frame, caption, self.label.text))
        atomic_write_text(base.with_suffix(".tex"), frame_to_latex(frame, full_caption, name))
        self._log("table", name, caption, base.with_suffix(".csv"))
        return WrittenTable(name, caption, self.label.text, frame, base.with_suffix(".csv"))

    def run_log(self, frame: pd.DataFrame, name: str) -> Path:
        """Timings and cache use of this execution: kept beside the executed notebook, not among the paper's tables,
        because they differ from run to run while every table must be byte-identical for identical parameters."""
        target = self.reports_dir / "logs" / f"{name}.csv"
        atomic_write_text(target, frame_to_csv(frame))
        return target

    def figure(self, fig: object, name: str, caption: str) -> WrittenFigure:
        """Save a matplotlib figure as PNG and PDF, stamped with the run label when the run is not the study."""
        import matplotlib.pyplot as plt

        from lesionsignal.paper.footer import add_footer

        if self.label.needs_footer:
            add_footer(fig, self.label.text)
        base = self.figures_dir / name
        base.parent.mkdir(parents=True, exist_ok=True)
        for suffix, meta in (
            (".png", {"Software": None}),
            (".pdf", {"CreationDate": None, "Producer": None}),
        ):
            with atomic_writer(base.with_suffix(suffix)) as handle:
                fig.savefig(handle, format=suffix[1:], dpi=self.dpi, metadata=meta, bbox_inches="tight")
        plt.close(fig)
        self._log("figure", name, caption, base.with_suffix(".png"))
        return WrittenFigure(name, caption, base.with_suffix(".png"))

    def _log(self, kind: str, name: str, caption: str, path: Path) -> None:
        entry = {"kind": kind, "name": name, "caption": caption, "path": os.path.relpath(path, self.root)}
        self.written = [e for e in self.written if not (e["kind"] == kind and e["name"] == name)] + [entry]
        payload = {"notebook": self.notebook, "params": self.params_source, "label": self.label.text}
        payload["outputs"] = self.written
        atomic_write_text(self.log_path, json.dumps(payload, indent=1, sort_keys=True) + "\n")
