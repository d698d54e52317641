"""The seeded, resumable DINO training loop on 8-bit films held in memory.

A checkpoint (student, teacher, head, optimiser, centre, history) is written atomically after every epoch under the
recipe's digest, so an interrupted run resumes at the last finished epoch and draws the same batches and views it
would have drawn: data order and views are seeded by (seed, epoch, step), not by a generator's running state.
After each epoch the teacher is checked on held-out films: top-1 retrieval of the other film of the same subject
(cosine similarity of CLS vectors), a measure of learning that knows nothing of the study's stimuli.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from lesionsignal.core.files import atomic_writer
from lesionsignal.core.progress import progress_bar
from lesionsignal.core.torch_compat import ensure_torchvision
from lesionsignal.features.retrieval import nearest_other
from lesionsignal.training.dino import (
    CollapseStatistics,
    DinoHead,
    DinoLoss,
    collapse_statistics,
    cosine_schedule,
    koleo_loss,
    teacher_temperatures,
    update_teacher,
)
from lesionsignal.training.mae import MaeDecoder, encode_visible, global_loss, mae_loss, random_keep
from lesionsignal.training.multicrop import Normalisation, film_statistics, film_views, masked_view
from lesionsignal.training.recipe import Method, Recipe

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class HeldOut:
    """Films of subjects never trained on, with their subject ids (each subject two films or more)."""

    films: Sequence[np.ndarray]
    subjects: Sequence[str]

    def __post_init__(self) -> None:
        if len(self.films) != len(self.subjects):
            raise ValueError(f"{len(self.films)} held-out films but {len(self.subjects)} subject ids")


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    teacher_mean_entropy: float | None  # DINO only
    teacher_image_entropy: float | None
    retrieval_top1: float | None
    seconds: float


@dataclass
class TrainResult:
    teacher: nn.Module  # the backbone that is kept (DINO evaluates the teacher)
    normalisation: Normalisation
    initial_retrieval_top1: float | None
    history: list[EpochRecord] = field(default_factory=list)
    resumed_from_epoch: int = 0

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.history)


class Backbone(nn.Module):
    """Dinov2Model and the DINO head on its CLS output."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.encoder = build_encoder(recipe)
        self.head = DinoHead(recipe.architecture.hidden_size, recipe.objective)

    def cls(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=pixels).pooler_output

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.cls(pixels))


def build_encoder(recipe: Recipe) -> nn.Module:
    ensure_torchvision()  # transformers' vision code imports torchvision
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(Dinov2Config(**recipe.architecture.config()))


@dataclass
class StepResult:
    loss: torch.Tensor
    entropies: CollapseStatistics | None = None  # DINO's teacher, to tell learning from collapse


