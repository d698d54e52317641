"""The demo encoder's training: DINO on a handful of tiny films, the model folder, the registry's digest check."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionsignal.features.encoder import load_encoder
from lesionsignal.features.geometry import Geometry
from lesionsignal.features.registry import DEMO_ENCODERS, EncoderMismatch, resolve_spec
from lesionsignal.features.sources import check_source
from lesionsignal.training.dino import DinoLoss, cosine_schedule, koleo_loss, sinkhorn_knopp, teacher_temperatures
from lesionsignal.training.loop import CHECKPOINT, TrainResult, train
from lesionsignal.training.mae import patchify, random_keep, thumbnails
from lesionsignal.training.model_folder import CARD, PROCESSOR, WEIGHTS, TrainingData, write_model_folder
from lesionsignal.training.multicrop import Normalisation, film_views, random_crop
from lesionsignal.training.recipe import (
    Architecture,
    Centering,
    Masking,
    Method,
    Objective,
    Optimisation,
    Recipe,
    Views,
)

TINY = Recipe(
    architecture=Architecture(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
    views=Views(local_size=28, n_local=2),
    objective=Objective(out_dim=64, head_hidden=64, head_bottleneck=16, warmup_teacher_temp_epochs=0),
    optimisation=Optimisation(epochs=6, batch_size=4, lr=5e-3, warmup_epochs=1, freeze_last_layer_epochs=0),
    seed=3,
)
TINY_MAE = replace(
    TINY,
    method=Method.MAE,
    masking=Masking(decoder_dim=16, decoder_depth=1, decoder_heads=2),
    optimisation=replace(TINY.optimisation, epochs=8, lr=3e-3, betas=(0.9, 0.95)),
)
TINY_MAE_GLOBAL = replace(TINY_MAE, masking=replace(TINY_MAE.masking, global_weight=1.0, global_side=4))
DATA = TrainingData("tiny synthetic films", {"seed": 1}, 8, 8, 0, 0, "0" * 64)


def tiny_films(n: int = 8, side: int = 112, seed: int = 0) -> list[np.ndarray]:
    """Dark films with a bright disc and a bar at seeded places: something for the views to agree on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    films = []
    for _ in range(n):
        cy, cx = rng.integers(25, side - 25, 2).tolist()
        r = int(rng.integers(8, 16))
        film = 40 + 20 * rng.random((side, side))
        film[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 200
        bar = int(rng.integers(5, side - 10))
        film[:, bar : bar + 4] = 120
        films.append(film.astype(np.uint8))
    return films


def tiny_spec(folder: Path, result: TrainResult, digest: str):
    """The trained demo encoder's registry entry, re-pointed at a tiny trained folder (shape fields follow it)."""
    norm = result.normalisation
    geometry = Geometry(56, None, 14, (norm.mean,) * 3, (norm.std,) * 3, "bilinear")
    base = resolve_spec("demo-dino-vit")
    return replace(base, source=str(folder), geometry=geometry, dim=32, native_size=56, weights_sha256=digest)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path, str]:
    work = tmp_path_factory.mktemp("training")
    result = train(TINY, tiny_films(), work, progress=False)
    folder = work / "model"
    digest = write_model_folder(folder, result, TINY, DATA, "tiny demo encoder (trained by this project)", "pytest")
    return result, folder, digest


def test_the_dino_loss_falls(trained: tuple[TrainResult, Path, str]) -> None:
    result, _, _ = trained
    losses = [r.loss for r in result.history]
    assert len(losses) == TINY.optimisation.epochs
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.1, losses


def test_the_folder_loads_through_the_registry_as_a_local_folder(trained: tuple[TrainResult, Path, str]) -> None:
    result, folder, digest = trained
    assert (folder / WEIGHTS).is_file() and (folder / PROCESSOR).is_file()
    card = (folder / CARD).read_text()
    assert digest in card and "trained by this project" in card and "Not a foundation model" in card
    spec = tiny_spec(folder, result, digest)
    assert check_source(spec).ok, check_source(spec).summary()
    encoder = load_encoder(spec)
    canvases = np.stack([np.pad(f, 8) for f in tiny_films(3, seed=9)])
    pixels = encoder.preprocess(canvases)
    with torch.inference_mode():
        expected = result.teacher(pixel_values=pixels).pooler_output
    assert torch.allclose(encoder.forward(pixels).global_vec, expected, atol=1e-6)


