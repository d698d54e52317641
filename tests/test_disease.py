"""Disease probes (T2) and the clean-vs-perturbed disease protocol (T9) on tiny synthetic embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lesionsignal.analysis.probe as probe_module
from lesionsignal.analysis import disease as dz
from lesionsignal.analysis.probe import ProbeConfig
from lesionsignal.data.manifest import Manifest, Record
from lesionsignal.paper.panel_tables import t9_summary

CONFIG = ProbeConfig(c_grid=(0.1, 1.0), folds=3)
N_IMAGES = 60  # 30 patients with 2 films each; the last 10 patients are the test split


def make_manifest(n: int = N_IMAGES, seed: int = 0, no_test_edema: bool = False) -> Manifest:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        patient = i // 2
        split = "test" if patient >= (n // 2) * 2 // 3 else "train"
        cardio = int(rng.random() < 0.5)
        edema = 0 if (no_test_edema and split == "test") else int(rng.random() < 0.4)
        labels = (("cardiomegaly", cardio), ("edema", edema), ("lung_lesion", int(rng.random() < 0.4)))
        records.append(Record(f"im{i:03d}.png", Path(f"/x/im{i:03d}.png"), f"p{patient:02d}", split, "PA", labels))
    return Manifest("toy", records, dz.DISEASES)


def embeddings(manifest: Manifest, seed: int = 1, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Column 0 carries cardiomegaly; the rest is noise."""
    rng = np.random.default_rng(seed)
    ids = np.asarray([r.image_id for r in manifest.records])
    x = rng.normal(size=(ids.size, dim))
    x[:, 0] += 2.5 * np.asarray([r.label("cardiomegaly") for r in manifest.records])
    return ids, x


def test_design_follows_manifest_split_labels_and_patients() -> None:
    manifest = make_manifest()
    ids, x = embeddings(manifest)
    design = dz.disease_design(x[::-1], ids[::-1], manifest, "edema")  # any row order
    records = {r.image_id: r for r in manifest.records}
    assert not set(design.ids_train) & set(design.ids_test)
    assert all(records[i].split == "train" for i in design.ids_train)
    assert all(records[i].split == "test" for i in design.ids_test)
    assert list(design.groups_train) == [records[i].patient_id for i in design.ids_train]
    assert list(design.y_test) == [records[i].label("edema") for i in design.ids_test]
    row = {image_id: k for k, image_id in enumerate(ids)}
    assert np.array_equal(design.x_test, x[[row[i] for i in design.ids_test]])
    assert design.unused == 0


def test_design_errors_name_the_problem() -> None:
    manifest = make_manifest()
    ids, x = embeddings(manifest)
    with pytest.raises(dz.DiseaseError, match="no label 'pneumonia'"):
        dz.disease_design(x, ids, manifest, "pneumonia")
    with pytest.raises(dz.DiseaseError, match="not in the manifest"):
        dz.disease_design(x, np.asarray([*ids[:-1], "stranger.png"]), manifest, "edema")
    with pytest.raises(dz.DiseaseError, match="image ids for embeddings"):
        dz.disease_design(x[:5], ids, manifest, "edema")


