"""Has an encoder learned anything? A trained encoder against its random-init twin on checks that know nothing of
the study's stimuli.

- Disease probes: the mean, over the findings, of the test AUC of the disease probes on clean CLS vectors (the
  probes of T2, scored on the same test images for both encoders).
- Same-subject retrieval: for every image whose subject has another image in the cohort, whether its nearest other
  image (cosine of clean CLS vectors) is of the same subject; top-1 accuracy over those queries. And, because top-1
  among a few hundred films is a coarse score where subjects differ little, the percentile rank of the subject's
  own other film: the share of other subjects' images less similar to the query than its most similar
  same-subject image (ties count half), averaged over the queries; 0.5 is chance, 1 every query's own film first.

Intervals are percentile intervals from resampling patients (a subject's films stay together), the same resamples
for both encoders, so the difference has a paired interval.

Beside the two encoders, a reference that needs no model: the same checks on the films' own pixels (the run's
raw-global vectors, a 64 x 64 area-downsampled film), on the same test images, queries and resamples. It says how
far a check can go on these films at all: where the pixels themselves rarely put a subject's other film first,
top-1 cannot show much of any encoder.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd

from lesionsignal.analysis.stats import auc
from lesionsignal.features.retrieval import cosine_similarity

LEARNING_COLUMNS = (
    "check",
    "dataset",
    "encoder",
    "twin",
    "value",
    "ci_low",
    "ci_high",
    "twin_value",
    "twin_ci_low",
    "twin_ci_high",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "pixels",
    "pixels_ci_low",
    "pixels_ci_high",
    "n",
    "patients",
)
DISEASE_CHECK = "disease probes: mean test AUC over the findings"
FINDING_CHECK = "disease probe: test AUC, {task}"
RETRIEVAL_CHECK = "same-subject retrieval: {score} ({pool})"
S = TypeVar("S")  # a feature source as a paired statistic sees it: a model name, or per-query scores


class RetrievalScore(enum.Enum):
    """What a retrieval query scores: a hit of its nearest other image, or the percentile rank of its own subject."""

    TOP1 = "top-1 accuracy"
    PERCENTILE = "percentile rank of the other film"

    def check(self, pool: str) -> str:
        return RETRIEVAL_CHECK.format(score=self.value, pool=pool)


class LearningCheckError(ValueError):
    """Inputs that cannot be compared: different test images, one subject only, no retrieval query."""


@dataclass(frozen=True)
class Paired:
    """A statistic of two encoders and its resampled draws (one per patient resample, the same for both)."""

    value: float
    twin_value: float
    draws: np.ndarray  # (n_boot,)
    twin_draws: np.ndarray
    pixels: float = np.nan  # the films' own pixels on the same images and resamples (nan: not computed)
    pixel_draws: np.ndarray | None = None

    def row(self, level: float = 0.95) -> dict[str, float]:
        lo, hi = 50 * (1 - level), 50 * (1 + level)

        def interval(draws: np.ndarray) -> tuple[float, float]:
            finite = draws[np.isfinite(draws)]
            if not finite.size:
                return np.nan, np.nan
            return float(np.percentile(finite, lo)), float(np.percentile(finite, hi))

        a, b, d = interval(self.draws), interval(self.twin_draws), interval(self.draws - self.twin_draws)
        p = (np.nan, np.nan) if self.pixel_draws is None else interval(self.pixel_draws)
        return {
            "value": self.value,
            "ci_low": a[0],
            "ci_high": a[1],
            "twin_value": self.twin_value,
            "twin_ci_low": b[0],
            "twin_ci_high": b[1],
            "difference": self.value - self.twin_value,
            "difference_ci_low": d[0],
            "difference_ci_high": d[1],
            "pixels": self.pixels,
            "pixels_ci_low": p[0],
            "pixels_ci_high": p[1],
        }


def patient_resamples(patients: Sequence[str], n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices of ``n_boot`` resamples drawing whole patients with replacement."""
    labels = np.asarray(patients)
    unique, inverse = np.unique(labels, return_inverse=True)
    if unique.size < 2:
        raise LearningCheckError(f"{unique.size} patient(s): resampling needs two or more")
    members = [np.flatnonzero(inverse == i) for i in range(unique.size)]
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[i] for i in rng.integers(0, unique.size, unique.size)]) for _ in range(n_boot)]


