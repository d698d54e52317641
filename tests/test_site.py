"""The report site: one page per run that lists every table and figure with the notebooks and parameters behind them.

Unit tests build a tiny reports tree through ``Outputs``; browser tests load pages in headless Chromium, from the
file system and over HTTP, and check that every image loads and every link resolves (skipped without Chromium).
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from browser import Browser, PageReport, broken_link, find_chromium, http_server, is_local

from lesionsignal.core.kinds import RunKind
from lesionsignal.paper.outputs import Outputs, RunLabel
from lesionsignal.paper.site import RunInputs, read_run_inputs, read_table, thumb_size, write_site

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH: the browser check of the report site is skipped (.ci/run installs it)",
)

DEMO = RunLabel("tiny", RunKind.DEMO, "tiny: DEMO run; numbers are not the paper's and are not comparable with it")
PARAMS_TEXT = "# tiny run\nname: tiny\nrun: demo\npaths:\n  tables: tables\n  note: a < b & c\n"
PROVENANCE = {
    "packages": [
        {
            "name": "pkg-data",
            "version": "1.2.3",
            "source": "PyPI",
            "licence": "MIT",
            "wheel": "pkg_data-1.2.3-py3-none-any.whl",
            "sha256": "ab" * 32,
            "target": "films",
            "members": [{"path": "films/a.dcm", "size": 10, "sha256": "cd" * 32}],
        }
    ]
}


def _figure() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    return fig


def _notebook(path: Path, title: str) -> None:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": [f"# {title}\n", "text\n"]}]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    path.with_suffix(".html").write_text(f"<!DOCTYPE html><html><body><h1 id='top'>{title}</h1></body></html>\n")


def build_tiny_project(root: Path, label: RunLabel = DEMO) -> Path:
    """A project with two executed notebooks that wrote tables and figures through ``Outputs``; its reports folder."""
    reports = root / "reports" / label.name

    def outputs(notebook: str) -> Outputs:
        return Outputs(
            label, notebook, root / "tables" / label.name, root / "figures" / label.name, reports, root, dpi=40
        )

    first = outputs("01_first")
    first.table(pd.DataFrame({"model": ["a", "b"], "auc": [0.51234, 0.9]}), "01_short", "A short table of AUCs")
    ids = [f"{i:02d}" for i in range(1, 31)]  # identifiers with a leading zero must stay as written
    long = pd.DataFrame({"id": ids, "value": [i / 7 for i in range(30)], "n": range(30)})
    first.table(long, "01_long", "A long table & its rows")
    first.figure(_figure(), "01_curve", "A curve")
    outputs("02_second").figure(_figure(), "02_other", "Another <figure>")
    _notebook(reports / "01_first.ipynb", "01 · The first section")
    _notebook(reports / "02_second.ipynb", "02 · The second section")
    (root / "params").mkdir()
    (root / "params" / "tiny.yaml").write_text(PARAMS_TEXT)
    return reports


def _write(root: Path, reports: Path, label: RunLabel = DEMO, provenance: dict | None = PROVENANCE) -> Path:
    return write_site(label, reports, root, RunInputs("params/tiny.yaml", PARAMS_TEXT, provenance))


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "project"
    return root, build_tiny_project(root)


class _Elements(HTMLParser):
    """Every element's tag and attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))


def _elements(page: Path) -> list[tuple[str, dict[str, str]]]:
    parser = _Elements()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.found


def test_every_table_and_caption_appears_with_its_files(tiny: tuple[Path, Path]) -> None:
    root, reports = tiny
    text = _write(root, reports).read_text()
    for caption in ("A short table of AUCs", "A long table &amp; its rows", "A curve", "Another &lt;figure&gt;"):
        assert caption in text
    assert "<td class='num'>0.5123</td>" in text  # the CSV's cell formatting
    assert "<td>01</td>" in text and "<td>1</td>" not in text  # text identifiers are not read as numbers
    long_block = text[text.index("id='01_long'") :].split("</div>\n<div class='table-block'", 1)[0]
    assert "<details><summary>All 30 rows</summary>" in long_block
    for suffix in ("csv", "md", "tex"):
        assert f"href='../../tables/tiny/01_long.{suffix}'" in long_block
    assert "<th>run</th>" not in text  # stated once at the top, not in every row


