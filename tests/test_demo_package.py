"""The demo package's layering: what its modules may import, in which order, and what the configuration loads."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import lesionsignal.demo

DEMO = Path(lesionsignal.demo.__file__).parent
ALLOWED = ("lesionsignal.core", "lesionsignal.data", "lesionsignal.demo")


def _package_imports(path: Path) -> set[str]:
    """The lesionsignal modules a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "lesionsignal.demo":  # ``import`` of modules
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {n for n in found if n.startswith("lesionsignal")}


def test_demo_imports_only_core_data_and_itself_without_cycles() -> None:
    graph = {}
    for path in sorted(DEMO.glob("*.py")):
        imports = _package_imports(path)
        outside = sorted(n for n in imports if not n.startswith(ALLOWED))
        assert not outside, f"{path.name} imports {outside}"
        graph[path.stem] = {n.rsplit(".", 1)[-1] for n in imports if n.startswith("lesionsignal.demo.")}
    assert graph["__init__"] == set()  # importing one module loads no other
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle in lesionsignal.demo: {err.args[1]}") from None
    assert order.index("config") < order.index("sampling") < order.index("build")


def test_the_configuration_loads_no_image_library() -> None:
    # A parameter file's demo_cohort section is this dataclass: reading parameters must stay cheap.
    code = "import sys, lesionsignal.demo.config; print(sorted({'cv2', 'nibabel', 'scipy'} & set(sys.modules)))"
    path = os.pathsep.join([str(DEMO.parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