def _mean_auc(tasks: Sequence[tuple[np.ndarray, np.ndarray]], rows: np.ndarray | None = None) -> float:
    values = []
    for y, s in tasks:
        yy, ss = (y, s) if rows is None else (y[rows], s[rows])
        if yy.min() == yy.max():  # a resample without one class: this task gives no AUC in it
            return np.nan
        values.append(auc(yy, ss))
    return float(np.mean(values))


def disease_comparison(
    scores: pd.DataFrame,
    encoder: str,
    twin: str,
    dataset: str,
    n_boot: int,
    seed: int,
    task: str | None = None,
    pixels: str | None = None,
) -> Paired:
    """Mean AUC over the tasks both encoders were probed on (or of ``task`` alone), from per-image test scores
    (analysis.disease.SCORE_COLUMNS). ``pixels``: the model name of the raw-pixel probes' scores in ``scores``, the
    reference scored on the same tasks and images."""
    one = scores[scores["dataset"] == dataset]
    tasks = sorted(set(one.loc[one["model"] == encoder, "task"]) & set(one.loc[one["model"] == twin, "task"]))
    if task is not None:
        tasks = [t for t in tasks if t == task]
    if not tasks:
        raise LearningCheckError(f"{dataset}: no disease probe of both {encoder} and {twin}")

    def table(model: str, task: str) -> pd.DataFrame:
        return one[(one["model"] == model) & (one["task"] == task)].set_index("image_id").sort_index()

    first = table(encoder, tasks[0])
    models = (encoder, twin) if pixels is None else (encoder, twin, pixels)
    labelled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in models}
    for task in tasks:
        for model in models:
            t = table(model, task)
            if not t.index.equals(first.index):
                raise LearningCheckError(f"{dataset} / {task}: {model} was scored on other test images than {encoder}")
            labelled[model].append((t["label"].to_numpy(), t["score"].to_numpy()))
    resamples = patient_resamples(first["patient_id"].to_numpy(), n_boot, seed)
    return _paired(lambda model, rows: _mean_auc(labelled[model], rows), encoder, twin, pixels, resamples)


def _paired(
    statistic: Callable[[S, np.ndarray | None], float],
    encoder: S,
    twin: S,
    pixels: S | None,
    resamples: Sequence[np.ndarray],
) -> Paired:
    """``statistic(source, rows)`` of both encoders, and of the pixels when given, on every row (``rows`` None)
    and on each of the same resamples."""

    def drawn(source: S) -> tuple[float, np.ndarray]:
        return statistic(source, None), np.array([statistic(source, r) for r in resamples])

    (value, draws), (twin_value, twin_draws) = drawn(encoder), drawn(twin)
    pixel_value, pixel_draws = (np.nan, None) if pixels is None else drawn(pixels)
    return Paired(value, twin_value, draws, twin_draws, pixel_value, pixel_draws)


def _mean(values: np.ndarray, rows: np.ndarray | None) -> float:
    return float((values if rows is None else values[rows]).mean())


@dataclass(frozen=True)
class Neighbours:
    """Retrieval queries (rows whose subject has another row), their cosine similarity to every row (a row's own is
    -inf) and which rows are of the query's subject; both scores are read off these."""

    queries: np.ndarray  # (q,)
    similarity: np.ndarray  # (q, n)
    same: np.ndarray  # (q, n) bool

    @classmethod
    def of(cls, vectors: np.ndarray, subjects: Sequence[str]) -> Neighbours:
        labels = np.asarray(subjects)
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != labels.size:
            raise LearningCheckError(f"{labels.size} subjects for vectors of shape {x.shape}")
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        queries = np.flatnonzero(counts[inverse] > 1)
        if queries.size == 0:
            raise LearningCheckError("no subject has two images: nothing to retrieve")
        return cls(queries, cosine_similarity(x)[queries], labels[None, :] == labels[queries, None])

    def scores(self, score: RetrievalScore) -> np.ndarray:
        """The score of every query (module docstring)."""
        if score is RetrievalScore.TOP1:
            return self.same[np.arange(self.queries.size), self.similarity.argmax(axis=1)].astype(np.float64)
        own = np.where(self.same, self.similarity, -np.inf).max(axis=1, keepdims=True)  # the diagonal is -inf
        others = ~self.same
        n_others = others.sum(axis=1)
        if (n_others == 0).any():
            raise LearningCheckError("every image is of one subject: no other subject to rank against")
        below = ((self.similarity < own) & others).sum(axis=1) + 0.5 * ((self.similarity == own) & others).sum(axis=1)
        return below / n_others