def test_figure_thumbnails_link_their_png_and_pdf(tiny: tuple[Path, Path]) -> None:
    root, reports = tiny
    elements = _elements(_write(root, reports))
    images = [attrs for tag, attrs in elements if tag == "img"]
    assert [i["src"] for i in images] == ["../../figures/tiny/01_curve.png", "../../figures/tiny/02_other.png"]
    hrefs = [attrs.get("href", "") for tag, attrs in elements if tag == "a"]
    for image in images:
        assert image["loading"] == "lazy" and int(image["width"]) > 0 and int(image["height"]) > 0
        assert image["src"] in hrefs and image["src"].replace(".png", ".pdf") in hrefs
    assert thumb_size((1000, 4000)) == (60, 240) and thumb_size((100, 50)) == (100, 50)


def test_page_layout_label_sections_params_and_provenance(tiny: tuple[Path, Path]) -> None:
    root, reports = tiny
    text = _write(root, reports).read_text()
    assert text.index("DEMO RUN") < text.index("Contents") < text.index("01 · The first section")
    assert "not the paper&#x27;s" in text[: text.index("Contents")]
    assert "href='01_first.html'" in text and "href='01_first.ipynb'" in text
    assert text.index("id='s-01_first'") < text.index("id='s-02_second'") < text.index("id='parameters'")
    assert "note: a &lt; b &amp; c" in text and "href='../../params/tiny.yaml'" in text
    assert "ab" * 32 in text and "cd" * 32 in text and "pkg_data-1.2.3-py3-none-any.whl" in text
    assert "<script" not in text and "<link" not in text and "http" not in text  # nothing fetched from outside
    markdown = (reports / "index.md").read_text()
    assert "## 01 · The first section" in markdown and "[01_long](../../tables/tiny/01_long.csv)" in markdown


def test_the_preflight_shows_its_findings_and_plan_but_not_the_measured_rate(tiny: tuple[Path, Path]) -> None:
    root, reports = tiny
    assert "No preflight report" in _write(root, reports).read_text()
    plan = {"encoder": "enc-a", "source": "random-init", "dtype": "float32", "dim": 8, "forward_passes": 1200}
    plan |= {"gflops_per_image": 0.25, "parameters": 1000, "hours_at_measured_rate": 0.0123}
    finding = {"severity": "note", "where": "cohort demo", "message": "not rendered yet"}
    preflight = {"ok": True, "findings": [finding], "encoders": [plan], "device": {"flops_per_second": 1.5e10}}
    (reports / "preflight.json").write_text(json.dumps(preflight))
    text = _write(root, reports).read_text()
    section = text[text.index("id='preflight'") : text.index("id='parameters'")]
    assert "passed" in section and "note: cohort demo: not rendered yet" in section and "1200" in section
    assert "0.0123" not in text and "15000000000" not in text  # measured values would change the page's bytes


def test_study_run_is_labelled_and_missing_provenance_said(tiny: tuple[Path, Path]) -> None:
    root, reports = tiny
    study = RunLabel("tiny", RunKind.STUDY, "tiny: study run (real data, real weights)")
    text = _write(root, reports, study, provenance=None).read_text()
    assert "STUDY RUN" in text and "not the paper" not in text
    assert "no <code>provenance.json</code>" in text


def test_links_are_relative_and_resolve_on_disk(tiny: tuple[Path, Path]) -> None:
    root, reports = tiny
    page = _write(root, reports)
    ids = {attrs["id"] for _, attrs in _elements(page) if "id" in attrs}
    for tag, attrs in _elements(page):
        target = attrs.get("href") or (attrs.get("src") if tag == "img" else None)
        if not target:
            continue
        assert "://" not in target and not target.startswith("/"), target
        path, _, fragment = target.partition("#")
        assert (reports / path).exists() if path else fragment in ids, target


