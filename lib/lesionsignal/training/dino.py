"""DINO self-distillation (Caron et al. 2021), the objective family of DINOv2 and RAD-DINO, written small.

A student and an exponential-moving-average teacher share one architecture. The teacher sees the two global views;
the student sees every view and is trained so its softmax over ``out_dim`` prototypes matches the teacher's
(centred and sharpened) softmax of a different view. Centring and sharpening together keep the outputs from
collapsing to one prototype or to the uniform distribution; ``collapse_statistics`` tells which way a run drifts.

DINOv2's two additions are here too: Sinkhorn-Knopp centring, which makes a batch's targets use the prototypes
evenly with no running state, and the KoLeo term, which spreads the student's CLS vectors of a batch. The second
works against the uniform collapse seen on the demo films: they all come from one CT, so their outputs start nearly
equal, and sharpened targets of nearly equal outputs are nearly flat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesionsignal.training.recipe import Centering, Objective


class DinoHead(nn.Module):
    """MLP (3 layers, GELU) to an L2-normalised bottleneck, then a weight-normalised linear layer to prototypes."""

    def __init__(self, in_dim: int, objective: Objective) -> None:
        super().__init__()
        hidden, bottleneck = objective.head_hidden, objective.head_bottleneck
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, objective.out_dim, bias=False))
        # DINO fixes the norm of each prototype at 1 (only directions are learned).
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DinoLoss(nn.Module):
    """Cross-entropy between the teacher's centred, sharpened distribution and the student's, over view pairs
    (each teacher global against every student view but the same one). Holds the running centre."""

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        self.student_temp = objective.student_temp
        self.center_momentum = objective.center_momentum
        self.centering = objective.centering
        self.sinkhorn_iterations = objective.sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, objective.out_dim))

    @torch.no_grad()
    def targets(self, teacher: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """The teacher's (2B, K) target distributions."""
        if self.centering is Centering.SINKHORN:
            return sinkhorn_knopp(teacher, teacher_temp, self.sinkhorn_iterations)
        return F.softmax((teacher - self.center) / teacher_temp, dim=-1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, n_views: int, teacher_temp: float) -> torch.Tensor:
        """student: (n_views * B, K) logits, globals first; teacher: (2 * B, K) logits of the two globals."""
        student_out = (student / self.student_temp).chunk(n_views)
        targets = self.targets(teacher, teacher_temp).chunk(2)
        total, pairs = student.new_zeros(()), 0
        for t, target in enumerate(targets):
            for v, logits in enumerate(student_out):
                if v == t:
                    continue
                total = total + torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
                pairs += 1
        self._update_center(teacher)
        return total / pairs

    @torch.no_grad()
    def _update_center(self, teacher: torch.Tensor) -> None:
        batch_center = teacher.mean(dim=0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int) -> torch.Tensor:
    """(B, K) targets whose rows sum to 1 and whose columns each sum to B / K: alternate normalisations of
    exp(logits / temp), starting from the prototypes (SwAV; DINOv2's teacher centring)."""
    q = torch.exp((logits - logits.max()) / temp).double().T  # double: exp of a spread of 1 / temp = 25 underflows
    n_prototypes, batch = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * n_prototypes
        q /= q.sum(dim=0, keepdim=True) * batch
    return (q * batch).T.to(logits.dtype)


def koleo_loss(vectors: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko term: minus the mean log distance of each L2-normalised vector to its nearest other one.
    Low when the batch is spread over the sphere; it grows without bound as two vectors meet."""
    x = F.normalize(vectors, dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.T
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distances + eps).mean()


@dataclass(frozen=True)
class CollapseStatistics:
    """Entropy of the teacher's mean distribution (near log K: prototypes used evenly; near 0: one prototype) and
    mean entropy of its per-image distributions (near log K: every image uniform, the other collapse)."""

    mean_entropy: float
    per_image_entropy: float


@torch.no_grad()
def collapse_statistics(probs: torch.Tensor) -> CollapseStatistics:
    """Of the teacher's (B, K) target distributions."""
    mean = probs.mean(dim=0)
    mean_entropy = float(-(mean * torch.log(mean.clamp_min(1e-12))).sum())
    per_image = float(-(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1).mean())
    return CollapseStatistics(mean_entropy, per_image)


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for s, t in zip(student.parameters(), teacher.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def cosine_schedule(
    start: float, end: float, steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Per-step values: linear warm-up from ``warmup_start`` to ``start``, then a cosine from ``start`` to ``end``."""
    warmup = np.linspace(warmup_start, start, warmup_steps, endpoint=False) if warmup_steps else np.zeros(0)
    rest = steps - warmup_steps
    if rest < 0:
        raise ValueError(f"warm-up of {warmup_steps} steps is longer than the {steps} steps")
    t = np.arange(rest)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(math.pi * t / max(rest, 1)))
    return np.concatenate([warmup, cosine])


def teacher_temperatures(objective: Objective, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """Per-step teacher temperature: linear from the warm-up value over the warm-up epochs, then constant."""
    warm = min(objective.warmup_teacher_temp_epochs, epochs) * steps_per_epoch
    ramp = np.linspace(objective.warmup_teacher_temp, objective.teacher_temp, warm, endpoint=False)
    return np.concatenate([ramp, np.full(epochs * steps_per_epoch - warm, objective.teacher_temp)])
