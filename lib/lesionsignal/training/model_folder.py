"""The trained encoder as a local model folder in a hub repository's layout, with its model card.

Files: config.json and model.safetensors (transformers' save_pretrained), preprocessor_config.json (the input
geometry, read by the same checks as a hub model's), training_log.json (every epoch), loss_curve.png and README.md
(the model card: what the model is and is not, recipe, data, seed, time, loss curve, SHA-256 of the weights).
The folder is written next to its final place and renamed, so a crash never leaves half a model.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from lesionsignal.core.files import atomic_folder, atomic_write_text, sha256_file
from lesionsignal.training.loop import EpochRecord, TrainResult
from lesionsignal.training.recipe import Masking, Method, Recipe

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
LOG = "training_log.json"
CURVE = "loss_curve.png"
CARD = "README.md"
# PIL's code for bilinear, as preprocessor configs write it: the processor's anti-aliased bilinear downscale is the
# closest of the two the registry knows to the area averaging the training crops used.
_BILINEAR = 2


@dataclass(frozen=True)
class TrainingData:
    """Where the training films came from, for the card: the generator's parameters and the films' digest."""

    description: str
    generator: Mapping[str, Any]
    n_train_films: int
    n_train_subjects: int
    n_held_out_films: int
    n_held_out_subjects: int
    films_sha256: str  # the rendered cohort's images_sha256 (its provenance.json): every film, training and held out


@dataclass(frozen=True)
class Evaluated:
    """What the training command measured of the result against its random-init twin: rows for the log, Markdown
    for the card (the pipeline computes them; this layer only writes them)."""

    rows: list[dict[str, Any]]
    markdown: str


def processor_config(recipe: Recipe, mean: float, std: float) -> dict[str, Any]:
    size = recipe.architecture.image_size
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": _BILINEAR,
        "do_center_crop": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [mean] * 3,
        "image_std": [std] * 3,
        "do_convert_rgb": True,
    }


def write_model_folder(
    folder: Path,
    result: TrainResult,
    recipe: Recipe,
    data: TrainingData,
    label: str,
    command: str,
    evaluation: Evaluated | None = None,
) -> str:
    """Write the folder (replacing an older one) and return the SHA-256 of its weights file."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        result.teacher.save_pretrained(tmp, safe_serialization=True)
        norm = result.normalisation
        atomic_write_text(tmp / PROCESSOR, json.dumps(processor_config(recipe, norm.mean, norm.std), indent=2) + "\n")
        log = {
            "recipe": recipe.as_dict(),
            "recipe_digest": recipe.digest(),
            "normalisation": asdict(norm),
            "initial_retrieval_top1": result.initial_retrieval_top1,
            "epochs": [asdict(r) for r in result.history],
            "evaluation": evaluation.rows if evaluation else [],
        }
        atomic_write_text(tmp / LOG, json.dumps(log, indent=2) + "\n")
        plot_loss_curve(result, tmp / CURVE, recipe.method.value)
        digest = sha256_file(tmp / WEIGHTS)
        atomic_write_text(tmp / CARD, model_card(result, recipe, data, label, command, digest, evaluation))
        for path in tmp.iterdir():
            path.chmod(0o644)  # save_pretrained and mkdtemp make owner-only files; a model folder is shared
        tmp.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder)
    return digest


def plot_loss_curve(result: TrainResult, path: Path, method: str) -> None:
    epochs = [r.epoch for r in result.history]
    fig, loss_ax = plt.subplots(figsize=(6.0, 3.2), dpi=110)
    loss_ax.plot(epochs, [r.loss for r in result.history], marker="o", ms=3, color="tab:blue")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel(f"{method.upper()} loss (mean over the epoch)", color="tab:blue")
    retrieval = [r.retrieval_top1 for r in result.history]
    if all(v is not None for v in retrieval):
        ret_ax = loss_ax.twinx()
        ret_ax.plot(epochs, retrieval, marker="s", ms=3, color="tab:orange")
        if result.initial_retrieval_top1 is not None:
            ret_ax.axhline(result.initial_retrieval_top1, color="tab:orange", ls=":", lw=1)
        ret_ax.set_ylabel("held-out same-subject top-1", color="tab:orange")
        top = max(v for v in [*retrieval, result.initial_retrieval_top1 or 0.0])
        ret_ax.set_ylim(0, max(0.1, 1.25 * top))
    loss_ax.set_title(f"Demo encoder: {method.upper()} training (dotted: retrieval at initialisation)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def model_card(
    result: TrainResult,
    recipe: Recipe,
    data: TrainingData,
    label: str,
    command: str,
    weights_sha256: str,
    evaluation: Evaluated | None = None,
) -> str:
    arch = recipe.architecture
    n_params = sum(p.numel() for p in result.teacher.parameters())
    dino = recipe.method is Method.DINO
    rows = "\n".join(_epoch_row(r, dino) for r in result.history)
    header = "| epoch | loss | retrieval top-1 | seconds |\n|---|---|---|---|"
    if dino:
        header = (
            "| epoch | loss | retrieval top-1 | seconds | teacher mean-distribution entropy "
            "| teacher per-image entropy |\n|---|---|---|---|---|---|"
        )
    minutes = result.seconds / 60
    return f"""---
library_name: transformers
tags: [dinov2, self-supervised, demo, synthetic-data]
---

# {label}

**What this is.** A small vision transformer (transformers' `Dinov2Model`: CLS token, no registers, {n_params:,}
parameters) trained by this project, self-supervised ({
        recipe.method.value.upper()
    }), on chest films rendered by the project's demo-cohort
generator from one real chest CT. It is the embedded demo's encoder, so that `make paper` on a machine without the study
models shows an encoder that has learned something from chest films next to a random-init twin of the same shape.

**What this is not.** Not a foundation model, not RAD-DINO or DINOv2, and not trained on real radiographs: every
training film is a digitally reconstructed radiograph of deformations of the same CT. Its numbers are demo numbers.

## Architecture and input

| | |
|---|---|
| input | {arch.image_size} x {arch.image_size}, gray film repeated on 3 channels, bilinear (anti-aliased) resize |
| normalisation | mean {result.normalisation.mean}, std {result.normalisation.std} (computed over the training films) |
| patch | {arch.patch_size} px, a {arch.grid} x {arch.grid} token grid |
| width, depth, heads | {arch.hidden_size}, {arch.num_hidden_layers}, {arch.num_attention_heads} \
(MLP {arch.mlp_ratio}x) |
| global vector | final-LayerNorm CLS token (`pooler_output`) |

## Training data

{data.description}

- {data.n_train_films} training films of {data.n_train_subjects} subjects; {data.n_held_out_films} films of
  {data.n_held_out_subjects} further subjects held out for the retrieval check; no subject of the demo cohort.
- Generator parameters: `{json.dumps(dict(data.generator), sort_keys=True, default=str)}`
- SHA-256 of the rendered films, training and held out (`images_sha256` of the cohort's provenance.json, over its
  `image_id:sha256` lines in generator order): `{data.films_sha256}`

## Recipe

{_method_text(recipe)} Seed {recipe.seed}; recipe digest `{recipe.digest()}`.

```json
{json.dumps(recipe.as_dict(), indent=2)}
```

Reproduce with `{command}` (CPU; resumes from its last finished epoch after an interruption).

## Training run

{len(result.history)} epochs in {minutes:.1f} minutes on {_machine()}.
Retrieval (held-out subjects, top-1 nearest other film by cosine of CLS is the same subject): {
        _fmt(result.initial_retrieval_top1)
    } at initialisation, {_fmt(result.history[-1].retrieval_top1 if result.history else None)} after training.

![loss curve]({CURVE})

{header}
{rows}

{_entropy_note(recipe)}

## Evaluation against the random-init twin

{_evaluation_text(evaluation)}

## Weights

`{WEIGHTS}` SHA-256: `{weights_sha256}`. The project's encoder registry holds this digest and refuses a weights file
that does not match it.
"""