class DinoTraining:
    """Student and momentum teacher with the DINO head; the teacher's backbone is kept."""

    name = "DINO"

    def __init__(self, recipe: Recipe, total: int, steps_per_epoch: int) -> None:
        self.recipe = recipe
        self.student = Backbone(recipe)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.loss_fn = DinoLoss(recipe.objective)
        objective = recipe.objective
        self.momentum = cosine_schedule(objective.momentum_start, objective.momentum_end, total)
        self.temps = teacher_temperatures(objective, recipe.optimisation.epochs, steps_per_epoch)

    @property
    def trained(self) -> nn.Module:
        return self.student

    @property
    def kept(self) -> nn.Module:
        return self.teacher.encoder

    def step(self, films: list[np.ndarray], norm: Normalisation, rng: np.random.Generator, it: int) -> StepResult:
        globals_, locals_ = _batch_views(self.recipe, films, norm, rng)
        temp = float(self.temps[it])
        with torch.no_grad():
            teacher_out = self.teacher(globals_)
        statistics = collapse_statistics(self.loss_fn.targets(teacher_out, temp))  # before the centre moves
        cls = self.student.cls(globals_)
        student_out = self.student.head(cls)
        if len(locals_):
            student_out = torch.cat([student_out, self.student(locals_)])
        loss = self.loss_fn(student_out, teacher_out, 2 + self.recipe.views.n_local, temp)
        weight = self.recipe.objective.koleo_weight
        if weight:
            loss = loss + weight * sum(koleo_loss(c) for c in cls.chunk(2))
        return StepResult(loss, statistics)

    def before_update(self, epoch: int) -> None:
        if epoch < self.recipe.optimisation.freeze_last_layer_epochs:
            for p in self.student.head.last_layer.parameters():
                p.grad = None

    def after_update(self, it: int) -> None:
        update_teacher(self.student, self.teacher, float(self.momentum[it]))

    def state(self) -> dict:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "loss": self.loss_fn.state_dict(),
        }

    def load(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.loss_fn.load_state_dict(state["loss"])


class MaeTraining:
    """Dinov2Model encoder on a random quarter of the patches and a small pixel decoder; the encoder is kept."""

    name = "MAE"

    def __init__(self, recipe: Recipe, total: int, steps_per_epoch: int) -> None:
        self.recipe = recipe
        arch = recipe.architecture
        self.model = nn.ModuleDict(
            {
                "encoder": build_encoder(recipe),
                "decoder": MaeDecoder(arch.hidden_size, arch.grid**2, arch.patch_size**2, recipe.masking),
            }
        )
        if recipe.masking.global_weight > 0:
            self.model["global_head"] = nn.Linear(arch.hidden_size, recipe.masking.global_side**2)

    @property
    def trained(self) -> nn.Module:
        return self.model

    @property
    def kept(self) -> nn.Module:
        return self.model["encoder"]

    def step(self, films: list[np.ndarray], norm: Normalisation, rng: np.random.Generator, it: int) -> StepResult:
        arch, masking = self.recipe.architecture, self.recipe.masking
        images = np.stack([masked_view(f, arch.image_size, masking, self.recipe.views, norm, rng) for f in films])
        gray = torch.from_numpy(images)
        pixels = gray.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        keep = random_keep(len(films), arch.grid**2, masking.mask_ratio, generator)
        hidden = encode_visible(self.model["encoder"], pixels, keep)
        prediction = self.model["decoder"](hidden, keep, arch.grid**2)
        loss = mae_loss(prediction, gray, keep, arch.patch_size)
        if masking.global_weight > 0:
            loss = loss + masking.global_weight * global_loss(
                self.model["global_head"], hidden[:, 0], gray, masking.global_side
            )
        return StepResult(loss)

    def before_update(self, epoch: int) -> None:
        pass

    def after_update(self, it: int) -> None:
        pass

    def state(self) -> dict:
        return {"model": self.model.state_dict()}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])


_METHODS = {Method.DINO: DinoTraining, Method.MAE: MaeTraining}


