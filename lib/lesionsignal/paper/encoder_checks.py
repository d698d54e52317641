"""Has the trained encoder learned? The learning-check table and the token-PCA figure, trained beside its twin."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from lesionsignal.analysis.learning import LEARNING_COLUMNS


def _interval(value: float, low: float, high: float, digits: int = 3) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


PIXELS_COLUMN = "films' own pixels, 64 x 64 [95 % CI]"


def learning_table(cells: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    """One row per (check, dataset, trained encoder): trained, twin and difference, each with its 95 % interval,
    and the films' own pixels on the same check (n/a where a recorded check has no pixel reference)."""
    missing = [c for c in LEARNING_COLUMNS if c not in cells.columns]
    if missing:
        raise ValueError(f"learning-check cells lack columns {missing}")
    rows = []
    for row in cells.itertuples(index=False):
        rows.append(
            {
                "check": row.check,
                "dataset": row.dataset,
                "trained encoder": labels.get(row.encoder, row.encoder),
                "trained [95 % CI]": _interval(row.value, row.ci_low, row.ci_high),
                "random-init twin [95 % CI]": _interval(row.twin_value, row.twin_ci_low, row.twin_ci_high),
                "difference [95 % CI]": _interval(row.difference, row.difference_ci_low, row.difference_ci_high),
                "interval excludes 0": bool(row.difference_ci_low > 0 or row.difference_ci_high < 0),
                PIXELS_COLUMN: _interval(row.pixels, row.pixels_ci_low, row.pixels_ci_high),
                "n": int(row.n),
                "patients": int(row.patients),
            }
        )
    return pd.DataFrame(rows)


def learning_reading(cells: pd.DataFrame) -> str:
    """One line per check: trained against twin, the paired difference and what its interval says. The notebook
    prints it under the table, so the reading follows the numbers of whatever weights are committed."""
    lines = []
    for row in cells.itertuples(index=False):
        low, high = row.difference_ci_low, row.difference_ci_high
        if low > 0:
            verdict = "the trained encoder is ahead (interval above 0)"
        elif high < 0:
            verdict = "the trained encoder is behind (interval below 0)"
        else:
            verdict = "not separated (interval includes 0)"
        pixels = "" if not np.isfinite(row.pixels) else f"; the films' own pixels: {row.pixels:.3f}"
        lines.append(
            f"{row.dataset} / {row.check}: {row.value:.3f} against the twin's {row.twin_value:.3f}, difference "
            f"{row.difference:+.3f} [{low:+.3f}, {high:+.3f}]: {verdict}{pixels}"
        )
    return "\n".join(lines)


TRAINING_LOG = "training_log.json"  # written into the model folder by make demo-encoder (training.model_folder)


def card_evaluation(folder: Path) -> pd.DataFrame:
    """The learning checks the training command recorded in a trained model folder (empty when it has none)."""
    path = Path(folder) / TRAINING_LOG
    if not path.is_file():
        return pd.DataFrame(columns=list(LEARNING_COLUMNS))
    rows = json.loads(path.read_text()).get("evaluation", [])
    return pd.DataFrame(rows, columns=list(LEARNING_COLUMNS))


def token_map_figure(arrays: Mapping[str, np.ndarray], pairs: list[tuple[str, str]], labels: Mapping[str, str]):
    """Rows: films. Columns: the film, then per (trained, twin) pair the trained encoder's token PCA and the twin's."""
    import matplotlib.pyplot as plt

    films = arrays["films"]
    ids = [str(i) for i in arrays["image_ids"]]
    columns = [("film", None)] + [(e, e) for pair in pairs for e in pair]
    fig, axes = plt.subplots(
        len(films), len(columns), figsize=(2.3 * len(columns), 2.35 * len(films) + 0.6), squeeze=False
    )
    for r, film in enumerate(films):
        for c, (title, encoder) in enumerate(columns):
            ax = axes[r, c]
            if encoder is None:
                ax.imshow(film, cmap="gray", vmin=0, vmax=255)
                ax.set_ylabel(ids[r], fontsize=7)
            else:
                ax.imshow(arrays[f"maps/{encoder}"][r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                if encoder is None:
                    ax.set_title(title, fontsize=8)
                else:
                    explained = arrays[f"explained/{encoder}"]
                    share = f"PCs 1-3: {100 * float(np.sum(explained)):.0f} % of variance"
                    ax.set_title(f"{_wrap(labels.get(encoder, encoder))}\n{share}", fontsize=7)
    fig.suptitle("Patch tokens as colours: first three principal components (fitted over these films)", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    return fig


def _wrap(text: str, width: int = 30) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])