def _evaluation_text(evaluation: Evaluated | None) -> str:
    if evaluation is None:
        return "Not evaluated."
    return (
        "Linear disease probes on CLS vectors, fitted on the training films (cross-validation folds grouped by "
        "subject) and tested on the held-out subjects' films, and same-subject retrieval among those films: top-1 "
        "(is a film's nearest other film, by cosine of CLS, its subject's other film) and the percentile rank of "
        "the subject's other film (the share of other subjects' films less similar to the query; chance 0.5). The "
        "random-init twin has the same architecture and input; intervals resample subjects, the same resamples for "
        "both encoders. The films' own pixels (64 x 64, area-downsampled) go through the same checks as a reference "
        f"that needs no model.\n\n{evaluation.markdown}"
    )


def _epoch_row(r: EpochRecord, dino: bool) -> str:
    row = f"| {r.epoch} | {r.loss:.4f} | {_fmt(r.retrieval_top1)} | {r.seconds:.0f} |"
    if dino:
        row += f" {_fmt(r.teacher_mean_entropy, 2)} | {_fmt(r.teacher_image_entropy, 2)} |"
    return row


def _method_text(recipe: Recipe) -> str:
    arch = recipe.architecture
    if recipe.method is Method.MAE:
        m = recipe.masking
        return (
            f"Masked-image modelling (MAE, He et al. 2022): one view per film (random resized crop of "
            f"{m.crop_scale[0]:.0%} to {m.crop_scale[1]:.0%} of its area at {arch.image_size} px, brightness and "
            f"contrast jitter); the encoder sees the CLS token and a random {1 - m.mask_ratio:.0%} of the "
            f"{arch.grid * arch.grid} patches, a {m.decoder_depth}-block decoder of width {m.decoder_dim} reconstructs "
            "the masked patches' pixels, each normalised by its own mean and variance"
            f"{_global_text(m)}; only the encoder is kept. "
            "DINO self-distillation was tried first with the same architecture and films and collapsed to the "
            "uniform distribution within three epochs on two CPU cores (the project's docs/PROTOCOL.md, section 11, "
            "has the numbers)."
        )
    return (
        f"DINO (Caron et al. 2021): student and momentum teacher, 2 global views at {arch.image_size} px and "
        f"{recipe.views.n_local} local views at {recipe.views.local_size} px, brightness and contrast jitter, "
        "Gaussian blur and solarisation, centring and sharpening of the teacher."
    )


def _global_text(masking: Masking) -> str:
    if masking.global_weight <= 0:
        return ""
    side = masking.global_side
    return (
        f"; a linear head reconstructs a {side} x {side} thumbnail of the whole view (standardised per view) from the "
        f"CLS token alone, its squared error added with weight {masking.global_weight:g}, because MAE's decoder can "
        "otherwise ignore the CLS token and nothing would make the global token summarise the film"
    )


def _entropy_note(recipe: Recipe) -> str:
    if recipe.method is not Method.DINO:
        return "(Seconds are wall time per epoch; an epoch that shared the cores with other work took longer.)"
    k = recipe.objective.out_dim
    return (
        f"(Entropies in nats; log K = {math.log(k):.2f} for K = {k} prototypes. A mean-distribution entropy near 0 "
        "would be collapse onto one prototype, a per-image entropy near log K collapse to uniform.)"
    )


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
