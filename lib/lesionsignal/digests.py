"""Content keys for every cache: a canonical hash of values, and a hash of the code that decides them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path


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


def code_digest(modules: tuple[str, ...]) -> str:
    """Hash of the named package modules' source: editing any of them invalidates what they computed."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for name in modules:
        source = package / f"{name}.py"
        digest.update(source.read_bytes() if source.is_file() else name.encode())
    return digest.hexdigest()[:16]
