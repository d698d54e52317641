"""The paper's controlled-stimulus tables as slices of one long results frame, and the cached detection run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesionsignal.analysis.detection import (
    RESULT_COLUMNS,
    CellSpec,
    DetectionError,
    file_cells,
    probe_store,
    run_files_cached,
)
from lesionsignal.config.params import ProbeParams
from lesionsignal.core.files import read_frame, save_arrays, write_frame
from lesionsignal.core.kinds import ENCODER_POOLS, RunKind
from lesionsignal.paper import panel_tables as pt
from lesionsignal.paper import registry
from lesionsignal.paper.figures import plot_directional_curves, plot_heatmap
from lesionsignal.paper.reference import NotComparable
from lesionsignal.pipeline.probes import probe_config

ENCODERS = ("enc-a", "enc-b")
DATASETS = ("nih", "mimic")
CONDITIONS = (
    "C1",
    "S8",
    "iso_blur_4",
    "iso_blur_8",
    "dir_cranio_L11_P16",
    "dir_cranio_L21_P64",
    "dir_lateral_L21_P64",
    "reticular_fine_32",
    "ground_glass_64",
)
POOL_OFFSET = {"cls": 0.0, "patch_mean": 0.01, "patch_local": 0.3, "raw_global": 0.0, "raw_oracle": 0.2}


def hand_auc(model: str, dataset: str, pool: str, condition: str) -> float:
    """A distinct, known value for every cell."""
    return round(
        0.5
        + 0.001 * CONDITIONS.index(condition)
        + 0.02 * DATASETS.index(dataset)
        + (0.05 if model == "enc-b" else 0.0)
        + POOL_OFFSET.get(pool, 0.4),
        6,
    )


def row(model: str, dataset: str, pool: str, condition: str) -> dict[str, object]:
    value = hand_auc(model, dataset, pool, condition)
    return {
        "model": model,
        "dataset": dataset,
        "pool": pool,
        "perturbation": condition,
        "auc": value,
        "ci_low": value - 0.05,
        "ci_high": value + 0.05,
        "f1": 0.6,
        "f1_optimistic": 0.7,
        "best_c": 1.0,
        "n_train": 80,
        "n_test": 20,
    }


@pytest.fixture
def results() -> pd.DataFrame:
    rows = []
    for dataset in DATASETS:
        for condition in CONDITIONS:
            for model in ENCODERS:
                rows += [row(model, dataset, pool, condition) for pool in ENCODER_POOLS]
            rows.append(row("raw-global", dataset, "raw_global", condition))
            rows.append(row("raw-oracle", dataset, "raw_oracle", condition))
    for condition in ("C1", "S8"):
        rows.append(row("small-cnn-finetuned", "nih", "finetuned", condition))
    for condition in ("iso_blur_4", "iso_blur_8"):
        rows.append(row("small-cnn-oracle", "nih", "finetuned_oracle", condition))
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def test_t3_rows_columns_and_values(results: pd.DataFrame) -> None:
    table = pt.t3_geometric(results)
    assert list(table.columns) == ["model", "pool", "nih C1", "nih S8", "mimic C1", "mimic S8"]
    assert list(zip(table["model"], table["pool"], strict=True)) == [
        ("enc-a", "cls"),
        ("enc-b", "cls"),
        ("small-cnn-finetuned", "finetuned"),
    ]
    assert table.loc[1, "mimic S8"] == hand_auc("enc-b", "mimic", "cls", "S8")
    # The CNN ran on nih only: its mimic cells stay empty, never filled in.
    assert math.isnan(table.loc[2, "mimic C1"])
    assert table.loc[2, "nih C1"] == hand_auc("small-cnn-finetuned", "nih", "finetuned", "C1")


def test_t4_holds_encoders_raw_and_cnn_oracle(results: pd.DataFrame) -> None:
    table = pt.t4_iso_blur(results)
    assert list(table["model"]) == ["enc-a", "enc-b", "raw-global", "raw-oracle", "small-cnn-oracle"]
    assert list(table.columns[2:]) == ["nih iso_blur_4", "nih iso_blur_8", "mimic iso_blur_4", "mimic iso_blur_8"]
    assert table.set_index("model").loc["raw-oracle", "mimic iso_blur_8"] == hand_auc(
        "raw-oracle", "mimic", "raw_oracle", "iso_blur_8"
    )


def test_t5_is_the_representative_cell_only(results: pd.DataFrame) -> None:
    table = pt.t5_directional(results)
    expected = [f"{d} {c}" for d in DATASETS for c in registry.DIRECTIONAL_REPRESENTATIVE]
    assert list(table.columns) == ["model", "pool", *expected]
    assert list(table["model"]) == list(ENCODERS)


def test_t6_lists_only_present_conditions(results: pd.DataFrame) -> None:
    table = pt.t6_pathology(results)
    assert "nih reticular_coarse_64" not in table.columns  # absent from the run: left out, not invented
    assert list(table.columns) == [
        "model",
        "pool",
        "nih reticular_fine_32",
        "nih ground_glass_64",
        "mimic reticular_fine_32",
        "mimic ground_glass_64",
    ]


def test_missing_cell_stays_empty(results: pd.DataFrame) -> None:
    drop = (results["model"] == "enc-b") & (results["dataset"] == "mimic") & (results["perturbation"] == "S8")
    table = pt.t3_geometric(results[~drop])
    assert math.isnan(table.set_index("model").loc["enc-b", "mimic S8"])
    assert table.set_index("model").loc["enc-b", "nih S8"] == hand_auc("enc-b", "nih", "cls", "S8")


def test_duplicate_results_are_refused(results: pd.DataFrame) -> None:
    doubled = pd.concat([results, results.iloc[[0]]], ignore_index=True)
    with pytest.raises(pt.TableError, match="more than one result"):
        pt.t3_geometric(doubled)


def test_t7_pooling_gap_equals_hand_values(results: pd.DataFrame) -> None:
    table = pt.pooling_comparison(results, registry.POOLING_SLICE)
    present = [c for c in registry.POOLING_SLICE if c in CONDITIONS]
    assert len(table) == len(DATASETS) * len(present) * len(ENCODERS)
    assert list(table.columns) == ["dataset", "perturbation", "model", "cls", "patch_mean", "patch_local", pt.GAP]
    assert list(table["perturbation"][: len(present) * 2 : 2]) == present
    for r in table.itertuples(index=False):
        local = hand_auc(r.model, r.dataset, "patch_local", r.perturbation)
        cls = hand_auc(r.model, r.dataset, "cls", r.perturbation)
        assert r.local_minus_cls == pytest.approx(local - cls, abs=1e-12)
        assert r.local_minus_cls == pytest.approx(0.3, abs=1e-9)


def test_pooling_gap_summary_matches_hand_and_detection(results: pd.DataFrame) -> None:
    tweak = (results["model"] == "enc-a") & (results["pool"] == "patch_local") & (results["perturbation"] == "C1")
    results.loc[tweak & (results["dataset"] == "nih"), "auc"] += 0.1  # gaps: 0.4 once, 0.3 elsewhere
    summary = pt.pooling_gap_summary(results).set_index("model")
    cells = len(DATASETS) * len(CONDITIONS)
    assert summary.loc["enc-a", "cells"] == cells
    assert summary.loc["enc-a", "mean_gap"] == pytest.approx((0.3 * (cells - 1) + 0.4) / cells)
    assert summary.loc["enc-a", "max_gap"] == pytest.approx(0.4)
    assert summary.loc["enc-b", "min_gap"] == pytest.approx(0.3)


def test_t8_rows_are_perturbations(results: pd.DataFrame) -> None:
    table = pt.t8_raw(results)
    assert list(table["perturbation"]) == list(registry.RAW_SLICE)
    assert list(table.columns[1:]) == ["nih raw-global", "nih raw-oracle", "mimic raw-global", "mimic raw-oracle"]
    first = table.set_index("perturbation").loc["ground_glass_64", "mimic raw-oracle"]
    assert first == hand_auc("raw-oracle", "mimic", "raw_oracle", "ground_glass_64")


def test_directional_sweep_parses_conditions(results: pd.DataFrame) -> None:
    sweep = pt.directional_sweep(results)
    assert set(sweep["pool"]) == {"cls"}
    assert len(sweep) == len(ENCODERS) * len(DATASETS) * 3
    first = sweep.iloc[0]
    assert (first["model"], first["dataset"], first["direction"], first["length"], first["patch"]) == (
        "enc-a",
        "nih",
        "cranio",
        11,
        16,
    )
    lateral = sweep[sweep["direction"] == "lateral"]
    assert set(lateral["perturbation"]) == {"dir_lateral_L21_P64"} and set(lateral["length"]) == {21}


def test_empty_slice_gives_empty_table(results: pd.DataFrame) -> None:
    only_geometric = results[results["perturbation"].isin(["C1", "S8"])]
    assert pt.t4_iso_blur(only_geometric).empty
    assert pt.t8_raw(only_geometric).empty
    assert pt.directional_sweep(only_geometric).empty


def test_coverage_names_absent_conditions() -> None:
    table = pt.coverage(registry.PANEL_TABLES, ["C1", "S8", "iso_blur_8"]).set_index("table")
    assert table.loc["T3 geometric", "present"] == "C1, S8"
    assert table.loc["T3 geometric", "absent"] == "C2, L4, L8, S4"
    assert table.loc["T5 directional blur (L21 P64)", "present"] == "-"


def test_heatmap_rows_and_figure(results: pd.DataFrame) -> None:
    frame = pt.heatmap_frame(results, ("cls",))
    assert list(frame.index) == ["enc-a · nih", "enc-b · nih", "enc-a · mimic", "enc-b · mimic"]
    assert list(frame.columns) == list(CONDITIONS)
    assert frame.loc["enc-b · mimic", "C1"] == hand_auc("enc-b", "mimic", "cls", "C1")
    fig = plot_heatmap(frame, "cls")
    assert len(fig.axes[0].texts) == frame.size
    curves = plot_directional_curves(pt.directional_sweep(results), "curves")
    assert sum(ax.get_visible() for ax in curves.axes) == len(ENCODERS) * len(DATASETS)


def test_t2_and_t9_tables() -> None:
    cells = pd.DataFrame(
        {
            "task": ["edema", "edema", "edema"],
            "model": ["enc-a", "enc-a", "enc-b"],
            "dataset": ["nih", "mimic", "nih"],
            "auc": [0.8, 0.7, 0.9],
            "ci_low": [0.7, 0.6, 0.85],
            "ci_high": [0.9, 0.8, 0.95],
            "f1": [0.5, 0.4, 0.6],
        }
    )
    t2 = pt.t2_disease(cells)
    assert list(t2.columns[:4]) == ["task", "model", "nih auc", "nih ci_low"]
    assert t2.set_index("model").loc["enc-a", "mimic f1"] == 0.4
    assert math.isnan(t2.set_index("model").loc["enc-b", "mimic auc"])
    t9_cells = pd.DataFrame(
        {"model": ["a", "a", "a", "b"], "delta": [-0.01, 0.0, 0.02, -0.04], "significant": [True, False, True, False]}
    )
    summary = pt.t9_summary(t9_cells, 0.05).set_index("model")
    assert summary.loc["a", "cells_significant_bh_0.05"] == 2
    assert summary.loc["a", "total_cells"] == 3
    assert summary.loc["a", "percent_significant"] == pytest.approx(200 / 3)
    assert summary.loc["a", "mean_delta_auc"] == pytest.approx(0.01 / 3)
    assert summary.loc["b", "cells_significant_bh_0.05"] == 0


def test_reported_vs_reproduced_only_for_study_runs(results: pd.DataFrame) -> None:
    study = RunKind.STUDY
    reproduced = pd.DataFrame([{**row("rad-dino", "nih", "cls", "C1"), "auc": 0.6}])
    table = pt.reported_vs_reproduced("T3", reproduced, study)
    cell = table[(table["model"] == "rad-dino") & (table["perturbation"] == "C1")].iloc[0]
    assert cell["auc_reported"] == pytest.approx(0.5)
    assert cell["difference"] == pytest.approx(0.1)
    assert table["auc_reproduced"].isna().sum() == len(table) - 1  # the rest stays visibly empty
    with pytest.raises(NotComparable):
        pt.reported_vs_reproduced("T3", reproduced, RunKind.DEMO)


# ---------------------------------------------------------------- the long frame: cached detection probes


def test_file_cells_names_raw_baselines_as_models() -> None:
    names = [
        "image_ids",
        "boxes",
        "clean_raw_global",
        "perturbed_raw_global",
        "clean_raw_oracle",
        "perturbed_raw_oracle",
    ]
    cells = file_cells("raw-pixels", "nih", "C1", names)
    assert [(c.model, c.pool) for c in cells] == [("raw-global", "raw_global"), ("raw-oracle", "raw_oracle")]
    enc = file_cells("enc-a", "nih", "C1", ["clean_cls", "perturbed_cls"])
    assert enc == [CellSpec("enc-a", "nih", "cls", "C1", "clean_cls", "perturbed_cls")]
    with pytest.raises(DetectionError, match="without a perturbed twin"):
        file_cells("enc-a", "nih", "C1", ["clean_cls", "clean_patch_mean", "perturbed_cls"])


def _condition_file(path: Path, shift: float, seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    ids = np.asarray([f"im{i:03d}.png" for i in range(40)])
    clean = rng.normal(size=(40, 6))
    perturbed = clean + shift + 0.1 * rng.normal(size=(40, 6))
    save_arrays(path, {"image_ids": ids, "clean_cls": clean, "perturbed_cls": perturbed})
    return {image_id: ("test" if i >= 30 else "train") for i, image_id in enumerate(ids)}


@pytest.mark.slow  # spawns two worker processes (seconds to start)
def test_run_files_cached_reuses_and_invalidates(tmp_path: Path) -> None:
    config = probe_config(ProbeParams(c_grid=(0.1, 1.0), folds=2))
    strong, weak = tmp_path / "strong.npz", tmp_path / "weak.npz"
    splits = {"nih": _condition_file(strong, 3.0, 0)}
    _condition_file(weak, 0.0, 1)
    files = [
        (weak, file_cells("enc-a", "nih", "weak", ["clean_cls", "perturbed_cls"])),
        (strong, file_cells("enc-a", "nih", "strong", ["clean_cls", "perturbed_cls"])),
    ]
    cache, solo_cache = probe_store(tmp_path / "cache"), probe_store(tmp_path / "solo")
    first = run_files_cached(files, splits, config, 50, cache, workers=2, progress=False)
    assert (first.files_probed, first.files_reused) == (2, 0)
    assert list(first.results["perturbation"]) == ["weak", "strong"]  # file order, whatever finished first
    assert first.results.set_index("perturbation").loc["strong", "auc"] > 0.95
    again = run_files_cached(files, splits, config, 50, cache, progress=False)
    assert (again.files_probed, again.files_reused) == (0, 2)
    pd.testing.assert_frame_equal(first.results, again.results)
    solo = run_files_cached(files, splits, config, 50, solo_cache, workers=1, progress=False)
    assert solo.files_probed == 2
    pd.testing.assert_frame_equal(first.results, solo.results)  # the numbers do not depend on the worker count
    _condition_file(weak, 0.5, 2)  # new bytes: only this file is probed again
    changed = run_files_cached(files, splits, config, 50, cache, progress=False)
    assert (changed.files_probed, changed.files_reused) == (1, 1)
    with pytest.raises(DetectionError, match="no splits"):
        run_files_cached(files, {}, config, 50, cache, progress=False)


def test_result_frames_read_back_bit_for_bit(tmp_path: Path) -> None:
    values = np.random.default_rng(3).random(1000)
    frame = pd.DataFrame({"model": ["m"] * 1000, "auc": values, "n_test": np.arange(1000)})
    back = read_frame(write_frame(tmp_path / "f.csv", frame))
    assert np.array_equal(back["auc"].to_numpy(), values)
    assert back["n_test"].dtype.kind == "i"