def test_a_changed_weights_file_is_refused_by_its_sha256(
    trained: tuple[TrainResult, Path, str], tmp_path: Path
) -> None:
    result, folder, digest = trained
    copy = tmp_path / "model"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = bytearray((copy / WEIGHTS).read_bytes())
    data[-1] ^= 1  # one bit of the last weight: still a valid file, no longer the pinned one
    (copy / WEIGHTS).write_bytes(bytes(data))
    spec = tiny_spec(copy, result, digest)
    with pytest.raises(EncoderMismatch, match="SHA-256"):
        load_encoder(spec)
    report = check_source(spec)
    assert not report.ok and any("SHA-256" in m for m in report.mismatches)


def test_the_mae_loss_falls_and_only_the_encoder_is_kept(tmp_path: Path) -> None:
    result = train(TINY_MAE, tiny_films(), tmp_path, progress=False)
    losses = [r.loss for r in result.history]
    assert losses[-1] < losses[0] - 0.05, losses
    assert type(result.teacher).__name__ == "Dinov2Model"
    assert all(r.teacher_image_entropy is None for r in result.history)


def test_mae_masks_and_patches() -> None:
    keep = random_keep(3, 16, 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (3, 4) and all(len(set(row.tolist())) == 4 for row in keep)
    assert torch.equal(keep, random_keep(3, 16, 0.75, torch.Generator().manual_seed(0)))
    images = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 4, 16)
    assert torch.equal(patches[0, 1], images[0, :4, 4:].reshape(-1))  # row-major: the second patch is top right


def test_thumbnails_are_standardised_area_means() -> None:
    images = torch.zeros(2, 8, 8)
    images[0, :4, :4] = 1.0  # bright top-left quarter
    images[1] = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    small = thumbnails(images, 2)
    assert small.shape == (2, 4)
    assert torch.allclose(small.mean(dim=1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(small.std(dim=1), torch.ones(2), atol=1e-4)
    assert small[0].argmax() == 0 and torch.allclose(small[0, 1:], small[0, 1].expand(3))
    assert torch.all(small[1, 1:] > small[1, :-1])  # row-major: each cell's mean above the one before


def test_the_global_head_trains_with_mae_and_is_left_out_of_the_kept_encoder(tmp_path: Path) -> None:
    assert TINY_MAE_GLOBAL.digest() != TINY_MAE.digest()  # a changed objective never resumes another's checkpoint
    side_only = replace(TINY_MAE, masking=replace(TINY_MAE.masking, global_side=8))
    assert side_only.digest() == TINY_MAE.digest()  # without the head its side decides nothing
    result = train(TINY_MAE_GLOBAL, tiny_films(), tmp_path, progress=False)
    losses = [r.loss for r in result.history]
    assert losses[-1] < losses[0] - 0.05, losses
    state = torch.load(tmp_path / f"{TINY_MAE_GLOBAL.digest()}-{CHECKPOINT}", weights_only=False)
    head = {k for k in state["method"]["model"] if k.startswith("global_head.")}
    assert head == {"global_head.weight", "global_head.bias"}
    assert state["method"]["model"]["global_head.weight"].shape == (4 * 4, 32)
    assert type(result.teacher).__name__ == "Dinov2Model"
    assert not any("global_head" in k for k in result.teacher.state_dict())


def test_a_negative_global_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="global_weight"):
        Masking(global_weight=-1.0)


@pytest.mark.parametrize("recipe", [TINY, TINY_MAE, TINY_MAE_GLOBAL], ids=["dino", "mae", "mae-global"])
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, recipe: Recipe) -> None:
    recipe = replace(recipe, optimisation=replace(recipe.optimisation, epochs=2))
    films = tiny_films()
    straight = train(recipe, films, tmp_path / "a", progress=False)
    first = train(recipe, films, tmp_path / "b", progress=False, stop_after_epochs=1)
    assert len(first.history) == 1
    resumed = train(recipe, films, tmp_path / "b", progress=False)
    assert resumed.resumed_from_epoch == 1 and len(resumed.history) == 2
    a, b = straight.teacher.state_dict(), resumed.teacher.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_views_are_seeded_and_shaped() -> None:
    film = tiny_films(1)[0]
    norm = Normalisation(0.3, 0.2)
    one = film_views(film, TINY.views, 56, norm, np.random.default_rng(5))
    two = film_views(film, TINY.views, 56, norm, np.random.default_rng(5))
    other = film_views(film, TINY.views, 56, norm, np.random.default_rng(6))
    assert one.globals_.shape == (2, 56, 56) and one.locals_.shape == (2, 28, 28)
    assert np.array_equal(one.globals_, two.globals_) and np.array_equal(one.locals_, two.locals_)
    assert not np.array_equal(one.globals_, other.globals_)


