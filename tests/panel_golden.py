"""Golden digests of the panel: SHA-256 of every perturbed canvas of two fixture films, in both conventions.

Regenerate on purpose (after a deliberate change to a perturbation or to the canvas), from the project root:

    PYTHONPATH=lib python tests/panel_golden.py --write

and commit the new tests/fixtures/panel_golden/digests.json with the change that explains it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from lesionsignal.core.canvas import load_canvas, to_canvas
from lesionsignal.stimuli.convention import Convention, PanelSwitches
from lesionsignal.stimuli.inject import apply
from lesionsignal.stimuli.panel import condition_names

FOLDER = Path(__file__).resolve().parent / "fixtures" / "panel_golden"
DIGESTS = FOLDER / "digests.json"
SPEC_BEFORE = FOLDER / "spec_before_issue12.json"  # the spec convention's digests before the conventions existed
REAL_FILM = FOLDER / "person1951_bacteria_4882_small.png"  # a registry film, area-downsized to 508 x 328
SYNTHETIC_NAME = "synthetic_film.png"
BASE_SEED = 42
# Each convention at the margin its runs use: the demo's 0.15 and the paper's (the authors') 0.20.
MARGINS = {Convention.SPEC: 0.15, Convention.AUTHORS: 0.20}
REGENERATE = "PYTHONPATH=lib python tests/panel_golden.py --write"


def synthetic_film() -> np.ndarray:
    """A 1280 x 1152 uint8 film-like image (bright mediastinum, ripples, noise): larger than the canvas, so the
    canvas step downsizes it, where the two resize arithmetics differ most."""
    rng = np.random.default_rng(20261129)
    rows, cols = 1280, 1152
    y = np.linspace(0, 1, rows)[:, None]
    x = np.linspace(0, 1, cols)[None, :]
    base = 60 + 120 * np.exp(-((x - 0.5) ** 2) / 0.08) * (0.6 + 0.4 * y) + 25 * np.cos(18 * y) * np.sin(11 * x)
    noisy = base + rng.normal(0, 6, size=(rows, cols))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def fixture_canvases(switches: PanelSwitches) -> dict[str, tuple[str, np.ndarray]]:
    """Fixture name -> (basename that seeds the placement, canvas made with the switches' resize)."""
    return {
        "real": (REAL_FILM.name, load_canvas(REAL_FILM, resample=switches.resample)),
        "synthetic": (SYNTHETIC_NAME, to_canvas(synthetic_film(), resample=switches.resample)),
    }


def film_digests(canvas: np.ndarray, basename: str, margin: float, switches: PanelSwitches) -> dict[str, str]:
    """The canvas's digest, then one per condition of the panel."""
    digests = {"canvas": sha256(canvas)}
    for name in condition_names():
        result = apply(canvas, name, basename, margin=margin, base_seed=BASE_SEED, switches=switches)
        digests[name] = sha256(result.image)
    return digests


def convention_digests(convention: Convention) -> dict[str, object]:
    switches = PanelSwitches.for_convention(convention)
    margin = MARGINS[convention]
    films = {
        fixture: film_digests(canvas, basename, margin, switches)
        for fixture, (basename, canvas) in fixture_canvases(switches).items()
    }
    return {"margin": margin, "base_seed": BASE_SEED, "films": films}


def all_digests() -> dict[str, object]:
    return {convention.value: convention_digests(convention) for convention in Convention}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"overwrite {DIGESTS.name}")
    args = parser.parse_args()
    text = json.dumps(all_digests(), indent=1, sort_keys=True) + "\n"
    if args.write:
        DIGESTS.write_text(text)
        print(f"wrote {DIGESTS}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