def test_no_absolute_path_and_bytes_depend_only_on_the_inputs(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    root, reports = tiny
    first = _write(root, reports).read_bytes()
    markdown = (reports / "index.md").read_bytes()
    for text in (first, markdown):
        assert str(tmp_path).encode() not in text and str(ROOT).encode() not in text
    assert _write(root, reports).read_bytes() == first
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, moved)  # the same run in another checkout gives the same page
    assert _write(moved, moved / "reports" / "tiny").read_bytes() == first


def test_read_run_inputs_relative_params_and_optional_provenance(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "params").mkdir(parents=True)
    (root / "params" / "x.yaml").write_text("name: x\n")
    cache = root / ".cache" / "data"
    inputs = read_run_inputs(root / "params" / "x.yaml", cache, root)
    assert inputs == RunInputs("params/x.yaml", "name: x\n", None)
    cache.mkdir(parents=True)
    (cache / "provenance.json").write_text(json.dumps(PROVENANCE))
    assert read_run_inputs(root / "params" / "x.yaml", cache, root).provenance == PROVENANCE


def test_read_table_keeps_the_csv_text(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("id,auc,n,flag,empty,run\n01,0.5000,3,True,,demo\n02,,4,False,,demo\n")
    frame = read_table(csv)
    assert list(frame.columns) == ["id", "auc", "n", "flag", "empty"]
    assert frame["id"].tolist() == ["01", "02"] and frame["flag"].tolist() == ["True", "False"]
    assert pd.api.types.is_numeric_dtype(frame["auc"]) and pd.api.types.is_numeric_dtype(frame["n"])


# --- in a browser -----------------------------------------------------------------------------------------------


def assert_page_is_whole(page: PageReport, own_page: bool) -> None:
    """Every image loaded and every local link resolves; the site's own pages use nothing off the machine."""
    assert all(image.loaded for image in page.images), [i.src for i in page.images if not i.loaded]
    targets = page.links + page.resources + [i.src for i in page.images]
    if own_page:
        assert [t for t in targets if not is_local(t)] == []
    assert [problem for t in targets if (problem := broken_link(t, page))] == []


def check_site(browser: Browser, index_url: str, shots: Path, executed: list[str]) -> PageReport:
    """Load the index and every executed notebook page it links; screenshot each (top 1400 x 2400)."""
    index = browser.load(index_url)
    assert_page_is_whole(index, own_page=True)
    browser.screenshot(shots / "index.png")
    browser.screenshot(shots / "index_full.png", full_page=True)
    notebook_pages = [u for u in index.links if u.split("#")[0].endswith(".html") and not u.startswith(index_url)]
    assert sorted(Path(u).name for u in notebook_pages) == sorted(executed)
    for url in notebook_pages:
        assert_page_is_whole(browser.load(url), own_page=False)
        browser.screenshot(shots / Path(url).with_suffix(".png").name)
    return index


@needs_chromium
def test_tiny_site_in_a_browser_from_files_and_over_http(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    root, reports = tiny
    page = _write(root, reports)
    executed = ["01_first.html", "02_second.html"]
    with Browser(CHROMIUM) as browser:
        index = check_site(browser, page.as_uri(), tmp_path / "file", executed)
        assert len(index.images) == 2
        with http_server(root) as base:
            check_site(browser, f"{base}/reports/tiny/index.html", tmp_path / "http", executed)
    assert (tmp_path / "file" / "index.png").stat().st_size > 10_000


@pytest.mark.notebook
@needs_chromium
def test_smoke_run_site_in_a_browser(smoke_reports: Path, tmp_path: Path) -> None:
    """The real executed notebooks: the site from the file system and served over HTTP (the run's outputs root
    stands for the project root: reports, tables and figures sit side by side in it, as in a checkout)."""
    executed = sorted(p.name for p in smoke_reports.glob("[0-9]*.html"))
    assert len(executed) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.py")))
    with Browser(CHROMIUM) as browser:
        index = check_site(browser, (smoke_reports / "index.html").as_uri(), tmp_path / "file", executed)
        assert len(index.images) == sum(
            e["kind"] == "figure"
            for log in (smoke_reports / "outputs").glob("*.json")
            for e in json.loads(log.read_text())["outputs"]
        )
        with http_server(smoke_reports.parents[1]) as base:
            check_site(browser, f"{base}/reports/{smoke_reports.name}/index.html", tmp_path / "http", executed)