def test_sinkhorn_targets_use_every_prototype_when_one_dominates_the_batch() -> None:
    # Every output favours prototype 0 (the one-prototype collapse): a plain sharpened softmax follows it, Sinkhorn-
    # Knopp spreads the batch evenly over the prototypes and keeps each image's target sharp.
    torch.manual_seed(0)
    logits = 0.1 * torch.randn(64, 32)
    logits[:, 0] += 0.5
    targets = sinkhorn_knopp(logits, temp=0.04, iterations=3)
    assert torch.allclose(targets.sum(dim=1), torch.ones(64), atol=1e-5)
    usage = targets.sum(dim=0)  # 3 iterations: near the 64 / 32 = 2 films each that equipartition asks for
    assert usage.min() > 1.0 and usage.max() < 3.0, usage

    def entropies(probs: torch.Tensor) -> tuple[float, float]:
        mean = probs.mean(dim=0)
        per_image = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1).mean()
        return float(-(mean * mean.clamp_min(1e-12).log()).sum()), float(per_image)

    plain = torch.softmax(logits / 0.04, dim=-1)
    assert entropies(plain)[0] < 0.5  # one prototype takes the batch
    balanced, sharp = entropies(targets)
    assert balanced > np.log(32) - 0.05 and sharp < np.log(32) - 1.0, (balanced, sharp)
    # The loss uses the configured centring.
    sk = DinoLoss(Objective(out_dim=32, centering=Centering.SINKHORN)).targets(logits, 0.04)
    assert torch.equal(sk, targets)


def test_koleo_is_low_for_spread_vectors_and_pushes_close_ones_apart() -> None:
    spread = torch.eye(8)
    close = torch.eye(8) + 5.0
    assert koleo_loss(spread) < koleo_loss(close)
    x = close.clone().requires_grad_(True)
    koleo_loss(x).backward()
    moved = koleo_loss((x - 0.5 * x.grad).detach())
    assert moved < koleo_loss(close)


def test_dino_with_sinkhorn_and_koleo_trains(tmp_path: Path) -> None:
    recipe = replace(TINY, objective=replace(TINY.objective, centering=Centering.SINKHORN, koleo_weight=0.1))
    assert recipe.digest() != TINY.digest()
    result = train(recipe, tiny_films(), tmp_path, progress=False)
    losses = [r.loss for r in result.history]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    last = result.history[-1]
    assert last.teacher_mean_entropy > np.log(64) - 0.05  # equipartition: every prototype used
    assert last.teacher_image_entropy < np.log(64) - 0.3  # and each film's target sharper than uniform


def test_crops_keep_the_aspect_ratio_asked_for() -> None:
    # A horizontal ramp: the crop's width is the span of gray levels the resized view covers.
    film = np.tile(np.arange(200, dtype=np.uint8), (200, 1))

    def span(aspect: tuple[float, float]) -> float:
        crop = random_crop(film, 32, (0.18, 0.18), np.random.default_rng(0), aspect)
        return float(crop.max() - crop.min()) * 255

    wide, tall = span((2.0, 2.0)), span((0.5, 0.5))
    assert abs(wide - 119) <= 3 and abs(tall - 59) <= 3, (wide, tall)


def test_schedules() -> None:
    values = cosine_schedule(1.0, 0.0, 10, warmup_steps=2)
    assert values.shape == (10,) and values[0] == 0.0 and values[2] == 1.0 and values[-1] > 0.0
    assert np.all(np.diff(values[2:]) <= 0)
    objective = Objective(warmup_teacher_temp=0.02, warmup_teacher_temp_epochs=2)
    temps = teacher_temperatures(objective, epochs=3, steps_per_epoch=2)
    assert temps.shape == (6,) and temps[0] == 0.02 and np.all(temps[4:] == 0.04)


def test_the_registry_twin_has_the_recipes_shape() -> None:
    twin = DEMO_ENCODERS["demo-dino-vit-random"]
    trained = DEMO_ENCODERS["demo-dino-vit"]
    arch = Recipe().architecture
    config = arch.config()
    assert twin.twin_of == trained.id and twin.random_init and not trained.random_init
    assert twin.geometry == trained.geometry and twin.dim == trained.dim == arch.hidden_size
    assert trained.geometry.input_size == arch.image_size and trained.geometry.patch == arch.patch_size
    assert {k: v for k, v in twin.config if k in config} == {k: config[k] for k, _ in twin.config}
    assert "trained by this project on rendered films" in trained.label


def test_the_committed_model_folder_is_the_one_the_registry_pins() -> None:
    spec = resolve_spec("demo-dino-vit")
    folder = Path(spec.source)
    report = check_source(spec)
    assert report.ok, report.summary()  # configs, preprocessing and the SHA-256 of the weights
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 20 * 1024 * 1024
    card = (folder / CARD).read_text()
    assert spec.weights_sha256 in card and "trained by this project" in card
    processor = json.loads((folder / PROCESSOR).read_text())
    assert processor["size"] == {"height": 448, "width": 448}


