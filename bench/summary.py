"""The Markdown summary of a `make bench` run, beside the recorded reference runs a reader can compare it with.

    python bench/summary.py [--results bench/results] [--reference bench/reference]

Each benchmark writes one JSON file with its ``machine`` (lesionsignal.core.machine) and its ``headline``: a list of
{"what", "value", "target"} rows, each ratio measured within the one run. This script tabulates the headlines of
bench/results/*.json into bench/results/SUMMARY.md and, for every folder of bench/reference/ holding a file of the
same name, the same row from that recorded run and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lesionsignal.core.machine import machine_line


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")  # a pipe inside a cell would end it


def _value(row: dict) -> str:
    value = row["value"]
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _load(folder: Path) -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def summary(results: Path, reference: Path) -> str:
    runs = _load(results)
    folders = sorted(f for f in reference.iterdir() if f.is_dir()) if reference.is_dir() else []
    references = {folder.name: _load(folder) for folder in folders}
    lines = ["# Benchmarks", ""]
    if not runs:
        return "\n".join([*lines, f"No results in {results}: run `make bench`.", ""])
    for name, run in runs.items():
        lines += [f"## {run.get('benchmark', name)} (`{name}`)", "", f"This run: {machine_line(run['machine'])}.", ""]
        recorded = {ref: files[name] for ref, files in references.items() if name in files}
        header = ["what", "this run", "target", *(f"reference `{ref}`" for ref in recorded)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in run.get("headline", []):
            cells = [row["what"], _value(row), row.get("target") or ""]
            for ref_run in recorded.values():
                match = next((r for r in ref_run.get("headline", []) if r["what"] == row["what"]), None)
                cells.append(_value(match) if match else "")
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        for ref, ref_run in recorded.items():
            lines.append(f"\nReference `{ref}` ran on {machine_line(ref_run['machine'])}.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    parser.add_argument("--reference", type=Path, default=Path("bench/reference"))
    args = parser.parse_args()
    text = summary(args.results, args.reference)
    out = args.results / "SUMMARY.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
