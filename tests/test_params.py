"""Parameter files parse into typed objects, and every kind of mistake names the file, the key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from lesionsignal.config.params import Params, RunKind, load_params
from lesionsignal.core.validate import ParamsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo", "smoke", "paper"])
def test_shipped_params_parse(name: str) -> None:
    params = load_params(ROOT / "params" / f"{name}.yaml")
    assert isinstance(params, Params)
    assert params.name == name
    assert params.panel.canvas_size == 1024


def test_run_kinds_and_labels() -> None:
    demo = load_params(ROOT / "params" / "demo.yaml")
    paper = load_params(ROOT / "params" / "paper.yaml")
    assert demo.run is RunKind.DEMO and not demo.run.comparable_with_paper and demo.label.needs_footer
    assert "not comparable" in demo.label.text and "DEMO" in demo.label.text
    assert paper.run is RunKind.STUDY and paper.run.comparable_with_paper and not paper.label.needs_footer
    smoke = load_params(ROOT / "params" / "smoke.yaml")
    assert smoke.run is RunKind.SMOKE and not smoke.run.comparable_with_paper and "SMOKE" in smoke.label.text


def test_results_digest_ignores_speed_and_presentation(tmp_path: Path) -> None:
    base = load_params(ROOT / "params" / "smoke.yaml")
    text = (ROOT / "params" / "smoke.yaml").read_text()
    more_workers = text.replace("  workers: 1\n  chunk_size: 8", "  workers: 2\n  chunk_size: 8")
    faster = load_params(_write(tmp_path, more_workers))
    assert faster.extraction.workers == 2 and faster.digest() != base.digest()
    assert faster.results_digest() == base.results_digest()
    moved = load_params(_write(tmp_path, text.replace("margin: 0.15", "margin: 0.2")))
    assert moved.results_digest() != base.results_digest()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> ParamsError:
    with pytest.raises(ParamsError) as info:
        load_params(_write(tmp_path, text))
    return info.value


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: x\nrun: demo\npanel:\n  margn: 0.2\n")
    assert err.key == "panel.margn"
    assert "unknown key" in err.reason and "margin" in err.reason
    assert str(tmp_path / "p.yaml") in str(err)


def test_wrong_type(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: x\nrun: demo\npanel:\n  canvas_size: big\n")
    assert err.key == "panel.canvas_size" and "integer" in err.reason


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: x\nrun: demo\npanel:\n  base_seed: true\n")
    assert err.key == "panel.base_seed"


def test_bad_enum(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: x\nrun: production\n")
    assert err.key == "run" and "production" in err.reason and "demo" in err.reason


def test_missing_required_key(tmp_path: Path) -> None:
    err = _error(tmp_path, "run: demo\n")
    assert err.key == "name" and "missing" in err.reason


def test_value_check_in_post_init(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: x\nrun: demo\npanel:\n  margin: 0.7\n")
    assert err.key == "panel.margin" and "0.5" in err.reason


def test_unknown_condition(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: x\nrun: demo\npanel:\n  conditions: [C1, C3]\n")
    assert err.key == "panel.conditions[1]" and "C3" in err.reason


def test_missing_file() -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params("params/does-not-exist.yaml")


def test_not_yaml(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: [unclosed\n")
    assert "YAML" in err.reason


def test_digest_ignores_file_name_but_not_values(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("name: x\nrun: demo\n")
    b.write_text("name: x\nrun: demo\n")
    assert load_params(a).digest() == load_params(b).digest()
    b.write_text("name: x\nrun: demo\npanel:\n  margin: 0.2\n")
    assert load_params(a).digest() != load_params(b).digest()


def test_paper_params_name_every_study_input_and_check_files_lists_them() -> None:
    paper = load_params(ROOT / "params" / "paper.yaml")
    assert {c.kind.value for c in paper.cohorts} == {"real_films", "nih", "mimic", "institutional", "chestxdet10"}
    with pytest.raises(ParamsError) as info:
        paper.check_files(ROOT)
    message = str(info.value)
    assert "paper.yaml" in message and "cohorts[1].csv" in message and "cohorts[4].train_json" in message
    assert "cohorts[4].name_map_jsons[1]" in message and "cohorts[4].image_dirs[0]" in message
    det = paper.cohort("chestxdet10")
    assert (det.box_corners, det.split, det.seed) == ("inclusive", "official", 42)


def test_cohort_kind_requires_its_files(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: x\nrun: study\ncohorts:\n  - {name: n, kind: nih}\n")
    assert err.key == "cohorts[0].csv" and "required for a nih cohort" in err.reason


_DET = "name: x\nrun: study\ncohorts:\n  - {name: d, kind: chestxdet10, train_json: a.json, test_json: b.json, "


@pytest.mark.parametrize(
    ("fields", "key", "reason"),
    [
        ("image_dirs: [i], root: i", "cohorts[0].root", "ChestX-Det10 images are found in image_dirs"),
        ("root: i", "cohorts[0].root", "move it there"),
        ("image_dirs: [i], name_map_jsons: [a.json]", "cohorts[0].name_map_jsons", "train and test JSONs"),
        ("image_dirs: [i], name_map_jsons: [a, b], name_map_csv: m.csv", "cohorts[0].name_map_csv", "not both"),
        ("image_dirs: [i], box_corners: closed", "cohorts[0].box_corners", "'closed' is not one of"),
        ("image_dirs: [i], split: random", "cohorts[0].split", "['official', 'patient_disjoint']"),
    ],
)
def test_chestxdet10_fields_are_checked(tmp_path: Path, fields: str, key: str, reason: str) -> None:
    err = _error(tmp_path, _DET + fields + "}\n")
    assert err.key == key and reason in err.reason


def test_chestxdet10_defaults_and_optional_files(tmp_path: Path) -> None:
    text = _DET + "image_dirs: [i, j], name_map_csv: m.csv}\n"
    det = load_params(_write(tmp_path, text)).cohorts[0]
    assert (det.box_corners, det.split, det.name_map_jsons) == ("inclusive", "official", ())
    keys = [key for key, _ in det.required_files()]
    assert keys == ["train_json", "test_json", "image_dirs[0]", "image_dirs[1]", "name_map_csv"]


def test_chestxdet10_only_fields_are_refused_on_other_kinds(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: x\nrun: study\ncohorts:\n  - {name: n, kind: nih, csv: a.csv, image_dirs: [i], "
                 "split: patient_disjoint}\n")  # fmt: skip
    assert err.key == "cohorts[0].split" and "only for chestxdet10 cohorts (this one is nih)" in err.reason


def test_duplicate_cohort_names(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: x\nrun: demo\ncohorts:\n  - {name: a, kind: demo}\n  - {name: a, kind: demo}\n")
    assert err.key == "cohorts" and "'a'" in err.reason


def test_shard_index_checked(tmp_path: Path) -> None:
    err = _error(tmp_path, "name: x\nrun: demo\nextraction:\n  shard_index: 2\n  shard_count: 2\n")
    assert err.key == "extraction.shard_index"


def test_every_problem_of_a_parameter_file_is_named_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nrun: demo\nprobe:\n  n_bot: 3\n  folds: one\npanel:\n  margin: 0.9\nextraction:\n  devise: cpu\n"
    )
    with pytest.raises(ParamsError) as caught:
        load_params(bad)
    keys = [key for key, _ in caught.value.problems]
    assert sorted(keys) == ["extraction.devise", "panel.margin", "probe.folds", "probe.n_bot"]
    text = str(caught.value)
    assert (
        text.startswith(f"{bad}: 4 problems:") and "did you mean 'device'?" in text and "did you mean 'n_boot'?" in text
    )


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("operating_points:\n  prevalence: 3\n", "operating_points.prevalence", "fraction"),
        ("operating_points:\n  specificities: [0.9, 1.0]\n", "operating_points.specificities[1]", "between 0 and 1"),
        ("operating_points:\n  specificities: []\n", "operating_points.specificities", "at least one"),
        ("lesions:\n  size_strata: [[0.5], [0.7, 0.3]]\n", "lesions.size_strata[1]", "increasing"),
        ("lesions:\n  jitter: [0, -1]\n", "lesions.jitter[1]", "non-negative"),
        ("lesions:\n  power: 80\n", "lesions.power", "between 0 and 1"),
    ],
)
def test_reporting_settings_are_checked_before_compute(tmp_path: Path, text: str, key: str, words: str) -> None:
    err = _error(tmp_path, "name: x\nrun: demo\n" + text)
    assert err.key == key and words in err.reason


def test_reporting_defaults() -> None:
    params = load_params(ROOT / "params" / "paper.yaml")
    assert params.operating_points.specificities == (0.90, 0.95) and params.operating_points.prevalence == 0.03
    assert params.lesions.jitter == (0.0, 0.5, 1.0, 2.0) and params.lesions.compare_splits
    assert params.lesions.size_strata[0] == (0.5,) and params.lesions.second_pass


def test_a_demo_cohort_of_its_own_films(tmp_path: Path) -> None:
    text = (
        "name: x\nrun: demo\ndemo_cohort: {n_images: 40, seed: 42}\ncohorts:\n  - {name: a, kind: demo}\n"
        "  - {name: b, kind: demo, uses: [learning], generator: {n_images: 20, test_fraction: 0.5, seed: 7}}\n"
    )
    params = load_params(_write(tmp_path, text))
    a, b = params.demo_config(params.cohort("a")), params.demo_config(params.cohort("b"))
    assert (a.n_images, a.seed, a.test_fraction) == (40, 42, 0.2)
    assert (b.n_images, b.seed, b.test_fraction) == (20, 7, 0.5)
    assert b.variation == a.variation  # everything not given comes from the demo_cohort section
    assert [c.name for c in params.clean_only_cohorts()] == ["b"]  # learning without panel: clean films only


def test_two_demo_cohorts_may_not_share_a_subject(tmp_path: Path) -> None:
    text = (
        "name: x\nrun: demo\ndemo_cohort: {n_images: 40, seed: 42}\ncohorts:\n  - {name: a, kind: demo}\n"
        "  - {name: b, kind: demo, uses: [learning], generator: {n_images: 20}}\n"  # the same seed: a's first subjects
    )
    err = _error(tmp_path, text)
    assert err.key == "cohorts[1].generator" and "would draw 10 subjects of cohort 'a'" in err.reason
    assert "seed of its own" in err.reason


def test_a_demo_generator_is_validated_and_only_for_demo_cohorts(tmp_path: Path) -> None:
    bad = "name: x\nrun: demo\ncohorts:\n  - {name: b, kind: demo, generator: {test_fraction: 1.5, seed: 7}}\n"
    err = _error(tmp_path, bad)
    assert err.key == "cohorts[0].generator.test_fraction" and "[0, 1)" in err.reason
    other = (
        "name: x\nrun: study\ncohorts:\n  - {name: n, kind: nih, csv: a.csv, image_dirs: [i], generator: {seed: 7}}\n"
    )
    err = _error(tmp_path, other)
    assert err.key == "cohorts[0].generator" and "only for demo cohorts (this one is nih)" in err.reason
    unknown = "name: x\nrun: demo\ncohorts:\n  - {name: b, kind: demo, generator: {canvas: 512}}\n"
    err = _error(tmp_path, unknown)
    assert err.key == "cohorts[0].generator" and "allowed here: images_per_subject, n_images, seed" in err.reason
