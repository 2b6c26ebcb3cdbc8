"""DCGAN training: train_step, the fit loop's run directory, exact resume, divergence,
loading a run (and refusing bad ones), the ``train dcgan`` command and bf16."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from synthmed.augment.dataset import ImageSet
from synthmed.augment.phantom import PhantomConfig, make_phantom
from synthmed.errors import InputError
from synthmed.gan import checkpoint
from synthmed.gan.config import DCGANConfig, TrainConfig, resolve_precision
from synthmed.gan.dcgan import DCGAN
from synthmed.gan.run import build_model, load_run
from synthmed.gan.run_config import FORMAT_VERSION, RunConfig, read_run_config
from synthmed.gan.train import fit_dcgan_to_data
from synthmed.gan.trainer import TrainingDiverged, fit
from synthmed.settings import to_dict

from ..conftest import invoke, one_line_error

ALL_AUGMENTS = ("color", "translation", "cutout")
STAT_KEYS = {"loss_d", "loss_g", "d_real", "d_fake", "d_accuracy"}
METRIC_KEYS = STAT_KEYS | {"epoch", "images_per_s", "diversity", "lr_generator",
                           "lr_discriminator"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom() -> tuple[ImageSet, ImageSet]:
    """32 labelled 32x32 slices, T1 and T2 of the same anatomy."""
    return make_phantom(PhantomConfig(n=32, size=32))


@pytest.fixture(scope="module")
def phantom28() -> ImageSet:
    return make_phantom(PhantomConfig(n=16, size=28))[0]


def configs(model: dict | None = None, **train) -> tuple[DCGANConfig, TrainConfig]:
    model_config = DCGANConfig(size=32, width=4, **(model or {}))
    train_config = TrainConfig(**{"epochs": 1, "batch_size": 8, "preview": 4,
                                  "checkpoint_every": 1, **train})
    return model_config, train_config


def train_run(run_dir, data, model_config, train_config, *, resume=False, seed=None, model=None):
    config = RunConfig("dcgan", model_config, train_config)
    model = model or build_model(config, seed=train_config.seed if seed is None else seed)
    result = fit(model, data, config, run_dir, resume=resume, progress=False)
    return model, result


def dcgan(**options) -> DCGAN:
    """A tiny 32 px DCGAN, initialised from a fixed seed (an untrained width-4 G can come out
    dead in eval mode for some initialisations)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DCGAN(DCGANConfig(size=32, width=4, **options))


def batch(data: ImageSet, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.images[:n]), torch.from_numpy(data.labels[:n])


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def metric_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_speed(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "images_per_s"} for line in lines]


def wrap_train_step(model, on_call):
    """Replace ``model.train_step`` by one that calls ``on_call(n, step)`` (n from 1)."""
    real_step, calls = model.train_step, [0]

    def step(*args, **kwargs):
        calls[0] += 1
        return on_call(calls[0], lambda: real_step(*args, **kwargs))

    model.train_step = step
    return calls


# -- train_step, sampling ---------------------------------------------------------------------


def test_train_step_returns_finite_stats_and_moves_both_networks(phantom):
    model = dcgan()
    optimizers = model.make_optimizers()
    g_before = [p.detach().clone() for p in model.generator.parameters()]
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    stats = model.train_step(batch(phantom[0]), optimizers, seeded(0))
    assert set(stats) == STAT_KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert 0.0 <= stats["d_real"] <= 1.0 and 0.0 <= stats["d_fake"] <= 1.0
    assert 0.0 <= stats["d_accuracy"] <= 1.0
    assert (stats["d_accuracy"] * 16) == pytest.approx(round(stats["d_accuracy"] * 16))
    assert all(not torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters(),
                                                      strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters(),
                                                      strict=True))


def test_train_step_is_reproducible_from_the_generator(phantom):
    config = RunConfig("dcgan", *configs({"diffaugment": ALL_AUGMENTS}))
    runs = []
    for _ in range(2):
        model = build_model(config, seed=3)
        optimizers, rng = model.make_optimizers(), seeded(7)
        runs.append([model.train_step(batch(phantom[0]), optimizers, rng) for _ in range(2)])
    assert runs[0] == runs[1]


