"""The demo encoder's recipe: architecture, method (DINO or MAE) with its settings, optimisation, as one record.

params/demo_encoder.yaml sets what the committed model's recipe changes from these defaults (its model card lists
every value); a test passes a tiny one. Every field decides the weights, so the record's digest names the
training run's checkpoints: a changed recipe never resumes from another recipe's checkpoint.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field

from lesionsignal.core.digests import stable_digest


@dataclass(frozen=True)
class Architecture:
    """A Dinov2Model: CLS token, no registers. ``image_size`` is the input side the model is trained and run at."""

    image_size: int = 448
    patch_size: int = 28
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of {self.num_attention_heads} heads")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def config(self) -> dict[str, int]:
        """Constructor arguments of transformers' Dinov2Config."""
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.mlp_ratio * self.hidden_size,
        }


@dataclass(frozen=True)
class Views:
    """DINO's multi-crop: two global views at the model's input size, small local views, and the photometric
    augmentations (brightness and contrast jitter, Gaussian blur, solarisation) with DINO's probabilities.
    Scales are fractions of the film's area. No flips: a chest film's left and right are anatomy."""

    local_size: int = 196
    n_local: int = 6
    global_scale: tuple[float, float] = (0.35, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.35)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)  # of every crop (width over height)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # first global, second global, each local
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # output pixels
    solarize_p: float = 0.2  # second global only


class Centering(enum.Enum):
    """How the teacher's outputs become targets."""

    MEAN = "mean"  # DINO: subtract a running mean of the teacher's logits, then sharpen
    SINKHORN = "sinkhorn"  # DINOv2: Sinkhorn-Knopp, every batch spread evenly over the prototypes


@dataclass(frozen=True)
class Objective:
    """DINO self-distillation: head widths, temperatures, centring, the teacher's momentum schedule, and DINOv2's
    KoLeo term (the student's CLS vectors of a batch pushed apart; 0 turns it off)."""

    out_dim: int = 1024
    head_hidden: int = 512
    head_bottleneck: int = 128
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 3
    center_momentum: float = 0.9
    momentum_start: float = 0.996
    momentum_end: float = 1.0
    centering: Centering = Centering.MEAN
    sinkhorn_iterations: int = 3
    koleo_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be at least 1, got {self.sinkhorn_iterations}")
        if self.koleo_weight < 0:
            raise ValueError(f"koleo_weight must not be negative, got {self.koleo_weight}")


@dataclass(frozen=True)
class Masking:
    """Masked-image modelling (MAE, He et al. 2022): the encoder sees a random quarter of the patches of one view,
    a small transformer decoder reconstructs the others' pixels (each patch normalised by its own mean and variance)."""

    mask_ratio: float = 0.75
    decoder_dim: int = 96
    decoder_depth: int = 2
    decoder_heads: int = 3
    crop_scale: tuple[float, float] = (0.4, 1.0)  # the one view: a random resized crop, then Views' jitter
    # MAE's decoder can ignore the CLS token (the visible patches suffice), so nothing makes it summarise the film.
    # A linear head from the CLS token to a global_side x global_side thumbnail of the whole view (each thumbnail
    # standardised, so it is the view's layout and not its exposure) adds global_weight x that error to the loss.
    global_weight: float = 0.0
    global_side: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.global_weight < 0:
            raise ValueError(f"global_weight must not be negative, got {self.global_weight}")
        if self.global_side < 2:
            raise ValueError(f"global_side must be at least 2, got {self.global_side}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} must be a multiple of {self.decoder_heads} heads")


# The fields of Views that MAE's single view uses (its crop is Masking.crop_scale; no blur, no solarisation).
_MAE_VIEW_FIELDS = ("jitter_p", "brightness", "contrast")


class Method(enum.Enum):
    DINO = "dino"  # self-distillation: the objective family of DINOv2 and RAD-DINO
    MAE = "mae"  # masked-image modelling: what the demo encoder uses (DINO collapsed on two cores; see the card)


@dataclass(frozen=True)
class Optimisation:
    epochs: int = 16
    batch_size: int = 32
    # Peak, for this batch size. At 5e-4 (8 times DINO's rule, 5e-4 x batch / 256) the teacher collapsed to the
    # uniform distribution in the second epoch (per-image entropy 6.79 of log K = 6.93); DINO's rule itself is 6e-5.
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_epochs: int = 2
    weight_decay: tuple[float, float] = (0.04, 0.4)  # cosine from the first to the second (DINO's values)
    clip_grad: float = 3.0
    freeze_last_layer_epochs: int = 1  # DINO only
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Recipe:
    """``views`` and ``objective`` are DINO's, ``masking`` is MAE's; ``method`` says which one trains."""

    method: Method = Method.DINO
    architecture: Architecture = field(default_factory=Architecture)
    views: Views = field(default_factory=Views)
    objective: Objective = field(default_factory=Objective)
    masking: Masking = field(default_factory=Masking)
    optimisation: Optimisation = field(default_factory=Optimisation)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.views.local_size % self.architecture.patch_size:
            raise ValueError(
                f"views.local_size {self.views.local_size} must be a multiple of the patch "
                f"{self.architecture.patch_size}"
            )

    def as_dict(self) -> dict:
        """The fields that decide the weights: the other method's settings are left out."""
        out = asdict(self)
        out["method"] = self.method.value
        out["objective"]["centering"] = self.objective.centering.value
        if self.method is Method.MAE:
            out.pop("objective")
            out["optimisation"].pop("freeze_last_layer_epochs")
            out["views"] = {k: out["views"][k] for k in _MAE_VIEW_FIELDS}  # MAE's one view jitters as DINO's do
            if self.masking.global_weight == 0:  # no global head: its side decides nothing (and old digests hold)
                out["masking"].pop("global_weight")
                out["masking"].pop("global_side")
        else:
            out.pop("masking")
        return out

    def digest(self) -> str:
        return stable_digest(self.as_dict())[:16]