def train(
    recipe: Recipe,
    films: Sequence[np.ndarray],
    work: Path,
    *,
    held_out: HeldOut | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train (or resume) ``recipe`` on ``films`` (2-D uint8, all one size), checkpointing in ``work``.

    ``stop_after_epochs`` ends this call early (the checkpoint stays, a later call resumes): for tests and for
    splitting a long run.
    """
    opt = recipe.optimisation
    steps_per_epoch = len(films) // opt.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{len(films)} films make no batch of {opt.batch_size}")
    total = opt.epochs * steps_per_epoch
    norm = film_statistics(list(films), recipe.architecture.image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        method = _METHODS[recipe.method](recipe, total, steps_per_epoch)
    optimiser = torch.optim.AdamW(_param_groups(method.trained), betas=opt.betas)
    lr = cosine_schedule(opt.lr, opt.min_lr, total, min(opt.warmup_epochs * steps_per_epoch, total))
    wd = cosine_schedule(*opt.weight_decay, total)

    checkpoint = Path(work) / f"{recipe.digest()}-{CHECKPOINT}"
    initial = _retrieval(method.kept, held_out, recipe, norm)
    history: list[EpochRecord] = []
    start_epoch = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        method.load(state["method"])
        optimiser.load_state_dict(state["optimiser"])
        history = [EpochRecord(**r) for r in state["history"]]
        start_epoch = len(history)
    resumed = start_epoch

    bar = progress_bar((opt.epochs - start_epoch) * steps_per_epoch, f"{method.name} training", "step", progress)
    last = opt.epochs if stop_after_epochs is None else min(opt.epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, last):
        began = time.perf_counter()
        order = np.random.default_rng([recipe.seed, epoch]).permutation(len(films))
        losses, stats = [], None
        method.trained.train()
        for step in range(steps_per_epoch):
            it = epoch * steps_per_epoch + step
            batch = order[step * opt.batch_size : (step + 1) * opt.batch_size]
            rng = np.random.default_rng([recipe.seed, epoch, step])
            for group in optimiser.param_groups:
                group["lr"] = float(lr[it])
                group["weight_decay"] = float(wd[it]) if group["decay"] else 0.0
            result = method.step([films[i] for i in batch], norm, rng, it)
            if not torch.isfinite(result.loss):
                raise FloatingPointError(
                    f"{method.name} loss is {result.loss.item()} at epoch {epoch + 1}, step {step + 1}"
                )
            optimiser.zero_grad(set_to_none=True)
            result.loss.backward()
            nn.utils.clip_grad_norm_(method.trained.parameters(), opt.clip_grad)
            method.before_update(epoch)
            optimiser.step()
            method.after_update(it)
            losses.append(result.loss.item())
            stats = result.entropies
            bar.update(1)
        record = EpochRecord(
            epoch=epoch + 1,
            loss=float(np.mean(losses)),
            teacher_mean_entropy=stats.mean_entropy if stats else None,
            teacher_image_entropy=stats.per_image_entropy if stats else None,
            retrieval_top1=_retrieval(method.kept, held_out, recipe, norm),
            seconds=time.perf_counter() - began,
        )
        history.append(record)
        _save(checkpoint, method.state(), optimiser, history)
        if on_epoch is not None:
            on_epoch(record)
    bar.close()
    return TrainResult(method.kept.eval(), norm, initial, history, resumed)


def _param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on weight matrices only, never on biases, norms, position embeddings or the CLS token."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if p.ndim <= 1 or ("embeddings" in name and "patch" not in name) else decay).append(p)
    return [{"params": decay, "decay": True}, {"params": plain, "decay": False}]


def _batch_views(
    recipe: Recipe, films: list[np.ndarray], norm: Normalisation, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, 3, S, S) globals and (n_local B, 3, s, s) locals, view-major (all first globals, then all second...)."""
    views = [film_views(f, recipe.views, recipe.architecture.image_size, norm, rng) for f in films]
    globals_ = np.concatenate([np.stack([v.globals_[g] for v in views]) for g in range(2)])
    locals_ = [np.stack([v.locals_[i] for v in views]) for i in range(recipe.views.n_local)]
    as_rgb = lambda a: torch.from_numpy(a).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()  # noqa: E731
    local_tensor = as_rgb(np.concatenate(locals_)) if locals_ else torch.zeros(0)
    return as_rgb(globals_), local_tensor


def film_input(film: np.ndarray, size: int, norm: Normalisation) -> torch.Tensor:
    """A whole film as (3, S, S) model input: area-averaged resize, scaled to [0, 1], normalised."""
    small = cv2.resize(film, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return torch.from_numpy((small - np.float32(norm.mean)) / np.float32(norm.std)).expand(3, -1, -1)


@torch.no_grad()
def cls_vectors(encoder: nn.Module, films: Sequence[np.ndarray], size: int, norm: Normalisation) -> np.ndarray:
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(films), 32):
        pixels = torch.stack([film_input(f, size, norm) for f in films[start : start + 32]])
        out.append(encoder(pixel_values=pixels).pooler_output.numpy())
    encoder.train(was_training)
    return np.concatenate(out)


def retrieval_top1(vectors: np.ndarray, subjects: Sequence[str]) -> float:
    """Fraction of items whose nearest other item (cosine) belongs to the same subject."""
    labels = np.asarray(subjects)
    return float(np.mean(labels[nearest_other(vectors)] == labels))


def _retrieval(encoder: nn.Module, held_out: HeldOut | None, recipe: Recipe, norm: Normalisation) -> float | None:
    if held_out is None:
        return None
    vectors = cls_vectors(encoder, held_out.films, recipe.architecture.image_size, norm)
    return retrieval_top1(vectors, held_out.subjects)


def _save(path: Path, method_state: dict, optimiser: torch.optim.Optimizer, history: list[EpochRecord]) -> None:
    state = {"method": method_state, "optimiser": optimiser.state_dict(), "history": [asdict(r) for r in history]}
    with atomic_writer(path) as handle:
        torch.save(state, handle)
