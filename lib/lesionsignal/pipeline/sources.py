"""The run's feature sources on a device: loaded encoders where units are computed, weightless planned encoders
where they are only planned and read (the process that submits a Slurm array or feeds GPU workers).

Both make the same unit keys: an encoder's key holds the precision it runs in, and the precision follows from the
kind of device alone (half precision is a GPU setting; on a CPU every encoder runs in float32).
"""

from __future__ import annotations

from lesionsignal.config.execution import device_type
from lesionsignal.config.params import EncoderParams, Params
from lesionsignal.features.encoder import load_encoder
from lesionsignal.features.pools import EncoderFeatures, FeatureSource, PlannedEncoder, RawPixels
from lesionsignal.features.registry import resolve_spec


def device_for(params: Params) -> str:
    import torch

    wanted = params.extraction.device
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{params.source}: extraction.device is cuda but no CUDA device is available")
    return wanted


def precision(entry: EncoderParams, device: str) -> object:
    """The torch dtype an encoder runs in on ``device`` (``cuda:1`` counts as cuda)."""
    import torch

    dtype = getattr(torch, entry.dtype)
    if device_type(device) == "cpu" and dtype is not torch.float32:
        return torch.float32  # half precision is a GPU setting; the vectors are keyed by the dtype actually used
    return dtype


def encoder_source(entry: EncoderParams, device: str) -> EncoderFeatures:
    spec = resolve_spec(entry.id, source=entry.source, revision=entry.revision)
    encoder = load_encoder(spec, device=device, dtype=precision(entry, device), seed=entry.seed)
    return EncoderFeatures(encoder, batch_size=entry.batch_size, seed=entry.seed)


def planned_encoder(entry: EncoderParams, device: str) -> PlannedEncoder:
    spec = resolve_spec(entry.id, source=entry.source, revision=entry.revision)
    return PlannedEncoder(spec, precision(entry, device), entry.seed)  # type: ignore[arg-type]


def encoder_sources(params: Params, device: str | None = None, load: bool = True) -> list[FeatureSource]:
    """Every encoder of the run on ``device`` (default: the run's): loaded, or planned without weights."""
    device = device or device_for(params)
    make = encoder_source if load else planned_encoder
    return [make(entry, device) for entry in params.encoders]


def panel_sources(params: Params, device: str, load: bool) -> list[FeatureSource]:
    """The panel's sources: the raw-pixel baseline, then the encoders in parameter order."""
    return [RawPixels(), *encoder_sources(params, device, load)]