def test_probe_folds_are_grouped_by_patient(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_manifest()
    ids, x = embeddings(manifest)
    design = dz.disease_design(x, ids, manifest, "cardiomegaly")
    seen = {}
    real = probe_module.grouped_stratified_folds

    def spy(y, groups, n_folds, seed):
        seen["groups"] = np.asarray(groups)
        folds = real(y, groups, n_folds, seed)
        seen["folds"] = folds
        return folds

    monkeypatch.setattr(probe_module, "grouped_stratified_folds", spy)
    result = dz.fit_disease_probe(design, CONFIG)
    assert np.array_equal(seen["groups"], design.groups_train)
    for train, val in seen["folds"]:
        assert not set(design.groups_train[train]) & set(design.groups_train[val])  # no patient straddles folds
    assert result.auc > 0.85  # the planted cardiomegaly signal is found


def test_test_rows_never_reach_the_fit() -> None:
    manifest = make_manifest()
    ids, x = embeddings(manifest)
    design = dz.disease_design(x, ids, manifest, "cardiomegaly")
    first = dz.fit_disease_probe(design, CONFIG)
    rng = np.random.default_rng(9)
    scrambled = dz.DiseaseDesign(
        design.disease,
        design.ids_train,
        design.x_train,
        design.y_train,
        design.groups_train,
        design.ids_test,
        rng.normal(size=design.x_test.shape),
        1 - design.y_test,
        design.groups_test,
        design.unused,
    )
    second = dz.fit_disease_probe(scrambled, CONFIG)
    assert np.array_equal(first.model.coef, second.model.coef)
    assert first.model.intercept == second.model.intercept
    assert first.best_c == second.best_c and first.threshold == second.threshold


def test_infeasible_cells_say_why() -> None:
    manifest = make_manifest(no_test_edema=True)
    ids, x = embeddings(manifest)
    design = dz.disease_design(x, ids, manifest, "edema")
    assert "test split has 0 positive" in dz.infeasible(design, 3)
    design = dz.disease_design(x, ids, manifest, "cardiomegaly")
    assert dz.infeasible(design, 3) is None
    assert "fewer than the 99 CV folds" in dz.infeasible(design, 99)


def test_clean_vs_perturbed_delta() -> None:
    manifest = make_manifest()
    ids, x = embeddings(manifest)
    design = dz.disease_design(x, ids, manifest, "cardiomegaly")
    result = dz.fit_disease_probe(design, CONFIG)
    same = dz.clean_vs_perturbed(design, result, design.x_test, 2000, 42)
    assert same["delta"] == 0.0 and same["p"] == 1.0 and same["auc_perturbed"] == same["auc_clean"]
    wiped = design.x_test.copy()
    wiped[:, 0] = np.random.default_rng(5).normal(size=len(wiped))  # the perturbation destroys the signal
    cell = dz.clean_vs_perturbed(design, result, wiped, 2000, 42)
    assert cell["delta"] == pytest.approx(cell["auc_perturbed"] - cell["auc_clean"])
    assert cell["delta"] < 0 and cell["ci_high"] < 0 and cell["p"] < 0.05


def test_bh_per_model_hand_example() -> None:
    cells = pd.DataFrame(
        {
            "model": ["a", "a", "a", "a", "b", "b", "b"],
            "p": [0.01, 0.02, 0.03, 0.5, 0.01, 0.2, 0.3],
            "delta": [-0.02, -0.01, -0.01, 0.0, -0.03, 0.0, 0.01],
        }
    )
    adjusted = dz.adjust_per_model(cells, 0.05)
    # Model a: p * 4 / rank = 0.04, 0.04, 0.04, 0.5 -> three cells; model b: 0.03, 0.3, 0.3 -> one cell.
    assert list(adjusted["significant"]) == [True, True, True, False, True, False, False]
    assert np.allclose(adjusted["q"], [0.04, 0.04, 0.04, 0.5, 0.03, 0.3, 0.3])
    # Pooled over both models, p = 0.03 would have q = 0.0525 and fail: the adjustment is per model.
    summary = t9_summary(adjusted, 0.05).set_index("model")
    assert summary.loc["a", "cells_significant_bh_0.05"] == 3 and summary.loc["a", "total_cells"] == 4
    assert summary.loc["b", "cells_significant_bh_0.05"] == 1 and summary.loc["b", "total_cells"] == 3


def test_run_disease_end_to_end() -> None:
    manifest = make_manifest(no_test_edema=True)
    ids, x = embeddings(manifest)
    rng = np.random.default_rng(4)
    perturbed = {"iso_blur_4": x + 0.01 * rng.normal(size=x.shape), "ground_glass_64": x.copy()}

    def load_clean(model: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
        assert (model, dataset) == ("enc", "toy")
        return ids, x

    def load_perturbed(model: str, dataset: str, condition: str) -> tuple[np.ndarray, np.ndarray]:
        return ids[::-1], perturbed[condition][::-1]  # another row order: matched by image id

    out = dz.run_disease(["enc"], {"toy": manifest}, list(perturbed), load_clean, load_perturbed, CONFIG, 200, 0.05)
    assert list(out.t2["task"]) == ["cardiomegaly", "lung_lesion"]
    assert list(out.skipped["task"]) == ["edema"] and "positive" in out.skipped["reason"].iloc[0]
    assert len(out.t9) == 2 * 2 and set(out.t9["perturbation"]) == set(perturbed)
    unchanged = out.t9[(out.t9["perturbation"] == "ground_glass_64")]
    assert (unchanged["delta"] == 0.0).all() and (unchanged["p"] == 1.0).all()
    assert {"q", "significant"} <= set(out.t9.columns)
    cardio = out.t2.set_index("task").loc["cardiomegaly"]
    assert cardio["auc"] > 0.85 and cardio["ci_low"] <= cardio["auc"] <= cardio["ci_high"]
    assert cardio["n_test"] == 20 and cardio["n_train"] == 40


def test_missing_perturbed_rows_are_an_error() -> None:
    with pytest.raises(dz.DiseaseError, match="no perturbed embedding"):
        dz.rows_for(np.asarray(["a.png", "b.png"]), np.asarray(["a.png", "c.png"]), "enc / toy / C1")
    assert list(dz.rows_for(np.asarray(["a.png", "b.png"]), np.asarray(["b.png", "a.png"]), "x")) == [1, 0]
