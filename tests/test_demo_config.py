"""The demo cohort configuration as a parameter-file section, its folder name, and the code in its cache keys."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml

from lesionsignal.core import digests
from lesionsignal.core.validate import ParamsError, build
from lesionsignal.demo import build as cohort_build
from lesionsignal.demo import prepare
from lesionsignal.demo.config import (
    DemoCohortConfig,
    NoduleClass,
    Variation,
    cohort_folder_name,
    output_parameters,
)
from lesionsignal.demo.prep_params import PrepParams

SECTION = """
n_images: 24
seed: 7
cardiomegaly_scale: [1.3, 1.6]
nodule:
  probability: 0.5
variation:
  rotation_deg: 5
  photons: [10000, 20000]
prep:
  n_slabs: 4
"""


def _error(mapping: dict) -> ParamsError:
    with pytest.raises(ParamsError) as info:
        build(DemoCohortConfig, mapping, source="x.yaml")
    return info.value


def test_a_parameter_section_builds_the_config_with_nested_overrides() -> None:
    config = build(DemoCohortConfig, yaml.safe_load(SECTION), source="x.yaml")
    expected = replace(
        DemoCohortConfig(),
        n_images=24,
        seed=7,
        cardiomegaly_scale=(1.3, 1.6),
        nodule=replace(NoduleClass(), probability=0.5),  # the nodule's other defaults stay
        variation=replace(Variation(), rotation_deg=5.0, photons=(1e4, 2e4)),
        prep=PrepParams(n_slabs=4),
    )
    assert config == expected
    assert config.nodule.diameter_mm == NoduleClass().diameter_mm != DemoCohortConfig().mass.diameter_mm
    assert build(DemoCohortConfig, {}, source="x.yaml") == DemoCohortConfig()


def test_every_field_round_trips_through_a_parameter_file() -> None:
    config = replace(DemoCohortConfig(), n_images=30, nodule=replace(NoduleClass(), satellites=(1, 2)))
    text = yaml.safe_dump(json.loads(json.dumps(asdict(config))))
    assert build(DemoCohortConfig, yaml.safe_load(text), source="x.yaml") == config


def test_a_bad_value_names_its_key() -> None:
    wrong_type = _error({"variation": {"heel": "high"}})
    assert wrong_type.key == "variation.heel" and "x.yaml" in str(wrong_type)
    out_of_range = _error({"nodule": {"probability": 1.5}})  # raised by the class's own check
    assert out_of_range.key == "nodule.probability" and "[0, 1]" in out_of_range.reason
    assert _error({"test_fraction": 1.0}).key == "test_fraction"
    assert _error({"mass": {"max_count": 0}}).key == "mass.max_count"
    assert _error({"prep": {"n_slabs": 0}}).key == "prep.n_slabs"
    assert _error({"variation": {"warp_mm": [8.0, 2.0]}}).key == "variation.warp_mm"
    assert _error({"canvas": 512}).key == "canvas"  # the canvas is the build's argument, not a setting


def test_folder_name_is_the_output_digest_of_config_and_canvas() -> None:
    config = DemoCohortConfig(n_images=12)
    name = cohort_folder_name(config, 512)
    assert re.fullmatch(r"demo-[0-9a-f]{12}", name)
    assert name == cohort_folder_name(replace(config, workers=7), 512)
    assert name != cohort_folder_name(config, 1024) and name != cohort_folder_name(replace(config, seed=1), 512)
    parameters = output_parameters(config, 512)
    assert parameters["canvas"] == 512 and "workers" not in parameters


def test_cache_keys_follow_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prepared CT's key and the cohort's digest hold the source of every module each imports, derived from
    the imports: an edit to preparation changes both, an edit to the cohort's outputs only the cohort's."""
    package = tmp_path / "lesionsignal"
    shutil.copytree(digests.PACKAGE_ROOT, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(digests, "PACKAGE_ROOT", package)
    checksums = {"volume": "a", "mask": "b", "structures": "c"}
    config = DemoCohortConfig()

    def keys() -> tuple[str, str]:
        prepared = prepare.prepared_store(tmp_path / "prepared").key(checksums, PrepParams())
        return prepared, cohort_build.cohort_digest(config, 1024, checksums)

    first = keys()
    assert keys() == first  # stable while nothing changes
    with (package / "demo" / "outputs.py").open("a") as handle:
        handle.write("\n# the build imports this, the preparation does not\n")
    second = keys()
    assert second[0] == first[0] and second[1] != first[1]
    with (package / "demo" / "landmarks.py").open("a") as handle:
        handle.write("\n# the preparation imports this\n")
    third = keys()
    assert third[0] != second[0] and third[1] != second[1]
