"""Disease probes on clean embeddings (T2) and the clean-vs-perturbed disease protocol (T9, protocol section 6).

T2: per (model, dataset, disease) the linear probe of protocol section 4 on the clean global embedding; train and test
rows follow the manifest's patient-disjoint split and the CV folds are grouped by patient id (the authors split
NIH by image, which leaks patients).

T9: the same fitted probe scores the clean test images and the very same test images perturbed (the detection
cache holds the perturbed embedding of every image), so the two AUCs are paired: one stratified bootstrap draws
the same cases for both, giving a CI and a p-value for delta AUC = AUC(perturbed) - AUC(clean). The p-values of
one model's cells (perturbations x diseases x datasets) are adjusted together by Benjamini-Hochberg.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesionsignal.analysis.detection import summarise
from lesionsignal.analysis.operating_points import OPERATING_COLUMNS, OperatingSettings, operating_points
from lesionsignal.analysis.probe import ProbeConfig, ProbeError, ProbeResult, fit_probe
from lesionsignal.analysis.stats import (
    StatsError,
    auc,
    benjamini_hochberg,
    paired_bootstrap_delta_two_sets,
)
from lesionsignal.data.manifest import DISEASES, Manifest

T2_COLUMNS = ("task", "model", "dataset", "auc", "ci_low", "ci_high", "f1", "f1_optimistic", "best_c")
T2_COLUMNS += ("n_train", "n_test", "positives_train", "positives_test")
SCORE_COLUMNS = ("model", "dataset", "task", "image_id", "patient_id", "label", "score")
T9_COLUMNS = ("model", "dataset", "task", "perturbation", "auc_clean", "auc_perturbed", "delta")
T9_COLUMNS += ("ci_low", "ci_high", "p", "n_test")


class DiseaseError(ValueError):
    """Embeddings and manifest that do not fit together; the message names the image, disease or file."""


@dataclass(frozen=True, eq=False)
class DiseaseDesign:
    """Train and test rows of one disease probe, in the order of the embedding file."""

    disease: str
    ids_train: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    groups_train: np.ndarray  # patient ids: CV folds never split a patient
    ids_test: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    groups_test: np.ndarray  # patient ids of the test rows: resampling for paired comparisons keeps them whole
    unused: int  # rows in neither split (MIMIC's separate validation split), counted, not hidden


def disease_design(x: np.ndarray, image_ids: Sequence[str], manifest: Manifest, disease: str) -> DiseaseDesign:
    """Rows of ``x`` labelled by the manifest; split and patient of each image come from its record."""
    if disease not in manifest.label_names:
        raise DiseaseError(f"cohort {manifest.cohort}: no label {disease!r} (labels: {list(manifest.label_names)})")
    ids = np.asarray(image_ids)
    if x.ndim != 2 or x.shape[0] != ids.size:
        raise DiseaseError(f"cohort {manifest.cohort}: {ids.size} image ids for embeddings of shape {x.shape}")
    records = {r.image_id: r for r in manifest.records}
    unknown = [i for i in ids if i not in records]
    if unknown:
        raise DiseaseError(f"cohort {manifest.cohort}: images not in the manifest: {unknown[:5]}")
    split = np.asarray([records[i].split for i in ids])
    labels = np.asarray([records[i].label(disease) for i in ids], dtype=np.int64)
    patients = np.asarray([records[i].patient_id for i in ids])
    train, test = split == "train", split == "test"
    return DiseaseDesign(
        disease=disease,
        ids_train=ids[train],
        x_train=x[train],
        y_train=labels[train],
        groups_train=patients[train],
        ids_test=ids[test],
        x_test=x[test],
        y_test=labels[test],
        groups_test=patients[test],
        unused=int((~train & ~test).sum()),
    )


def infeasible(design: DiseaseDesign, folds: int) -> str | None:
    """Why a probe cannot be fitted and scored on this design, or None when it can."""
    for part, y in (("train", design.y_train), ("test", design.y_test)):
        positives = int(y.sum())
        if positives == 0 or positives == y.size:
            return f"{part} split has {positives} positive(s) of {y.size}: both classes are needed"
    for cls in (0, 1):
        patients = np.unique(design.groups_train[design.y_train == cls]).size
        if patients < folds:
            return f"class {cls} occurs in {patients} training patient(s), fewer than the {folds} CV folds"
    return None


def fit_disease_probe(design: DiseaseDesign, config: ProbeConfig) -> ProbeResult:
    """protocol section 4 on the training rows only (folds grouped by patient); one evaluation on the test rows."""
    return fit_probe(design.x_train, design.y_train, design.groups_train, design.x_test, design.y_test, config)


def t2_row(design: DiseaseDesign, result: ProbeResult, n_boot: int, seed: int) -> dict[str, object]:
    return {
        **summarise(result, n_boot, seed),
        "positives_train": int(design.y_train.sum()),
        "positives_test": int(design.y_test.sum()),
    }


def rows_for(ids_file: np.ndarray, wanted: np.ndarray, where: str) -> np.ndarray:
    """Row index in ``ids_file`` of each wanted image id; every wanted id must be there exactly once."""
    ids = np.asarray(ids_file)
    position = {image_id: i for i, image_id in enumerate(ids)}
    if len(position) != ids.size:
        raise DiseaseError(f"{where}: image ids repeat")
    missing = [i for i in wanted if i not in position]
    if missing:
        raise DiseaseError(f"{where}: no perturbed embedding for test images {missing[:5]}")
    return np.asarray([position[i] for i in wanted], dtype=np.int64)


def clean_vs_perturbed(
    design: DiseaseDesign, result: ProbeResult, x_perturbed_test: np.ndarray, n_boot: int, seed: int
) -> dict[str, object]:
    """Score the perturbed twins of the test rows with the clean-trained probe; paired bootstrap of delta AUC."""
    perturbed_scores = result.model.decision_function(x_perturbed_test, "x_perturbed_test")
    delta = paired_bootstrap_delta_two_sets(
        design.y_test, result.test_scores, perturbed_scores, n_boot=n_boot, seed=seed
    )
    return {
        "auc_clean": result.auc,
        "auc_perturbed": auc(design.y_test, perturbed_scores),
        "delta": delta.estimate,
        "ci_low": delta.low,
        "ci_high": delta.high,
        "p": delta.p,
        "n_test": int(design.y_test.size),
    }


def adjust_per_model(cells: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Add ``q`` (BH-adjusted p) and ``significant`` (q <= alpha), adjusting each model's cells together."""
    if "model" not in cells.columns or "p" not in cells.columns:
        raise DiseaseError(f"BH adjustment needs columns model and p, got {list(cells.columns)}")
    out = cells.copy()
    out["q"] = np.nan
    out["significant"] = False
    for _, index in out.groupby("model", sort=False).groups.items():
        rejected, q = benjamini_hochberg(out.loc[index, "p"].to_numpy(), alpha)
        out.loc[index, "q"] = q
        out.loc[index, "significant"] = rejected
    out["significant"] = out["significant"].astype(bool)
    return out


