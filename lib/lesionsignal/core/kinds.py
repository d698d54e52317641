"""The project's small vocabularies, as enums whose values are the words written in tables and file names."""

from __future__ import annotations

import enum


class RunKind(enum.Enum):
    """What a run is: its results are labelled with it everywhere they appear."""

    DEMO = "demo"  # embedded default: rendered demo cohort, random-init demo encoders
    SMOKE = "smoke"  # tiny, for tests: the demo's inputs at toy sizes
    STUDY = "study"  # real data and real weights: comparable with the paper

    @property
    def comparable_with_paper(self) -> bool:
        return self is RunKind.STUDY


class Pool(enum.StrEnum):
    """Where a probe's features come from: the pools of one forward pass, the raw-pixel baselines, and the
    fine-tuned CNN's two views. The values are the ``pool`` column of every results table."""

    CLS = "cls"  # the encoder's global vector: CLS token or its own pooling head
    PATCH_MEAN = "patch_mean"  # mean of every final-layer patch token
    PATCH_LOCAL = "patch_local"  # mean of the patch tokens whose cells meet the box
    RAW_GLOBAL = "raw_global"  # the whole image area-downsampled to 64 x 64
    RAW_ORACLE = "raw_oracle"  # a 32 x 32 pixel window centred on the box
    FINETUNED = "finetuned"  # a CNN trained end to end on the whole image
    FINETUNED_ORACLE = "finetuned_oracle"  # the same on a window at the box


ENCODER_POOLS = (Pool.CLS, Pool.PATCH_MEAN, Pool.PATCH_LOCAL)
RAW_POOLS = (Pool.RAW_GLOBAL, Pool.RAW_ORACLE)
FINETUNED_POOLS = (Pool.FINETUNED, Pool.FINETUNED_ORACLE)
