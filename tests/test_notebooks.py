"""Every numbered notebook executes on params/smoke.yaml, and its executed pages show what it makes.

The smoke run (the ``smoke_reports`` fixture) executes all sections once through the runner, as `make paper` does;
the tests then read the executed notebooks and their HTML pages as a reader would.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from runs import run_folder, run_params

from lesionsignal.config.params import load_params
from lesionsignal.pipeline.catalog import Catalog
from lesionsignal.pipeline.runner import Section, kernel_name, sections, select

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = sections(ROOT / "notebooks")
# A progress summary or a deliberate warning may take a line or two; a wall of bar updates may not.
MAX_STDERR_LINES = 3


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


def test_notebooks_cite_only_documents_of_the_repository() -> None:
    for path in [*ROOT.joinpath("notebooks").glob("*.py"), ROOT / "README.md", *ROOT.joinpath("docs").glob("*.md")]:
        text = path.read_text()
        assert "../shared" not in text and "SPEC.md" not in text, path.name
    for section in SECTIONS:
        for cited in ("docs/PROTOCOL.md", "docs/ARCHITECTURE.md"):
            if cited in section.source.read_text():
                assert (ROOT / cited).is_file()


def _log(reports: Path, section: Section) -> dict:
    return json.loads((reports / "outputs" / f"{section.stem}.json").read_text())


def _outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


@pytest.mark.notebook
@pytest.mark.parametrize("section", SECTIONS, ids=[s.stem for s in SECTIONS])
def test_executed_notebook_shows_every_table_and_figure_it_writes(section: Section, smoke_reports: Path) -> None:
    executed = smoke_reports / f"{section.stem}.ipynb"
    assert executed.is_file() and executed.with_suffix(".html").is_file()
    assert (ROOT / "notebooks" / section.source.name).is_file()  # the source is never overwritten
    log = _log(smoke_reports, section)
    assert log["outputs"], f"{section.stem} wrote no table or figure"
    for entry in log["outputs"]:
        path = ROOT / entry["path"]
        assert path.is_file(), entry
        companions = (".md", ".tex") if entry["kind"] == "table" else (".pdf",)
        assert all(path.with_suffix(s).is_file() for s in companions), entry
    outputs = _outputs(nbformat.read(executed, as_version=4))
    figures = [e for e in log["outputs"] if e["kind"] == "figure"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= len(figures), f"{section.stem}: {len(figures)} figures written, {len(images)} shown"
    shown_html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    for entry in log["outputs"]:
        if entry["kind"] == "table":
            assert f"<caption>{entry['name']}: " in shown_html, f"{section.stem}: table {entry['name']} not shown"


@pytest.mark.notebook
@pytest.mark.parametrize("section", SECTIONS, ids=[s.stem for s in SECTIONS])
def test_executed_notebook_has_no_stderr_wall_no_machine_path_and_one_parameters_cell(
    section: Section, smoke_reports: Path
) -> None:
    executed = nbformat.read(smoke_reports / f"{section.stem}.ipynb", as_version=4)
    stderr = [o for o in _outputs(executed) if o.get("name") == "stderr"]
    lines = sum(len(o["text"].splitlines()) for o in stderr)
    assert lines <= MAX_STDERR_LINES, f"{section.stem}: {lines} stderr lines: {stderr[:2]}"
    html = (smoke_reports / f"{section.stem}.html").read_text()
    assert str(ROOT) not in html and "/tmp/" not in html and str(Path.home()) + "/" not in html
    for noise in ("IProgress", "TqdmWarning", "without encryption", "Traceback"):
        assert noise not in html, f"{section.stem}: {noise!r} in the page"
    assignments = re.findall(r'params_file</span>\s*<span class="o">=</span>', html)
    assert len(assignments) == 1, f"{section.stem}: the parameters cell appears {len(assignments)} times"


@pytest.mark.notebook
@pytest.mark.parametrize("where", ["notebooks", "elsewhere"])
def test_a_notebook_runs_from_notebooks_or_any_folder_with_the_same_parameters_cell(
    where: str, smoke_params_file: Path, smoke_reports: Path, tmp_path: Path
) -> None:
    """JupyterLab starts kernels in notebooks/; papermill may start one anywhere. The parameters cell names the
    file relative to the project root, and the notebook finds it from both."""
    import jupytext
    import papermill

    section = next(s for s in SECTIONS if s.stem.startswith("05_"))
    notebook = jupytext.read(section.source)
    notebook.metadata["kernelspec"] = {"name": kernel_name(), "display_name": "k", "language": "python"}
    source = tmp_path / "source.ipynb"
    nbformat.write(notebook, source)
    relative = smoke_params_file.relative_to(ROOT).as_posix()
    cwd = ROOT / "notebooks" if where == "notebooks" else tmp_path
    executed = papermill.execute_notebook(
        str(source),
        str(tmp_path / "executed.ipynb"),
        parameters={"params_file": relative},
        kernel_name=kernel_name(),
        cwd=str(cwd),
        progress_bar=False,
    )
    assert not any(o.get("output_type") == "error" for o in _outputs(executed))


@pytest.mark.notebook
def test_an_executed_section_is_up_to_date_until_an_output_changes(
    smoke_params_file: Path, smoke_reports: Path
) -> None:
    from lesionsignal.pipeline.runner import up_to_date, write_stamp

    params = load_params(smoke_params_file)
    section = SECTIONS[0]
    write_stamp(section, params, ROOT)
    assert up_to_date(section, params, ROOT)
    table = ROOT / next(e["path"] for e in _log(smoke_reports, section)["outputs"] if e["kind"] == "table")
    original = table.read_bytes()
    table.write_bytes(original + b"tampered\n")
    try:
        assert not up_to_date(section, params, ROOT)
    finally:
        table.write_bytes(original)
    assert up_to_date(section, params, ROOT)


@pytest.fixture
def case_folder(smoke_params_file: Path) -> Path:
    """A folder of its own inside the session's run folder, so a test's parameters have relative paths."""
    return run_folder("case-", smoke_params_file.parent)


def test_missing_input_files_stop_the_run_before_any_notebook_listing_them_all(
    case_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lesionsignal.pipeline.runner import main

    nih = {"name": "nih", "kind": "nih", "csv": "data/nih/Data_Entry_2017_v2020.csv", "image_dirs": ["data/nih/a"]}
    det = {"name": "det", "kind": "chestxdet10", "train_json": "x/train.json", "test_json": "x/test.json"}
    det["image_dirs"] = ["x"]
    params = run_params(case_folder, cohorts=[nih, det])
    assert main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "5 problem(s) to fix before the run" in err.splitlines()[0]
    for key, missing in (
        ("cohorts[0].csv", "data/nih/Data_Entry_2017_v2020.csv"),
        ("cohorts[0].image_dirs[0]", "data/nih/a"),
        ("cohorts[1].train_json", "x/train.json"),
        ("cohorts[1].test_json", "x/test.json"),
        ("cohorts[1].image_dirs[0]", "x"),
    ):
        assert f"  {key}: {missing} does not exist" in err
    reports = case_folder / "reports" / "smoke"
    assert sorted(p.name for p in reports.iterdir()) == ["preflight.json", "preflight.md"]  # no notebook ran


def test_a_typo_in_the_parameters_is_one_message_naming_file_and_key(
    case_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lesionsignal.pipeline.stages import main

    params = run_params(case_folder, probe={"n_bot": 10})
    assert main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    shown = params.relative_to(ROOT).as_posix()
    assert err.splitlines()[0] == (
        f"error: ParamsError: {shown}: probe.n_bot: unknown key; did you mean 'n_boot'? allowed here: alpha, "
        "c_grid, cnn_epochs, finetuned_cnn, folds, max_iter, n_boot, n_perm, paired_n_boot, seed, solver, workers"
    )
    assert "Traceback" not in err
    assert main(["--params", str(params), "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.notebook
def test_a_user_error_inside_a_notebook_ends_its_cell_with_one_message(
    case_folder: Path, smoke_reports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lesionsignal.pipeline.runner import main

    params = run_params(case_folder, gallery={"films": ["no_such_film"]})
    assert main(["--params", str(params), "--only", "01", "--no-html"]) == 1
    err = capsys.readouterr().err
    assert "ParamsError" in err and "gallery.films" in err and "no_such_film" in err
    executed = nbformat.read(Catalog(load_params(params), ROOT).reports / "01_perturbation_gallery.ipynb", 4)
    errors = [o for o in _outputs(executed) if o.get("output_type") == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "ParamsError"
    assert len(errors[0]["traceback"]) == 2  # the message and how to see the traceback


@pytest.mark.notebook
def test_the_report_site_and_preflight_carry_no_machine_path(smoke_reports: Path) -> None:
    for name in ("index.html", "preflight.md", "preflight.json"):
        text = (smoke_reports / name).read_text()
        assert str(ROOT) not in text and "/tmp/" not in text and str(Path.home()) + "/" not in text, name


@pytest.mark.notebook
def test_the_learning_checks_own_cohort_is_extracted_clean_and_checked(
    smoke_reports: Path, smoke_params_file: Path
) -> None:
    from lesionsignal.config.params import Analysis
    from lesionsignal.pipeline import embeddings, probes
    from lesionsignal.pipeline.stage import StageName, open_run, output

    params = load_params(smoke_params_file)
    own = [c.name for c in params.clean_only_cohorts()]
    assert own == ["learning_films"]
    run = open_run(smoke_params_file, ROOT)
    for source in embeddings.source_ids(params):  # no perturbed film of a clean-only cohort is extracted
        assert sorted(p.name for p in embeddings.folder(run, source, own[0]).iterdir()) == ["clean.npz"]
    learning = output(run, StageName.PROBES, probes.LEARNING)
    assert set(learning["dataset"]) == {c.name for c in params.cohorts_for(Analysis.LEARNING)}
    films = params.demo_config(params.cohort(own[0]))
    rows = learning[learning["dataset"] == own[0]]
    retrieval = rows[rows["check"].str.startswith("same-subject retrieval")]
    assert len(retrieval) == 4 and set(retrieval["n"]) == {films.n_images}  # every film is a query
    disease = rows[rows["check"].str.startswith("disease probes")]
    assert set(disease["n"]) == {round(films.test_fraction * films.n_subjects) * films.images_per_subject}
    assert rows[["value", "twin_value", "pixels"]].notna().all().all()
    # a finding too rare among 12 training films has no row, and is listed with its reason instead
    from lesionsignal.analysis.disease import DISEASES

    probed = {c.split(", ")[-1] for c in rows["check"] if c.startswith("disease probe: test AUC")}
    skipped = output(run, StageName.PROBES, probes.DISEASE_SKIPPED)
    listed = skipped[(skipped["dataset"] == own[0]) & (skipped["model"] == rows["encoder"].iloc[0])]
    assert probed and sorted(probed | set(listed["task"])) == sorted(DISEASES)
