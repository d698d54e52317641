"""The paper's reported values, and "reported vs reproduced" tables for study runs.

The reported values are transcribed from the paper's tables (resources/paper_reference/, one CSV per table). They
are only ever set beside results of a study run (real data, real weights); demo and smoke results are not comparable
and ``compare`` refuses them instead of printing a misleading difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import pandas as pd

from lesionsignal.core.kinds import RunKind
from lesionsignal.paper.registry import TABLES


class NotComparable(ValueError):
    """A demo or smoke result was about to be set beside the paper's numbers."""


def reported(table: str) -> pd.DataFrame:
    """The paper's values for one table (``T2`` ... ``T12``)."""
    files = {name: t.reported for name, t in TABLES.items() if t.reported}
    if table not in files:
        raise KeyError(f"no reported values for {table!r} (have: {', '.join(files)})")
    source = resources.files("lesionsignal.paper") / "resources" / "paper_reference" / files[table]
    with source.open("r") as handle:
        return pd.read_csv(handle)


def compare(reproduced: pd.DataFrame, table: str, keys: Sequence[str], value: str, run: RunKind) -> pd.DataFrame:
    """Reproduced values beside the reported ones for every reported cell, with the difference.

    Reported cells with no reproduced counterpart stay in the table with an empty reproduced value, so a missing
    cell is visible rather than silently dropped.
    """
    if not run.comparable_with_paper:
        raise NotComparable(f"a {run.value} run: its numbers are not comparable with the paper")
    paper = reported(table)
    missing = [k for k in (*keys, value) if k not in paper.columns]
    if missing:
        raise KeyError(f"{table}: reported table has no columns {missing}")
    merged = paper[[*keys, value]].merge(
        reproduced[[*keys, value]], on=list(keys), how="left", suffixes=("_reported", "_reproduced")
    )
    merged["difference"] = merged[f"{value}_reproduced"] - merged[f"{value}_reported"]
    return merged