def test_training_subjects_are_checked_against_the_demo_cohort(tmp_path: Path) -> None:
    from lesionsignal.config.params import CohortKind, load_params, project_root
    from lesionsignal.config.training import load_training_params
    from lesionsignal.demo.config import DemoCohortConfig
    from lesionsignal.demo.overlap import shared_subjects
    from lesionsignal.pipeline.demo_encoder import SharedSubjects, check_disjoint, generator_config

    assert shared_subjects(DemoCohortConfig(n_images=20, seed=1), DemoCohortConfig(n_images=40, seed=1)) == [
        (i, i) for i in range(10)
    ]
    assert shared_subjects(DemoCohortConfig(n_images=200, seed=2), DemoCohortConfig(n_images=200, seed=1)) == []
    root = project_root()
    shipped = load_training_params(root / "params/demo_encoder.yaml")
    check_disjoint(shipped, root)  # the shipped recipe draws none of the demo cohort's subjects
    assert generator_config(shipped).seed != 42
    clash = tmp_path / "clash.yaml"
    text = (root / "params/demo_encoder.yaml").read_text().replace("seed: 2026", "seed: 42")
    clash.write_text(text.replace("demo_params: params/demo.yaml", f"demo_params: {root / 'params/demo.yaml'}"))
    with pytest.raises(SharedSubjects, match=r"training subjects are subjects of the demo cohort.*films.seed"):
        check_disjoint(load_training_params(clash), root)
    # every demo cohort of the demo run counts, the learning checks' own films included
    demo = load_params(root / "params/demo.yaml")
    own = next(c for c in demo.clean_only_cohorts() if c.kind is CohortKind.DEMO)
    seed = demo.demo_config(own).seed
    clash.write_text(clash.read_text().replace("seed: 42", f"seed: {seed}"))
    with pytest.raises(SharedSubjects, match=rf"demo cohort '{own.name}'.*other than {seed}"):
        check_disjoint(load_training_params(clash), root)


def test_make_demo_encoder_end_to_end_on_a_tiny_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Render a few films of its own subjects, train one epoch, write the folder; a second call trains nothing."""
    from lesionsignal.config.params import project_root
    from lesionsignal.config.training import load_training_params
    from lesionsignal.pipeline.demo_encoder import run

    root = project_root()
    params_file = tmp_path / "tiny.yaml"
    params_file.write_text(
        f"""name: tiny
encoder: demo-dino-vit
demo_params: {root / "params/demo.yaml"}
films: {{n_images: 12, images_per_subject: 2, held_out_fraction: 0.34, seed: 11, workers: 1}}
recipe:
  method: mae
  architecture: {{image_size: 56, patch_size: 14, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2}}
  masking: {{decoder_dim: 16, decoder_depth: 1, decoder_heads: 2}}
  optimisation: {{epochs: 1, batch_size: 4, warmup_epochs: 0}}
paths: {{data_cache: {root / ".cache/data"}, cache: {tmp_path / "cache"}}}
"""
    )
    params = load_training_params(params_file)
    out = tmp_path / "model"
    digest = run(params, root=root, progress=False, output=out)
    printed = capsys.readouterr().out
    assert digest is not None and f"weights SHA-256 {digest}" in printed
    assert "held-out same-subject top-1" in printed and "set its weights_sha256" in printed
    card = (out / CARD).read_text()
    assert "8 training films of 4 subjects" in card and "4 films of" in card and "Masked-image modelling" in card
    assert "## Evaluation against the random-init twin" in card and "same-subject retrieval" in card
    assert run(params, root=root, progress=False, output=tmp_path / "again") == digest  # resumed: nothing retrained


def test_a_missing_trained_folder_says_how_to_get_it_back(tmp_path: Path) -> None:
    spec = replace(resolve_spec("demo-dino-vit"), source=str(tmp_path / "gone"))
    report = check_source(spec)
    assert not report.ok and any("git checkout -- models/" in m and "make demo-encoder" in m for m in report.missing)


def test_a_bad_evaluation_setting_stops_before_any_rendering(tmp_path: Path) -> None:
    from lesionsignal.config.params import project_root
    from lesionsignal.config.training import load_training_params
    from lesionsignal.core.validate import ParamsError

    text = (project_root() / "params/demo_encoder.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "evaluation: {c_grid: [1.0, -2.0], n_boot: 0}\n")
    with pytest.raises(ParamsError, match=r"evaluation\.c_grid\[1\].*positive"):
        load_training_params(bad)
