"""The stages of a run, what each reads, and running them: ``ensure`` from a notebook, or this module's CLI.

    python -m lesionsignal.pipeline.stages --params params/demo.yaml [--stage embeddings]

runs the named stage (default: every stage) and whatever it reads that is missing, outside any notebook (on a
cluster node, say); the notebooks then find the outputs and only read them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from types import MappingProxyType

from lesionsignal.core.errors import user_errors_exit
from lesionsignal.pipeline import cohorts, depth, embeddings, lesions, probes
from lesionsignal.pipeline.stage import (
    Run,
    Stage,
    StageIncomplete,
    StageName,
    done_key,
    execute,
    open_run,
    stage_key,
)

STAGES: Mapping[StageName, Stage] = MappingProxyType(
    {
        StageName.DEMO_COHORT: Stage(StageName.DEMO_COHORT, "01", (), cohorts.__name__, cohorts.compute_demo_cohort),
        StageName.COHORTS: Stage(
            StageName.COHORTS, "01", (StageName.DEMO_COHORT,), cohorts.__name__, cohorts.compute_cohorts
        ),
        StageName.EMBEDDINGS: Stage(
            StageName.EMBEDDINGS, "02", (StageName.COHORTS,), embeddings.__name__, embeddings.compute
        ),
        StageName.PROBES: Stage(StageName.PROBES, "03", (StageName.EMBEDDINGS,), probes.__name__, probes.compute),
        StageName.LESIONS: Stage(StageName.LESIONS, "04", (StageName.COHORTS,), lesions.__name__, lesions.compute),
        StageName.DEPTH: Stage(StageName.DEPTH, "07", (StageName.COHORTS,), depth.__name__, depth.compute),
    }
)


def _ensure(run: Run, name: StageName, announce: bool) -> str | None:
    """The stage's key once its outputs are complete (running what is missing), or None when they cannot be."""
    stage = STAGES[name]
    upstream = []
    for other in stage.upstream:
        key = _ensure(run, other, announce=True)
        if key is None:
            return None
        upstream.append(key)
    key = stage_key(run, stage, upstream)
    if done_key(run.catalog.stage(name)) == key:
        return key
    return key if execute(run, stage, key, announce=announce) else None


def ensure(run: Run, name: StageName) -> bool:
    """Make the stage's outputs exist for this run's parameters and code; False when they cannot be finished yet
    (a shard of a split extraction: the other shards' units are missing)."""
    return _ensure(run, name, announce=False) is not None


def require(run: Run, name: StageName) -> None:
    """``ensure``, or StageIncomplete saying what is missing."""
    if _ensure(run, name, announce=True) is None:
        raise StageIncomplete(
            f"[{run.name}] stage {name} cannot finish yet: extraction units of other shards are missing "
            f"(extraction.shard_count = {run.params.extraction.shard_count}); run every shard, then run again"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lesionsignal.pipeline.stages", description=__doc__)
    parser.add_argument("--params", required=True)
    parser.add_argument("--stage", choices=[str(s) for s in StageName], action="append")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of a user error")
    args = parser.parse_args(argv)
    return user_errors_exit(lambda: _run(args.params, args.stage), verbose_flag=args.verbose)


def _run(params_file: str, names: list[str] | None) -> int:
    run = open_run(params_file)
    for name in names or list(StageName):
        complete = ensure(run, StageName(name))
        print(f"[{run.name}] stage {name}: {'done' if complete else 'waiting for other shards'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
