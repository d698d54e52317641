"""Content keys for every cache: a canonical hash of values, and a hash of the code that computes them.

The code a computation depends on is derived, never listed by hand: ``code_digest`` follows the ``lesionsignal``
imports of a module (at any depth in the file, so function-local imports count) to their closure and hashes the
source of every module in it. Editing any of them changes the digest; editing a module outside it does not.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, is_dataclass
from pathlib import Path

PACKAGE = "lesionsignal"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def stable_digest(*parts: object) -> str:
    """SHA-256 over a canonical JSON rendering of dataclasses, enums, paths, tuples and plain values."""

    def plain(obj: object) -> object:
        if is_dataclass(obj) and not isinstance(obj, type):
            return {k: plain(v) for k, v in asdict(obj).items()}
        if isinstance(obj, dict):
            return {str(k): plain(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
        if isinstance(obj, list | tuple):
            return [plain(v) for v in obj]
        if hasattr(obj, "value") and hasattr(type(obj), "__members__"):
            return plain(obj.value)
        if isinstance(obj, str | int | float | bool) or obj is None:
            return obj
        if hasattr(obj, "items"):
            return plain(dict(obj.items()))
        return str(obj)

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def module_file(name: str, root: Path) -> Path | None:
    """The source file of package module ``name`` (``lesionsignal.a.b``) under ``root``, or None."""
    if name != PACKAGE and not name.startswith(f"{PACKAGE}."):
        return None
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(source: str, where: Path) -> set[str]:
    """Package modules a source file imports (``from pkg.mod import name`` may name a submodule too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=str(where))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(f"{PACKAGE}.")}


def import_closure(modules: Iterable[str], root: Path | None = None) -> dict[str, Path]:
    """Every package module reachable from ``modules`` through imports, with the parent packages of each.

    ``root`` is the package folder to read (default: this installed package's)."""
    root = root or PACKAGE_ROOT
    modules = list(modules)
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:
            if name in modules:
                raise ModuleNotFoundError(f"no module {name!r} under {root}")
            continue  # ``from pkg.mod import function``: the name is not a module
        seen[name] = path
        parents = [".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)]
        todo.extend(parents)
        todo.extend(_imported(path.read_text(encoding="utf-8"), path))
    return dict(sorted(seen.items()))


def code_digest(*modules: str, root: Path | None = None) -> str:
    """Hash of the source of every module the named modules import, directly or not (themselves included)."""
    digest = hashlib.sha256()
    for name, path in import_closure(modules, root).items():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
