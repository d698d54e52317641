"""Whether two generator configurations share a subject: the check that keeps a training cohort apart from the demo."""

from __future__ import annotations

from lesionsignal.demo.anatomy import Anatomy
from lesionsignal.demo.config import DemoCohortConfig
from lesionsignal.demo.sampling import sample_anatomy


def shared_subjects(a: DemoCohortConfig, b: DemoCohortConfig) -> list[tuple[int, int]]:
    """Pairs (subject of ``a``, subject of ``b``) with the same anatomy: the same synthetic person in both cohorts.

    Cohorts with different seeds share none; one that is a prefix of another (same seed, fewer films) shares its
    subjects. Anatomy is drawn per (seed, subject), so equal anatomy means the same draw.
    """
    in_b: dict[Anatomy, int] = {}
    for subject in range(b.n_subjects):
        in_b.setdefault(sample_anatomy(b, subject), subject)
    pairs = ((subject, in_b.get(sample_anatomy(a, subject))) for subject in range(a.n_subjects))
    return [(i, j) for i, j in pairs if j is not None]