def retrieval_scores(
    vectors: np.ndarray, subjects: Sequence[str], score: RetrievalScore
) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, score per query) for rows whose subject has another row."""
    neighbours = Neighbours.of(vectors, subjects)
    return neighbours.queries, neighbours.scores(score)


def retrieval_comparison(
    vectors: np.ndarray,
    twin_vectors: np.ndarray,
    subjects: Sequence[str],
    n_boot: int,
    seed: int,
    score: RetrievalScore = RetrievalScore.TOP1,
) -> Paired:
    return _retrieval_comparisons(vectors, twin_vectors, np.asarray(subjects), n_boot, seed, (score,))[0][score]


def retrieval_rows(
    pool: str,
    dataset: str,
    encoder: str,
    twin: str,
    vectors: np.ndarray,
    twin_vectors: np.ndarray,
    subjects: Sequence[str],
    n_boot: int,
    seed: int,
    pixel_vectors: np.ndarray | None = None,
) -> list[dict]:
    """Learning-check rows of same-subject retrieval in one pool, top-1 then percentile rank: n queries, and the
    patients they come from; with the films' own pixels as the reference when ``pixel_vectors`` are given."""
    labels = np.asarray(subjects)
    paired, queries = _retrieval_comparisons(
        vectors, twin_vectors, labels, n_boot, seed, tuple(RetrievalScore), pixel_vectors
    )
    n, patients = queries.size, np.unique(labels[queries]).size
    return [learning_row(s.check(pool), dataset, encoder, twin, paired[s], n, patients) for s in RetrievalScore]


def _retrieval_comparisons(
    vectors: np.ndarray,
    twin_vectors: np.ndarray,
    labels: np.ndarray,
    n_boot: int,
    seed: int,
    scores: tuple[RetrievalScore, ...],
    pixel_vectors: np.ndarray | None = None,
) -> tuple[dict[RetrievalScore, Paired], np.ndarray]:
    """Each score of both encoders (and of the pixels) on the same patient resamples; one similarity matrix per
    feature source."""
    mine, theirs = Neighbours.of(vectors, labels), Neighbours.of(twin_vectors, labels)
    if not np.array_equal(mine.queries, theirs.queries):
        raise LearningCheckError("the two encoders' vectors cover different images")
    pixels = None if pixel_vectors is None else Neighbours.of(pixel_vectors, labels)
    resamples = patient_resamples(labels[mine.queries], n_boot, seed)
    paired = {}
    for score in scores:
        pixel_scores = None if pixels is None else pixels.scores(score)
        paired[score] = _paired(_mean, mine.scores(score), theirs.scores(score), pixel_scores, resamples)
    return paired, mine.queries


def disease_rows(
    scores: pd.DataFrame,
    encoder: str,
    twin: str,
    dataset: str,
    n_boot: int,
    seed: int,
    pixels: str | None = None,
) -> list[dict]:
    """The mean over the findings, then each finding alone, each with its paired interval (and the raw-pixel
    probes' value when ``pixels`` names their scores)."""
    tested = scores[(scores["dataset"] == dataset) & (scores["model"] == encoder)]
    if tested.empty:
        return []
    tasks = list(dict.fromkeys(tested["task"]))
    first = tested[tested["task"] == tasks[0]]
    n, patients = len(first), first["patient_id"].nunique()
    rows = [
        learning_row(
            DISEASE_CHECK,
            dataset,
            encoder,
            twin,
            disease_comparison(scores, encoder, twin, dataset, n_boot, seed, pixels=pixels),
            n,
            patients,
        )
    ]
    for task in tasks:
        paired = disease_comparison(scores, encoder, twin, dataset, n_boot, seed, task=task, pixels=pixels)
        rows.append(learning_row(FINDING_CHECK.format(task=task), dataset, encoder, twin, paired, n, patients))
    return rows


def learning_row(check: str, dataset: str, encoder: str, twin: str, paired: Paired, n: int, patients: int) -> dict:
    return {
        "check": check,
        "dataset": dataset,
        "encoder": encoder,
        "twin": twin,
        **paired.row(),
        "n": n,
        "patients": patients,
    }
