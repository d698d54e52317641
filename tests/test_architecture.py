"""The package's shape: subpackages in the order data flows, no lower layer importing a higher one, small modules
that say what they hold, and documents that point only at files inside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from lesionsignal.core.digests import PACKAGE_ROOT, import_closure

ROOT = Path(__file__).resolve().parents[1]
# The data flow: each subpackage may import itself and the ones before it, never one after it.
LAYERS = ("core", "data", "demo", "stimuli", "features", "training", "analysis", "paper", "config", "pipeline")
MODULES = sorted(p for p in PACKAGE_ROOT.rglob("*.py") if p.name != "__init__.py")
MAX_LINES = 600


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE_ROOT).parts[0]


def _package_imports(path: Path) -> set[str]:
    """Every ``lesionsignal.<subpackage>`` a module imports, at any depth (function-local imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found.update(n.split(".")[1] for n in names if n.startswith("lesionsignal.") and n.count(".") >= 1)
    return found


def test_every_module_belongs_to_a_layer() -> None:
    assert {_layer(p) for p in MODULES} == set(LAYERS)
    assert [p.name for p in PACKAGE_ROOT.glob("*.py")] == ["__init__.py"], "modules live in the subpackages"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE_ROOT).as_posix())
def test_no_module_imports_a_later_layer(path: Path) -> None:
    allowed = set(LAYERS[: LAYERS.index(_layer(path)) + 1])
    assert _package_imports(path) <= allowed, f"{path.name} imports {sorted(_package_imports(path) - allowed)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE_ROOT).as_posix())
def test_modules_are_short_and_say_what_they_hold(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES
    assert ast.get_docstring(ast.parse(text)), f"{path.name} has no module docstring"


def test_the_import_closure_of_a_step_is_derived_from_its_imports() -> None:
    closure = import_closure(["lesionsignal.analysis.finetune"])
    assert "lesionsignal.analysis.stats" in closure and "lesionsignal.core.canvas" in closure
    assert "lesionsignal.paper.figures" not in closure and "lesionsignal.features.encoder" not in closure
    # a function-local import counts: the encoder's own import of torchvision's helper module does
    assert "lesionsignal.core.torch_compat" in import_closure(["lesionsignal.features.encoder"])
    with pytest.raises(ModuleNotFoundError):
        import_closure(["lesionsignal.no_such_module"])


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "notebooks").glob("*.py"))]


@pytest.mark.parametrize("path", _documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documents_point_only_inside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "../shared" not in text and "SPEC.md" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):  # Markdown links to files
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.name} links to a missing file {target}"