def test_separate_learning_rates_reach_the_optimizers(phantom):
    model = dcgan(lr_g=1e-3, lr_d=3e-4, betas=(0.5, 0.9), adam_eps=1e-6)
    optimizers = model.make_optimizers()
    g_group = optimizers["generator"].param_groups[0]
    d_group = optimizers["discriminator"].param_groups[0]
    assert (g_group["lr"], d_group["lr"]) == (1e-3, 3e-4)
    assert g_group["betas"] == d_group["betas"] == (0.5, 0.9) and g_group["eps"] == 1e-6
    assert {id(p) for p in g_group["params"]} == {id(p) for p in model.generator.parameters()}
    assert {id(p) for p in d_group["params"]} == {id(p) for p in model.discriminator.parameters()}
    # Adam's first step moves each weight by about lr: the sizes show which lr each net got
    g_before = torch.cat([p.detach().flatten() for p in model.generator.parameters()])
    d_before = torch.cat([p.detach().flatten() for p in model.discriminator.parameters()])
    model.train_step(batch(phantom[0]), optimizers, seeded(0))
    g_step = (torch.cat([p.detach().flatten() for p in model.generator.parameters()])
              - g_before).abs().max().item()
    d_step = (torch.cat([p.detach().flatten() for p in model.discriminator.parameters()])
              - d_before).abs().max().item()
    assert g_step == pytest.approx(1e-3, rel=0.05)
    assert d_step == pytest.approx(3e-4, rel=0.05)


def test_ema_is_the_average_and_is_used_for_sampling(phantom):
    model = dcgan(ema_decay=0.5)
    optimizers, rng = model.make_optimizers(), seeded(0)
    snapshots = []
    for _ in range(3):
        model.train_step(batch(phantom[0]), optimizers, rng)
        snapshots.append({n: p.detach().clone() for n, p in model.generator.state_dict().items()
                          if p.is_floating_point()})  # weights and batch-norm statistics
    # the first update copies; update t then uses decay min(0.5, (1 + t) / (10 + t)) (warm-up)
    expected = snapshots[0]
    for t, snapshot in enumerate(snapshots[1:], start=1):
        decay = min(0.5, (1 + t) / (10 + t))
        expected = {n: decay * expected[n] + (1 - decay) * snapshot[n] for n in expected}
    averaged = model.ema.module.state_dict()
    assert {n for n, p in averaged.items() if p.is_floating_point()} == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value)
    ema = model.sample(4, generator=seeded(1))
    assert torch.equal(ema, model.sample(4, generator=seeded(1)))  # seeded: deterministic
    assert not torch.equal(ema, model.sample(4, generator=seeded(2)))
    raw = model.sample(4, generator=seeded(1), use_ema=False)
    assert not torch.equal(ema, raw)
    z = torch.randn(4, 100, generator=seeded(1))
    with torch.no_grad():
        model.ema.module.eval()
        assert torch.equal(ema, model.ema.module(z).clamp(-1, 1))
        model.generator.eval()
        assert torch.equal(raw, model.generator(z).clamp(-1, 1))
        model.train()
    assert model.generator.training and model.ema.module.training  # modes restored


def test_sample_without_ema_uses_the_generator():
    model = dcgan()
    assert model.ema is None
    a, b = model.sample(3, generator=seeded(0)), model.sample(3, generator=seeded(0), use_ema=False)
    assert torch.equal(a, b) and a.shape == (3, 1, 32, 32)
    assert a.abs().max() <= 1.0


