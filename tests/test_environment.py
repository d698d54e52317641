"""The environment is described twice (pip and conda); the two must not drift apart."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"unpinned requirement {line!r}"
        pins[name.strip().lower()] = version.strip()
    return pins


def test_requirements_are_all_pinned_and_match_environment_yml() -> None:
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = _pins(pip_section)
    assert conda_pins == requirements
    assert "python=3.11" in env["dependencies"]


def test_constraints_agree_with_requirements() -> None:
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    for name, version in requirements.items():
        assert constraints.get(name) == version, f"{name}: requirements {version}, constraints {constraints.get(name)}"


def test_torchvision_imports_with_or_without_its_compiled_ops() -> None:
    from lesionsignal.core.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