@dataclass(frozen=True)
class DiseaseResults:
    t2: pd.DataFrame  # one row per (task, model, dataset) probe
    t9: pd.DataFrame  # one row per (model, dataset, task, perturbation) cell, with q and significant
    skipped: pd.DataFrame  # cells that could not be computed, with the reason
    scores: pd.DataFrame  # one row per (model, dataset, task, test image): patient, label, the probe's score
    operating: pd.DataFrame  # one row per (task, model, dataset, target specificity): the T2 probe's operating point


# (model, dataset) -> (image ids, clean global embeddings); (model, dataset, condition) -> (ids, perturbed ones)
CleanLoader = Callable[[str, str], tuple[np.ndarray, np.ndarray]]
PerturbedLoader = Callable[[str, str, str], tuple[np.ndarray, np.ndarray]]


def run_disease(
    models: Sequence[str],
    manifests: Mapping[str, Manifest],
    conditions: Sequence[str],
    load_clean: CleanLoader,
    load_perturbed: PerturbedLoader,
    config: ProbeConfig,
    n_boot: int,
    alpha: float,
    diseases: Sequence[str] = DISEASES,
    paired_n_boot: int = 10_000,
    operating: OperatingSettings | None = None,
) -> DiseaseResults:
    """T2 and T9 for every model x dataset x disease; a probe that cannot be fitted is listed with its reason."""
    operating = operating or OperatingSettings(seed=config.seed)
    t2, t9, skipped, scores, points = [], [], [], [], []
    for model in models:
        for dataset, manifest in manifests.items():
            ids, x = load_clean(model, dataset)
            perturbed = {c: load_perturbed(model, dataset, c) for c in conditions}
            for disease in diseases:
                key = {"model": model, "dataset": dataset, "task": disease}
                design = disease_design(x, ids, manifest, disease)
                reason = infeasible(design, config.folds)
                result = None
                if reason is None:
                    try:
                        result = fit_disease_probe(design, config)
                    except (ProbeError, StatsError) as err:  # e.g. a CV fold left with one class
                        reason = str(err)
                if result is None:
                    skipped.append({**key, "reason": reason})
                    continue
                t2.append(
                    {"task": disease, "model": model, "dataset": dataset, **t2_row(design, result, n_boot, config.seed)}
                )
                scores.append(test_scores(key, design, result))
                found = operating_points(
                    result.train_labels, result.train_scores, result.test_labels, result.test_scores, operating
                )
                points += [{"task": disease, "model": model, "dataset": dataset, **p.row()} for p in found]
                for condition, (p_ids, p_x) in perturbed.items():
                    rows = rows_for(p_ids, design.ids_test, f"{model} / {dataset} / {condition}")
                    cell = clean_vs_perturbed(design, result, p_x[rows], paired_n_boot, config.seed)
                    t9.append({**key, "perturbation": condition, **cell})
    t9_frame = pd.DataFrame(t9, columns=list(T9_COLUMNS))
    t9_frame = adjust_per_model(t9_frame, alpha) if not t9_frame.empty else t9_frame.assign(q=[], significant=[])
    return DiseaseResults(
        t2=pd.DataFrame(t2, columns=list(T2_COLUMNS)),
        t9=t9_frame,
        skipped=pd.DataFrame(skipped, columns=["model", "dataset", "task", "reason"]),
        scores=pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(columns=list(SCORE_COLUMNS)),
        operating=pd.DataFrame(points, columns=["task", "model", "dataset", *OPERATING_COLUMNS]),
    )


def test_scores(key: Mapping[str, str], design: DiseaseDesign, result: ProbeResult) -> pd.DataFrame:
    """The probe's decision value on every test image, with its patient and label (for paired comparisons)."""
    frame = pd.DataFrame(
        {
            "image_id": design.ids_test,
            "patient_id": design.groups_test,
            "label": design.y_test,
            "score": np.asarray(result.test_scores, dtype=np.float64),
        }
    )
    return frame.assign(**key)[list(SCORE_COLUMNS)]
