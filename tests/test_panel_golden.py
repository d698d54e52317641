"""Golden digests: the SHA-256 of every one of the 29 perturbed canvases of two fixture films (a downsized registry
film, tests/fixtures/panel_golden/, and a synthetic film larger than the canvas), in both conventions.

Any change to a perturbation, to placement or to the canvas step changes a digest and fails here. When the change
is deliberate, regenerate the digests from the project root and commit them with the change:

    PYTHONPATH=lib python tests/panel_golden.py --write

The spec convention's digests must also equal those computed before the conventions existed
(spec_before_issue12.json, never regenerated): adding the authors' convention left the project's unchanged.
"""

from __future__ import annotations

import json

import pytest
from panel_golden import DIGESTS, REGENERATE, SPEC_BEFORE, all_digests

from lesionsignal.stimuli.convention import Convention


@pytest.fixture(scope="module")
def computed() -> dict:
    return all_digests()


def mismatches(stored: dict, computed: dict) -> list[str]:
    problems = []
    for convention, expected in stored.items():
        got = computed.get(convention, {})
        if {k: v for k, v in expected.items() if k != "films"} != {k: v for k, v in got.items() if k != "films"}:
            problems.append(f"{convention}: settings {expected} != {got}")
        for film, digests in expected.get("films", {}).items():
            for name, digest in digests.items():
                if got.get("films", {}).get(film, {}).get(name) != digest:
                    problems.append(f"{convention} / {film} / {name}")
    return problems


def test_golden_digests_of_both_conventions(computed: dict) -> None:
    stored = json.loads(DIGESTS.read_text())
    assert set(stored) == {c.value for c in Convention}, f"conventions changed: regenerate with `{REGENERATE}`"
    problems = mismatches(stored, computed)
    assert not problems, (
        f"{len(problems)} perturbed canvas(es) changed: {', '.join(problems[:12])}. If the change is deliberate, "
        f"regenerate {DIGESTS.name} with `{REGENERATE}` and commit it with the change; otherwise a perturbation "
        "moved by accident."
    )


def test_every_condition_has_a_digest_and_the_conventions_differ(computed: dict) -> None:
    spec, authors = computed["spec"]["films"], computed["authors"]["films"]
    for film in ("real", "synthetic"):
        assert len(spec[film]) == len(authors[film]) == 30  # the canvas and 29 conditions
        # Every condition differs between the conventions on both films (the 8-bit resize alone moves the canvas).
        assert all(spec[film][k] != authors[film][k] for k in spec[film])


def test_spec_convention_is_unchanged_by_the_conventions(computed: dict) -> None:
    before = json.loads(SPEC_BEFORE.read_text())
    assert computed["spec"]["margin"] == 0.15
    assert computed["spec"]["films"] == before, (
        "the spec convention's perturbed canvases differ from those before the authors' convention was added; "
        "the spec convention must stay as the protocol describes it"
    )
