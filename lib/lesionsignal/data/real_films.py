"""The registry's real films (``registry.real_films``) as a test-only manifest with one-hot word labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lesionsignal.data.manifest import Manifest, Record, Split
from lesionsignal.data.tables import sorted_manifest


def read_real_films(films: Sequence[tuple[str, str | Path, str, str]], *, cohort: str = "real_films") -> Manifest:
    """Real films (film id, path, group, label) as a test-only manifest; each film is its own patient.

    ``label`` is a word ("normal", "pneumonia", "unknown"): each distinct word becomes a 0/1 label column
    (one-hot), so nothing is lost and the labels stay binary. ``group`` goes to ``Record.group``.
    """
    words = sorted({str(label) for *_, label in films})
    records = (
        Record(
            Path(path).name,
            Path(path),
            film_id,
            Split.TEST.value,
            "",
            tuple((word, int(word == str(label))) for word in words),
            group=group,
        )
        for film_id, path, group, label in films
    )
    return sorted_manifest(cohort, records, words)
