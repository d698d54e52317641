"""Execute the numbered jupytext notebooks with papermill into the reports folder, never over their sources.

``python -m lesionsignal.pipeline.runner --params params/demo.yaml`` runs every notebook in order;
``--only 01`` re-runs one section from whatever its upstream notebooks left in the caches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lesionsignal.config.params import Params, project_root, shown_path
from lesionsignal.core.digests import PACKAGE_ROOT
from lesionsignal.core.errors import USER_ERROR_STATUS, user_errors_exit
from lesionsignal.core.files import atomic_write_text
from lesionsignal.core.progress import PROGRESS_FILE_VARIABLE, ProgressEcho
from lesionsignal.paper.site import read_run_inputs, write_site
from lesionsignal.pipeline import preflight
from lesionsignal.pipeline.catalog import Catalog

KERNEL = "lesionsignal"
_NOTEBOOK = re.compile(r"^(\d\d)_[a-z0-9_]+\.py$")


@dataclass(frozen=True)
class Section:
    number: str
    source: Path

    @property
    def stem(self) -> str:
        return self.source.stem


def sections(notebooks: Path) -> list[Section]:
    """The numbered notebooks (``NN_name.py``) in order."""
    found = [Section(m.group(1), p) for p in sorted(notebooks.glob("*.py")) if (m := _NOTEBOOK.match(p.name))]
    numbers = [s.number for s in found]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicates:
        raise ValueError(f"{notebooks}: more than one notebook numbered {', '.join(duplicates)}")
    return found


def select(all_sections: list[Section], only: str | None) -> list[Section]:
    if not only:
        return all_sections
    wanted = only.zfill(2)
    chosen = [s for s in all_sections if s.number == wanted]
    if not chosen:
        known = ", ".join(s.number for s in all_sections)
        raise ValueError(f"no notebook numbered {wanted!r} (have: {known})")
    return chosen


def kernel_name() -> str:
    """The project's kernel when installed (``make setup``), else the running interpreter's python3 kernel."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


class SectionFailed(RuntimeError):
    """A notebook stopped on an error; the message names the section, the cell's error and the executed notebook."""


# The kernel's own warnings (notably "running over TCP without encryption" on every start) are noise to a reader;
# its errors still show.
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)


def notebook_parameter(params_file: Path, root: Path) -> str:
    """The parameter file as the executed notebook shows it: relative to the project root when inside it; outside
    it, absolute, since the kernel starts in the root and a path relative to this process would not hold there."""
    return shown_path(params_file.absolute().resolve(), root)