@pytest.mark.parametrize("options", [
    {"loss": "hinge"},
    {"loss": "lsgan"},
    {"diffaugment": ALL_AUGMENTS},
    {"spectral_norm": True},
    {"spectral_norm": True, "d_norm": "none", "loss": "hinge"},
    {"upsample": "resize", "ema_decay": 0.9},
    {"num_classes": 2, "diffaugment": ("translation",)},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_training_options_give_finite_losses(phantom, options):
    model = dcgan(**options)
    optimizers, rng = model.make_optimizers(), seeded(0)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        stats = model.train_step(batch(phantom[0]), optimizers, rng)
        assert all(math.isfinite(v) for v in stats.values()), stats
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_conditional_sampling_and_preview(phantom):
    model = dcgan(num_classes=2)
    labels = torch.tensor([0, 1, 1, 0, 1])
    images = model.sample(5, labels, generator=seeded(0))
    assert images.shape == (5, 1, 32, 32)
    assert not torch.equal(images[1], model.sample(5, torch.zeros(5, dtype=torch.long),
                                                   generator=seeded(0))[1])
    with pytest.raises(ValueError, match="needs labels"):
        model.sample(5)
    assert torch.equal(model.preview(4, seed=1), model.preview(4, seed=1))
    assert model.preview(4, seed=1).shape == (4, 1, 32, 32)


def test_fit_dcgan_to_data(phantom):
    t1 = phantom[0]
    conditional = fit_dcgan_to_data(DCGANConfig(size=32), t1, conditional=True)
    assert (conditional.channels, conditional.num_classes) == (1, 2)
    assert fit_dcgan_to_data(DCGANConfig(size=32), t1, conditional=False).num_classes == 0
    rgb = ImageSet.from_arrays(np.zeros((4, 3, 32, 32), np.float32))
    assert fit_dcgan_to_data(DCGANConfig(size=32), rgb, conditional=False).channels == 3
    with pytest.raises(InputError, match="--conditional needs labelled data"):
        fit_dcgan_to_data(DCGANConfig(size=32), rgb, conditional=True)
    with pytest.raises(InputError, match="images are 32x32 but the model makes 64x64"):
        fit_dcgan_to_data(DCGANConfig(size=64), t1, conditional=False)
    with pytest.raises(InputError, match="tutorial preset"):
        fit_dcgan_to_data(DCGANConfig.tutorial(), ImageSet.from_arrays(
            np.zeros((2, 3, 28, 28), np.float32)), conditional=False)


def test_the_default_dcgan_size_is_the_images_own():
    for side in (28, 64):
        images = ImageSet.from_arrays(np.zeros((2, 1, side, side), np.float32))
        assert fit_dcgan_to_data(DCGANConfig(), images, conditional=False).size == side
    for shape in ((40, 40), (28, 32)):
        images = ImageSet.from_arrays(np.zeros((2, 1, *shape), np.float32))
        with pytest.raises(InputError, match=f"images are {shape[0]}x{shape[1]}, a size the "
                                             "DCGAN does not make: pass --size with one of 28"):
            fit_dcgan_to_data(DCGANConfig(), images, conditional=False)


# -- the run directory ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom):
    """A conditional DCGAN with EMA, 2 epochs, a checkpoint each epoch. Do not modify."""
    run = tmp_path_factory.mktemp("trained") / "run"
    model_config, train_config = configs({"num_classes": 2, "ema_decay": 0.5, "lr_g": 5e-3},
                                         epochs=2)
    model, result = train_run(run, phantom[0], model_config, train_config)
    return run, model, result, model_config, train_config


def test_run_directory_contents(trained, phantom):
    run, model, result, model_config, train_config = trained
    data = phantom[0]
    assert result.run_dir == run and result.epochs == 2
    assert STAT_KEYS | {"images_per_s", "diversity"} == set(result.metrics)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["format_version"] == FORMAT_VERSION and config["synthmed_version"]
    assert config["kind"] == "dcgan"
    assert config["model"] == to_dict(model_config) and config["train"] == to_dict(train_config)

    tensors = load_file(run / "model.safetensors")
    prefixes = {name.split(".")[0] for name in tensors}
    assert {"generator", "discriminator"} <= prefixes <= {"generator", "discriminator", "ema"}
    state = model.state_dict()
    assert set(tensors) == set(state)
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    with safe_open(run / "model.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert metadata["kind"] == "dcgan" and metadata["epoch"] == "2"

    trainer_state = torch.load(run / "trainer_state.pt", weights_only=True)
    assert trainer_state["epoch"] == 2
    assert set(trainer_state["optimizers"]) == {"generator", "discriminator"}
    assert set(trainer_state["rng"]) == {"order", "step", "torch"}
    assert all(torch.equal(trainer_state["model"][k], state[k]) for k in state)

    record = json.loads((run / "training_data.json").read_text())
    assert record["fingerprint"] == data.fingerprint()
    assert record["image_hashes"] == data.image_hashes() and len(record["image_hashes"]) == 32
    assert record["images"] == 32 and record["class_names"] == ["no lesion", "lesion"]
    assert record["class_counts"] == {"no lesion": 16, "lesion": 16}
    assert record["size"] == [32, 32] and record["channels"] == 1

    lines = metric_lines(run)
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert set(line) == METRIC_KEYS
        assert all(math.isfinite(v) for v in line.values())
        assert (line["lr_generator"], line["lr_discriminator"]) == (5e-3, 2e-4)
        assert line["diversity"] > 0
    assert {k: float(f"{v:.6g}") for k, v in result.metrics.items()} == {
        k: v for k, v in lines[-1].items() if k in result.metrics}

    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["epoch_0001.png", "epoch_0002.png"]
    with Image.open(run / "samples" / "epoch_0001.png") as grid:
        assert grid.size[0] >= 2 * 32 and grid.size[1] >= 2 * 32  # 2 x 2 grid of 32 px
    grids = [np.asarray(Image.open(run / "samples" / name)) for name in samples]
    changes = sum(not np.array_equal(a, b) for a, b in zip(grids, grids[1:], strict=False))
    assert changes == 1  # the samples moved
    with Image.open(run / "progress.gif") as gif:
        # one frame per epoch (PIL merges a frame equal to the one before, adding its time)
        assert gif.n_frames == 1 + changes
        durations = []
        for frame in range(gif.n_frames):
            gif.seek(frame)
            durations.append(gif.info["duration"])
        assert sum(durations) == 300 * 2
    with Image.open(run / "losses.png") as plot:
        assert plot.format == "PNG"
    leftovers = [p.name for p in run.rglob(".*")]
    assert leftovers == [], "atomic writes left temporary files"


@pytest.mark.parametrize("name, epochs, every, kill_epoch, kill_step", [
    ("dcgan", 4, 2, 3, 2),  # mid epoch 3: the epoch-2 checkpoint is the last
    ("dcgan", 4, 2, 4, 1),  # start of epoch 4: epoch 3's metrics line must be dropped
    ("tutorial", 2, 1, 2, 1),  # the big tutorial G: 2 epochs only
    ("small-data", 4, 2, 3, 2),  # ADA's probability and the transition's steps resume too
])
def test_exact_resume_after_a_kill(tmp_path, phantom, phantom28, name, epochs, every,
                                   kill_epoch, kill_step):
    """A run killed after a checkpoint and resumed repeats an uninterrupted run exactly."""
    if name != "tutorial":  # noise, augmentation, EMA, labels
        data = phantom[0]
        small_data = dict(ada_target=0.6, ada_images=64, transition_steps=(2, 9))
        model_config = DCGANConfig(size=32, width=4, num_classes=2, diffaugment=ALL_AUGMENTS,
                                   ema_decay=0.9, lr_g=1e-3,
                                   **(small_data if name == "small-data" else {}))
    else:  # dropout (torch's global generator)
        data = phantom28
        model_config = DCGANConfig.tutorial()
    train_config = TrainConfig(epochs=epochs, batch_size=8, checkpoint_every=every, preview=4,
                               decay_epochs=epochs - 1, seed=5)
    steps = len(data) // 8
    model_a, _ = train_run(tmp_path / "a", data, model_config, train_config)

    run_b = tmp_path / "b"
    model_b = build_model(RunConfig("dcgan", model_config, train_config), seed=5)
    kill_call = (kill_epoch - 1) * steps + kill_step

    def die(n, step):
        if n == kill_call:
            raise KeyboardInterrupt
        return step()

    wrap_train_step(model_b, die)
    with pytest.raises(KeyboardInterrupt):
        train_run(run_b, data, model_config, train_config, model=model_b)
    last_checkpoint = (kill_epoch - 1) // every * every
    assert checkpoint.load_state(run_b)["epoch"] == last_checkpoint
    assert len(metric_lines(run_b)) == kill_epoch - 1

    # a fresh process: other initial weights, other global RNG state
    torch.manual_seed(12345)
    model_c, result = train_run(run_b, data, model_config, train_config, resume=True, seed=99)
    assert result.epochs == epochs

    lines_a, lines_b = metric_lines(tmp_path / "a"), metric_lines(run_b)
    assert [line["epoch"] for line in lines_b] == list(range(1, epochs + 1))
    assert without_speed(lines_b) == without_speed(lines_a)
    if name == "small-data":  # p adapted, and the conditioning ramped in over the epochs
        assert len({line["augment_p"] for line in lines_a}) > 1
        assert lines_a[0]["conditioning"] < 1 and lines_a[-1]["conditioning"] == 1
    lrs = [line["lr_generator"] for line in lines_a]
    # each line logs the rate its epoch trained with: the base rate, then a linear fall that
    # would reach 0 one epoch after the last
    expected = [1.0] + [1 - k / epochs for k in range(1, epochs)]
    assert [lr / lrs[0] for lr in lrs] == pytest.approx(expected)

    weights_a = load_file(tmp_path / "a" / "model.safetensors")
    weights_b = load_file(run_b / "model.safetensors")
    assert set(weights_a) == set(weights_b)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    state_a, state_c = model_a.state_dict(), model_c.state_dict()
    assert all(torch.equal(state_a[k], state_c[k]) for k in state_a)
    trainer_a = checkpoint.load_state(tmp_path / "a")
    trainer_b = checkpoint.load_state(run_b)
    assert trainer_a["schedulers"] == trainer_b["schedulers"]
    assert torch.equal(trainer_a["rng"]["order"], trainer_b["rng"]["order"])
    for key in ("step", "torch"):  # one state per process
        assert all(torch.equal(a, b) for a, b in
                   zip(trainer_a["rng"][key], trainer_b["rng"][key], strict=True))
    for net in ("generator", "discriminator"):
        opt_a = trainer_a["optimizers"][net]["state"]
        opt_b = trainer_b["optimizers"][net]["state"]
        assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
    for epoch in range(1, epochs + 1):
        grid = f"samples/epoch_{epoch:04d}.png"
        assert (tmp_path / "a" / grid).read_bytes() == (run_b / grid).read_bytes()


def test_resume_refuses_other_data(tmp_path, trained, phantom):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    model_config, train_config = trained[3], trained[4]
    with pytest.raises(InputError, match="other data"):
        train_run(run, phantom[1], model_config, replace_epochs(train_config, 3), resume=True)
    relabelled = ImageSet.from_arrays(phantom[0].images, labels=1 - phantom[0].labels)
    with pytest.raises(InputError, match="other data"):
        train_run(run, relabelled, model_config, replace_epochs(train_config, 3), resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def replace_epochs(train: TrainConfig, epochs: int) -> TrainConfig:
    return TrainConfig(**{**to_dict(train), "epochs": epochs})


def test_fresh_fit_refuses_a_used_run_dir(tmp_path, phantom):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="already holds files"):
        train_run(run, phantom[0], *configs())
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    assert (run / "notes.txt").read_text() == "mine"


def test_resume_without_a_checkpoint(tmp_path, phantom):
    with pytest.raises(InputError, match="nothing to resume"):
        train_run(tmp_path / "never-made", phantom[0], *configs(), resume=True)


@pytest.mark.parametrize("bad_call, value, where, kept", [
    (10, float("nan"), "epoch 3, step 2", "the last good checkpoint (epoch 2)"),
    (1, float("inf"), "epoch 1, step 1", "no checkpoint had been written yet"),
])
def test_divergence_stops_and_keeps_the_last_checkpoint(tmp_path, phantom, bad_call, value,
                                                         where, kept):
    run = tmp_path / "run"
    model_config, train_config = configs(epochs=4)
    model = build_model(RunConfig("dcgan", model_config, train_config))

    def diverge(n, step):
        stats = step()
        return {**stats, "loss_g": value} if n == bad_call else stats

    wrap_train_step(model, diverge)
    with pytest.raises(TrainingDiverged) as caught:
        train_run(run, phantom[0], model_config, train_config, model=model)
    message = str(caught.value)
    assert f"training diverged at {where}" in message and f"loss_g = {value}" in message
    assert kept in message and "\n" not in message
    if bad_call == 1:
        assert not (run / "model.safetensors").exists()
        return
    loaded = load_run(run)
    assert loaded.epoch == 2 and checkpoint.load_state(run)["epoch"] == 2
    assert len(metric_lines(run)) == 2
    state = checkpoint.load_state(run)["model"]
    loaded_state = loaded.model.state_dict()
    assert all(torch.equal(loaded_state[k], state[k]) for k in state)
    # the diverged step changed the weights in memory; none of that reached the disk
    current = model.state_dict()
    assert any(not torch.equal(current[k], state[k]) for k in state)
    assert loaded.sample(2, generator=seeded(0)).isfinite().all()


# -- load_run ---------------------------------------------------------------------------------


def test_load_run_samples_like_the_trained_model(trained):
    run, model = trained[0], trained[1]
    loaded = load_run(run)
    assert loaded.epoch == 2 and loaded.config.kind == "dcgan"
    assert loaded.class_names == ["no lesion", "lesion"]
    assert not loaded.model.training
    labels = torch.tensor([0, 1, 1, 0])
    images = loaded.sample(4, labels, seeded(5))
    assert images.shape == (4, 1, 32, 32) and images.abs().max() <= 1.0
    assert torch.equal(images, model.sample(4, labels=labels, generator=seeded(5)))
    assert load_run(run, kind="dcgan").epoch == 2
    with pytest.raises(InputError, match="is a 'dcgan' run, not 'cyclegan'"):
        load_run(run, kind="cyclegan")


@pytest.fixture
def copied(tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    return run


def resave_weights(run, metadata_changes: dict | None, drop_metadata: bool = False) -> None:
    path = run / "model.safetensors"
    tensors = load_file(path)
    with safe_open(path, "pt") as handle:
        metadata = dict(handle.metadata())
    save_file(tensors, path, metadata=None if drop_metadata else {**metadata,
                                                                   **(metadata_changes or {})})


def test_load_run_unknown_directory(tmp_path):
    with pytest.raises(InputError, match="no such run directory"):
        load_run(tmp_path / "nothing")


def test_load_run_without_config(copied):
    (copied / "config.yaml").unlink()
    with pytest.raises(InputError, match="config.yaml is missing"):
        load_run(copied)


def test_load_run_without_weights(copied):
    (copied / "model.safetensors").unlink()
    with pytest.raises(InputError, match="model.safetensors is missing"):
        load_run(copied)


@pytest.mark.parametrize("change, message", [
    ({"kind": "cyclegan"}, "holds a 'cyclegan' model, not 'dcgan'"),
    (None, "holds a 'unknown' model, not 'dcgan'"),
])
def test_load_run_refuses_weights_of_another_kind(copied, change, message):
    resave_weights(copied, change, drop_metadata=change is None)
    with pytest.raises(InputError, match=message):
        load_run(copied)


def test_load_run_refuses_tampered_weights(copied):
    path = copied / "model.safetensors"
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    assert len(data) > 8 + header + 100
    data[-50] ^= 0xFF  # one byte inside the last tensor
    path.write_bytes(bytes(data))
    load_file(path)  # still a valid safetensors file ...
    with pytest.raises(InputError, match="do not match their checksum"):
        load_run(copied)  # ... but not the weights that were saved


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_load_run_refuses_unreadable_weights(copied, damage):
    path = copied / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes((10**12).to_bytes(8, "little") + data[8:])
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_run(copied)


def test_load_run_refuses_weights_that_do_not_fit_the_config(copied):
    config = yaml.safe_load((copied / "config.yaml").read_text())
    config["model"]["width"] = 8
    (copied / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(InputError, match="do not fit the configured model"):
        load_run(copied)


@pytest.mark.parametrize("change, message", [
    ({"kind": "vae"}, "unknown model kind 'vae'"),
    ({"model": {"size": 32, "depth": 3}}, "unknown setting"),
    ({"format_version": 99}, "unknown run format"),
])
def test_load_run_refuses_bad_configs(copied, change, message):
    config = yaml.safe_load((copied / "config.yaml").read_text())
    (copied / "config.yaml").write_text(yaml.safe_dump({**config, **change}))
    with pytest.raises(InputError, match=message):
        load_run(copied)


class _RunsCommand:
    """A pickle that runs a shell command when unpickled by an unsafe loader."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_trainer_state_is_refused_and_not_run(copied, tmp_path, phantom, trained,
                                                        writer):
    marker = tmp_path / "pwned"
    payload = _RunsCommand(f"touch {marker}")
    # the payload is live: an unsafe loader would run it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_RunsCommand(f"touch {control}"), protocol=2))
    assert control.exists()
    state_path = copied / "trainer_state.pt"
    if writer == "pickle":
        state_path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, state_path)
    with pytest.raises(InputError, match="trainer_state.pt: cannot be loaded safely"):
        checkpoint.load_state(copied)
    with pytest.raises(InputError, match="cannot be loaded safely"):
        train_run(copied, phantom[0], trained[3], replace_epochs(trained[4], 3), resume=True)
    assert not marker.exists()


# -- the command line -------------------------------------------------------------------------


def test_cli_trains_the_tutorial_preset_and_resumes(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "dcgan", "phantom:t1,n=64", "--preset", "tutorial", "--size", 28,
                    "--out", out, "--epochs", 1, "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"trained tutorial DCGAN on 64 images for 1 epochs -> {out}" in result.output
    assert "loss_d" in result.output and "d_accuracy" in result.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["preset"] == "tutorial" and config["model"]["lr_g"] == 1e-4
    assert config["train"]["batch_size"] == 256 and config["train"]["checkpoint_every"] == 15
    assert config["data"]["source"] == "phantom:t1,n=64"
    assert len(metric_lines(out)) == 1

    again = invoke("train", "dcgan", "phantom:t1,n=64", "--preset", "tutorial", "--out", out,
                   "--epochs", 1, "--no-progress")
    one_line_error(again, "already holds files")

    resumed = invoke("train", "dcgan", "phantom:t1,n=64", "--out", out, "--resume",
                     "--epochs", 2, "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert "for 2 epochs" in resumed.output
    assert [line["epoch"] for line in metric_lines(out)] == [1, 2]
    assert checkpoint.load_state(out)["epoch"] == 2
    assert load_run(out).epoch == 2

    other = invoke("train", "dcgan", "phantom:t1,n=64,seed=1", "--out", out, "--resume",
                   "--epochs", 3, "--no-progress")
    one_line_error(other, "other data")


def test_cli_conditional_needs_labelled_data(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    result = invoke("train", "dcgan", folder, "--preset", "tutorial", "--conditional",
                    "--out", out, "--epochs", 1, "--no-progress")
    one_line_error(result, "--conditional needs labelled data")
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--preset", "tutorial", "--size", 32], "the tutorial preset is 28x28"),
    (["--size", 30], "size must be one of (28, 32, 64, 128, 256), got 30"),
])
def test_cli_wrong_size(tmp_path, args, message):
    out = tmp_path / "run"
    result = invoke("train", "dcgan", "phantom:t1,n=8", *args, "--out", out, "--epochs", 1,
                    "--no-progress")
    one_line_error(result, message)
    assert not out.exists()


def test_cli_resume_of_a_missing_run(tmp_path):
    result = invoke("train", "dcgan", "phantom:t1,n=8", "--out", tmp_path / "none", "--resume",
                    "--no-progress")
    one_line_error(result, "no such run directory")


# -- bf16 -------------------------------------------------------------------------------------


def test_bf16_trains_with_finite_losses(tmp_path, phantom):
    run = tmp_path / "run"
    run.mkdir()  # an existing empty folder is a fine run directory
    model_config, train_config = configs({"num_classes": 2, "diffaugment": ALL_AUGMENTS},
                                         precision="bf16")
    model = build_model(RunConfig("dcgan", model_config, train_config))
    dtypes = []
    model.generator.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    _, result = train_run(run, phantom[0], model_config, train_config, model=model)
    assert torch.bfloat16 in dtypes  # autocast reached the networks
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    assert load_run(run).sample(2, torch.tensor([0, 1])).dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, native):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    assert resolve_precision("auto") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"


def test_precision_auto_on_the_command_line_records_what_it_chose(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "dcgan", "phantom:n=16,size=28", "--out", out, "--epochs", 1,
                    "--batch-size", 8, "--width", 4, "--precision", "auto", "--no-progress")
    assert result.exit_code == 0, result.output
    assert read_run_config(out).train.precision == resolve_precision("auto")


def test_yaml_config_is_overridden_by_single_options(tmp_path):
    from synthmed.gan.run_config import resolve_dcgan_config

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model:\n  width: 16\n  loss: hinge\n  diffaugment: [color, cutout]\n"
                   "train:\n  epochs: 7\n  batch_size: 32\n")
    config = resolve_dcgan_config("dcgan", cfg, {"width": 8}, {"epochs": None})
    model, train = config.model, config.train
    assert (model.width, model.loss, model.diffaugment) == (8, "hinge", ("color", "cutout"))
    assert (train.epochs, train.batch_size) == (7, 32)
    cfg.write_text("model:\n  widht: 16\n")
    with pytest.raises(InputError, match="unknown setting.*widht"):
        resolve_dcgan_config("dcgan", cfg)
    cfg.write_text("model: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        resolve_dcgan_config("dcgan", cfg)
    with pytest.raises(InputError, match="config file not found"):
        resolve_dcgan_config("dcgan", tmp_path / "missing.yaml")


def test_r1_penalty_adds_half_gamma_times_the_squared_real_gradient(phantom):
    real, labels = batch(phantom[0])
    losses = {}
    for gamma in (0.0, 1e6):  # a fresh D has tiny input gradients: a large gamma shows them
        model = build_model(RunConfig("dcgan", DCGANConfig(size=32, width=4, d_norm="none",
                                                            r1_gamma=gamma), TrainConfig()))
        if gamma:
            probe = real.clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(model.discriminator(probe).sum(), probe)
            expected = gamma / 2 * gradient.square().sum(dim=(1, 2, 3)).mean().item()
        losses[gamma] = model.train_step((real, labels), model.make_optimizers(), seeded(0))
    assert losses[1e6]["loss_d"] - losses[0.0]["loss_d"] == pytest.approx(expected, rel=1e-3)
    assert losses[1e6]["loss_g"] != losses[0.0]["loss_g"]  # D's update differed
    with pytest.raises(InputError, match="r1_gamma"):
        DCGANConfig(r1_gamma=-1.0)


@pytest.mark.parametrize("args, message", [
    (["--transition-steps", "2,8"], "--transition-steps ramps in the class conditioning: train "
                                    "with --conditional"),
    (["--ada-target", 0.6], "ada_target adapts how often the diffaugment ops apply"),
])
def test_cli_small_data_options_need_their_companions(tmp_path, args, message):
    out = tmp_path / "run"
    result = invoke("train", "dcgan", "phantom:t1,n=8", "--size", 32, *args, "--out", out,
                    "--epochs", 1, "--no-progress")
    one_line_error(result, message)
    assert not out.exists()


def test_cli_trains_with_adaptive_augmentation_and_a_transition(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "dcgan", "phantom:t1,n=32", "--size", 32, "--width", 4,
                    "--conditional", "--diffaugment", "translation,cutout", "--ada-target", 0.6,
                    "--ada-images", 50, "--transition-steps", "1,4", "--batch-size", 8,
                    "--epochs", 2, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    model = read_run_config(out).model
    assert (model.ada_target, model.ada_images, model.transition_steps) == (0.6, 50, (1, 4))
    lines = metric_lines(out)
    assert lines[-1]["conditioning"] == 1.0 and 0 <= lines[-1]["augment_p"] <= 1
    weights = load_file(out / "model.safetensors")
    assert int(weights["steps_done"]) == 8 and "augment_probability" in weights
