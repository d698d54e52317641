"""Perturbed canvases digested by a fresh Python interpreter: a determinism check that no state of the test process
(seeded generators, caches, thread settings) can satisfy on its own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import hashlib, json, sys
import numpy as np
from lesionsignal.stimuli import inject as ij
names, bases = json.loads(sys.argv[2]), json.loads(sys.argv[3])
canvas = np.load(sys.argv[1])
out = {}
for name in names:
    for base in bases:
        r = ij.apply(canvas, name, base)
        out[name + '/' + base] = [hashlib.sha256(r.image.tobytes()).hexdigest(), list(r.box.as_tuple())]
print(json.dumps(out))
"""


def fresh_digests(canvas: np.ndarray, folder: Path, names: Sequence[str], basenames: Sequence[str]) -> dict[str, list]:
    """``{"condition/basename": [sha256 of the perturbed canvas, box]}`` computed in a new interpreter from the same
    canvas bytes (saved in ``folder``)."""
    path = Path(folder) / "canvas.npy"
    np.save(path, canvas)
    args = [sys.executable, "-c", _SCRIPT, str(path), json.dumps(list(names)), json.dumps(list(basenames))]
    done = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout)