@contextmanager
def _progress_channel(folder: Path, prefix: str) -> Iterator[None]:
    """Bars of the kernel go to a file this process shows in its terminal, never into the notebook's outputs."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=".progress.", suffix=".txt")
    os.close(handle)
    path = Path(name)
    previous = os.environ.get(PROGRESS_FILE_VARIABLE)
    os.environ[PROGRESS_FILE_VARIABLE] = str(path)  # the kernel inherits this process's environment
    try:
        with ProgressEcho(path, prefix):
            yield
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_FILE_VARIABLE, None)
        else:
            os.environ[PROGRESS_FILE_VARIABLE] = previous
        path.unlink(missing_ok=True)


def execute(section: Section, params_file: Path, params: Params, root: Path, html: bool = True) -> Path:
    """Convert a percent-format notebook to ipynb, run it with papermill, and export HTML beside it.

    A notebook that stops on an error is still written (and exported) with its traceback; ``SectionFailed`` says
    which cell failed and where the executed notebook is.
    """
    import jupytext
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out_dir = Catalog(params, root).reports
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = jupytext.read(section.source)
    kernel = kernel_name()
    notebook.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    # A private input file per execution: two runs of one section (two terminals, parallel tests) must not collide.
    handle, name = tempfile.mkstemp(dir=out_dir, prefix=f".{section.stem}.", suffix=".source.ipynb")
    os.close(handle)
    source_ipynb = Path(name)
    nbformat.write(notebook, source_ipynb)
    target = out_dir / f"{section.stem}.ipynb"
    failure: PapermillExecutionError | None = None
    try:
        with _progress_channel(out_dir, f"[{params.name}] {section.number}: "):
            # The kernel starts in the project root, so relative paths in params mean the same as under make.
            papermill.execute_notebook(
                str(source_ipynb),
                str(target),
                parameters={"params_file": notebook_parameter(params_file, root)},
                kernel_name=kernel,
                cwd=str(root),
                progress_bar=False,
                log_output=False,
                extra_arguments=list(KERNEL_ARGUMENTS),
            )
    except PapermillExecutionError as err:
        failure = err
    finally:
        source_ipynb.unlink(missing_ok=True)
    if html and target.is_file():
        export_html(target)
    if failure is not None:
        shown = os.path.relpath(target.with_suffix(".html" if html else ".ipynb"), root)
        raise SectionFailed(
            f"{section.stem} stopped in cell {failure.exec_count}: {failure.ename}: {failure.evalue}\n"
            f"  the executed notebook, with the traceback: {shown}"
        ) from None
    return target


def section_key(section: Section, params: Params, root: Path) -> str:
    """What a section's results depend on: its notebook, the run's parameters, the package's code and the data.

    Upstream sections are covered through the same three inputs: their caches are content-keyed on them too.
    """
    digest = hashlib.sha256()
    digest.update(section.source.read_bytes())
    digest.update(params.digest().encode())
    for path in sorted(PACKAGE_ROOT.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".csv"}:
            digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + path.read_bytes())
    provenance = Catalog(params, root).data_cache / "provenance.json"
    if provenance.is_file():
        digest.update(provenance.read_bytes())
    return digest.hexdigest()


def _stamp_path(section: Section, params: Params, root: Path) -> Path:
    return Catalog(params, root).reports / "stamps" / f"{section.stem}.json"


def _output_hashes(section: Section, params: Params, root: Path) -> dict[str, str] | None:
    """sha256 of every file the section's last execution logged, or None when the log or a file is missing."""
    log = Catalog(params, root).reports / "outputs" / f"{section.stem}.json"
    if not log.is_file():
        return None
    hashes = {}
    for entry in json.loads(log.read_text())["outputs"]:
        base = root / entry["path"]
        companions = (".csv", ".md", ".tex") if entry["kind"] == "table" else (".png", ".pdf")
        for suffix in companions:
            path = base.with_suffix(suffix)
            if not path.is_file():
                return None
            hashes[os.path.relpath(path, root)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def up_to_date(section: Section, params: Params, root: Path) -> bool:
    """True when the section ran with these inputs and every table and figure it wrote is still there, unchanged."""
    stamp = _stamp_path(section, params, root)
    if not stamp.is_file():
        return False
    recorded = json.loads(stamp.read_text())
    executed = Catalog(params, root).reports / f"{section.stem}.ipynb"
    return (
        executed.is_file()
        and recorded.get("key") == section_key(section, params, root)
        and recorded.get("outputs") == _output_hashes(section, params, root)
    )


def write_stamp(section: Section, params: Params, root: Path) -> None:
    payload = {"key": section_key(section, params, root), "outputs": _output_hashes(section, params, root)}
    atomic_write_text(_stamp_path(section, params, root), json.dumps(payload, indent=1, sort_keys=True) + "\n")


def export_html(notebook_path: Path) -> Path:
    """The executed notebook as an HTML page, showing the parameters once and describing every figure.

    Papermill keeps the notebook's own parameters cell (its defaults) and adds the injected one after it; a page
    showing both reads as if the run had two parameter files, so only the injected values are shown. Each figure's
    image gets its caption (the output's plain-text form) as alternative text.
    """
    import nbformat
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    notebook = nbformat.read(notebook_path, as_version=4)
    tags = [set(cell.metadata.get("tags", [])) for cell in notebook.cells]
    if any("injected-parameters" in t for t in tags):
        notebook.cells = [c for c, t in zip(notebook.cells, tags, strict=True) if "parameters" not in t]
    captions = [
        output["data"].get("text/plain", "figure")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    # The exporter warns on every image without alternative text; the captions are added just below.
    quiet = logging.getLogger("lesionsignal.html")
    quiet.setLevel(logging.ERROR)
    body, _ = HTMLExporter(log=quiet).from_notebook_node(notebook)
    page = BeautifulSoup(body, features="html.parser")
    images = page.select("img[src^='data:image/png']")
    for image, caption in zip(images, captions, strict=False):
        image["alt"] = caption
    target = notebook_path.with_suffix(".html")
    atomic_write_text(target, str(page))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, type=Path)
    parser.add_argument("--only", help="two-digit section number to run alone")
    parser.add_argument("--notebooks", type=Path, default=None)
    parser.add_argument("--no-html", action="store_true")
    parser.add_argument("--force", action="store_true", help="execute even the sections that are up to date")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of a user error")
    args = parser.parse_args(argv)
    return user_errors_exit(lambda: _run(args), verbose_flag=args.verbose)


def _run(args: argparse.Namespace) -> int:
    root = project_root()
    # Before any notebook: the preflight (`make check`), every problem of the setup listed at once.
    report, params = preflight.check_and_write(args.params, root)
    if report.fatal or params is None:
        print(f"preflight of {args.params}: {len(report.fatal)} problem(s) to fix before the run:", file=sys.stderr)
        for finding in report.fatal:
            print(f"  {finding.where}: {finding.message}", file=sys.stderr)
        print("(the whole report: make check PARAMS=...)", file=sys.stderr)
        return USER_ERROR_STATUS
    chosen = select(sections(args.notebooks or root / "notebooks"), args.only)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # A section asked for by number always runs (a reviewer re-executing it); a full run skips what is up to date.
    force = args.force or bool(args.only)
    status = 0
    for section in chosen:
        if not force and up_to_date(section, params, root):
            print(f"[{params.name}] {section.source.name} is up to date (same notebook, params, code and data)")
            continue
        started = time.perf_counter()
        print(f"[{params.name}] running {section.source.name} ...", flush=True)
        try:
            target = execute(section, args.params, params, root, html=not args.no_html)
        except SectionFailed as err:
            print(f"[{params.name}] {err}", file=sys.stderr, flush=True)
            status = 1
            break
        write_stamp(section, params, root)
        shown = os.path.relpath(target, root)
        print(f"[{params.name}] {section.source.name} done in {time.perf_counter() - started:.1f} s -> {shown}")
    catalog = Catalog(params, root)
    # Also after a failed section: the site shows what the run has made so far, with the failed page linked.
    index = write_site(params.label, catalog.reports, root, read_run_inputs(args.params, catalog.data_cache, root))
    print(f"[{params.name}] report site: {os.path.relpath(index, root)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
