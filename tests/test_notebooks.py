"""Every numbered notebook executes on params/smoke.yaml (outputs under a temporary folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesionsignal.config.params import load_params
from lesionsignal.pipeline.runner import execute, sections, select

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = sections(ROOT / "notebooks")


def test_sections_are_numbered_and_unique() -> None:
    assert [s.number for s in SECTIONS] == sorted({s.number for s in SECTIONS})
    assert SECTIONS[0].number == "01"
    with pytest.raises(ValueError, match="no notebook numbered"):
        select(SECTIONS, "99")


def test_notebooks_start_with_a_parameters_cell() -> None:
    import jupytext

    for section in SECTIONS:
        notebook = jupytext.read(section.source)
        first = next(c for c in notebook.cells if c.cell_type == "code")
        assert "parameters" in first.metadata.get("tags", []), section.source.name
        assert first.source.strip().startswith("params_file"), section.source.name


@pytest.mark.notebook
@pytest.mark.parametrize("section", SECTIONS, ids=[s.stem for s in SECTIONS])
def test_notebook_executes_on_smoke_params(section, smoke_params_file: Path) -> None:
    params = load_params(smoke_params_file)
    executed = execute(section, smoke_params_file, params, ROOT, html=True)
    assert executed.is_file() and executed.with_suffix(".html").is_file()
    assert (ROOT / "notebooks" / section.source.name).is_file()  # the source is never overwritten
    log = json.loads((params.paths.reports / "smoke" / "outputs" / f"{section.stem}.json").read_text())
    assert log["outputs"], f"{section.stem} wrote no table or figure"
    for entry in log["outputs"]:
        path = ROOT / entry["path"]
        assert path.is_file(), entry
        if entry["kind"] == "table":
            assert path.with_suffix(".md").is_file() and path.with_suffix(".tex").is_file()
        else:
            assert path.with_suffix(".pdf").is_file()


@pytest.mark.notebook
def test_an_executed_section_is_up_to_date_until_an_output_changes(smoke_params_file: Path) -> None:
    from lesionsignal.pipeline.runner import up_to_date, write_stamp

    params = load_params(smoke_params_file)
    section = SECTIONS[0]
    if not (params.paths.reports / "smoke" / f"{section.stem}.ipynb").is_file():
        execute(section, smoke_params_file, params, ROOT, html=False)
    write_stamp(section, params, ROOT)
    assert up_to_date(section, params, ROOT)
    log = json.loads((params.paths.reports / "smoke" / "outputs" / f"{section.stem}.json").read_text())
    table = ROOT / next(e["path"] for e in log["outputs"] if e["kind"] == "table")
    original = table.read_bytes()
    table.write_bytes(original + b"tampered\n")
    try:
        assert not up_to_date(section, params, ROOT)
    finally:
        table.write_bytes(original)
    assert up_to_date(section, params, ROOT)
