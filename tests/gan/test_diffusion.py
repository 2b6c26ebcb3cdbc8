"""The diffusion model: its config, its step and sampler, and training, resume and export
through the same API, run directory and commands as the DCGAN."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from synthmed.augment.dataset import ImageSet
from synthmed.augment.phantom import PhantomConfig, make_phantom
from synthmed.errors import InputError
from synthmed.gan.config import DiffusionConfig, TrainConfig
from synthmed.gan.diffusion import DiffusionModel
from synthmed.gan.generate import GenerateConfig, generate
from synthmed.gan.run import load_run
from synthmed.gan.run_config import GENERATORS, DataConfig, RunConfig, read_run_config
from synthmed.gan.train import fit_diffusion_to_data, train_diffusion

from ..conftest import invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(widths=(8, 8), attention=(False, False), sampling_steps=3)


def tiny(**options) -> DiffusionModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DiffusionModel(DiffusionConfig(size=8, **{**TINY, **options}))


@pytest.fixture(scope="module")
def phantom16() -> ImageSet:
    return make_phantom(PhantomConfig(n=24, size=16, lesion_fraction=0.5))[0]


def tiny_run(epochs: int = 2, **train) -> RunConfig:
    return RunConfig("diffusion", DiffusionConfig(**TINY),
                     TrainConfig(epochs=epochs, batch_size=8, preview=4, checkpoint_every=1,
                                 **train), DataConfig(split="all"))


@pytest.mark.parametrize("options, message", [
    ({"size": 10, "widths": (8, 8, 8), "attention": (False,) * 3},
     "size must be a multiple of 4 for 3 U-Net levels, got 10"),
    ({"widths": (8, 12)},
     "widths must be between 1 and 1024 and divisible by norm_groups 8, got [8, 12]"),
    ({"attention": (False,)}, "attention must have one entry per level (2), got [False]"),
    ({"label_dropout": 1.0}, "label_dropout must be in [0, 1), got 1.0"),
    ({"sampling_steps": 0}, "sampling_steps must be between 1 and 1000, got 0"),
    ({"schedule": "square"}, "schedule must be one of linear_beta, scaled_linear_beta, cosine"),
])
def test_bad_settings_are_named(options, message):
    with pytest.raises(InputError, match=r"\A" + re.escape(message)):
        DiffusionConfig(**{**TINY, **options})


def test_a_step_learns_to_predict_the_noise():
    model = tiny(num_classes=2, ema_decay=0.5)
    optimizers = model.make_optimizers()
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    stats = model.train_step((images, torch.tensor([0, 1, 0, 1])), optimizers,
                             torch.Generator().manual_seed(0))
    assert set(stats) == {"loss"} and 0 < stats["loss"] < 10
    assert any(not torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    assert model.ema.n_averaged.item() == 1


def test_sampling_is_a_function_of_the_noise_and_the_label():
    model = tiny(num_classes=2)
    with torch.no_grad(), torch.random.fork_rng():  # MONAI zeroes the last layer: untrained,
        torch.manual_seed(0)                         # the label would change nothing
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 0, 1])
    first = model.generate(noise, labels)
    assert first.shape == (4, 1, 8, 8) and first.abs().max() <= 1
    assert torch.equal(first, model.generate(noise, labels))  # DDIM with eta 0
    assert not torch.equal(first, model.generate(noise, 1 - labels))
    with pytest.raises(ValueError, match="needs labels"):
        model.generate(noise)
    unguided = tiny(num_classes=2, guidance=1.0)
    unguided.load_state_dict(model.state_dict())
    assert not torch.equal(first, unguided.generate(noise, labels))  # guidance extrapolates


def test_the_size_follows_the_data_when_the_u_net_can_make_it(phantom16):
    config = DiffusionConfig(**TINY)
    assert fit_diffusion_to_data(config, phantom16, conditional=True).size == 16
    odd = ImageSet.from_arrays(np.zeros((2, 1, 15, 15), np.float32))
    with pytest.raises(InputError, match="images are 15x15, a size the diffusion U-Net does "
                                         "not make: pass --size with a multiple of 2"):
        fit_diffusion_to_data(config, odd, conditional=False)
    with pytest.raises(InputError, match="--conditional needs labelled data"):
        fit_diffusion_to_data(config, odd, conditional=True)


def test_a_trained_run_exports_the_same_images_for_the_same_seed(phantom16, tmp_path):
    result = train_diffusion(phantom16, tmp_path / "run", tiny_run(), conditional=True,
                             progress=False)
    assert result.fit.epochs == 2 and np.isfinite(result.fit.metrics["loss"])
    run = load_run(tmp_path / "run", kind=GENERATORS)
    assert run.config.kind == "diffusion" and run.config.model.size == 16
    assert run.config.model.num_classes == 2 and run.class_names == ["no lesion", "lesion"]
    arrays = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(run, tmp_path / name, GenerateConfig(n=6, seed=seed, format="npz"),
                 progress=False)
        with np.load(tmp_path / name / "images.npz") as archive:
            arrays.append(archive["train_images"])
    assert arrays[0].shape == (6, 16, 16)
    assert np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[0], arrays[2])


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(phantom16, tmp_path):
    train_diffusion(phantom16, tmp_path / "whole", tiny_run(), conditional=True,
                    progress=False)
    train_diffusion(phantom16, tmp_path / "parts", tiny_run(epochs=1), conditional=True,
                    progress=False)
    saved = read_run_config(tmp_path / "parts")
    extended = RunConfig(saved.kind, saved.model, TrainConfig(**{
        **saved.train.__dict__, "epochs": 2}), saved.data)
    train_diffusion(phantom16, tmp_path / "parts", extended, resume=True, progress=False)
    whole = load_run(tmp_path / "whole").model.state_dict()
    parts = load_run(tmp_path / "parts").model.state_dict()
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


def test_sparse_sample_grids_leave_the_training_unchanged(phantom16, tmp_path):
    train_diffusion(phantom16, tmp_path / "every", tiny_run(epochs=5), progress=False)
    train_diffusion(phantom16, tmp_path / "sparse", tiny_run(epochs=5, preview_every=2),
                    progress=False)
    every = load_run(tmp_path / "every").model.state_dict()
    sparse = load_run(tmp_path / "sparse").model.state_dict()
    assert all(torch.equal(every[k], sparse[k]) for k in every)
    grids = sorted(p.name for p in (tmp_path / "sparse" / "samples").iterdir())
    assert grids == ["epoch_0002.png", "epoch_0004.png", "epoch_0005.png"]  # and the last
    lines = [json.loads(line) for line in
             (tmp_path / "sparse" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines if "diversity" in line] == [2, 4, 5]
    assert len(lines) == 5 and (tmp_path / "sparse" / "losses.png").is_file()


def test_train_diffusion_and_generate_on_the_command_line(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "diffusion", "phantom:t1,n=16,size=16", "--out", out,
                    "--conditional", "--epochs", 1, "--batch-size", 8, "--widths", "8,8",
                    "--attention", "false,false", "--sampling-steps", 2, "--preview-every", 3,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert "trained diffusion model on" in result.output
    assert read_run_config(out).model.widths == (8, 8)
    assert read_run_config(out).train.preview_every == 3
    result = invoke("generate", out, "--n", 4, "--format", "png", "--sampling-steps", 1,
                    "--guidance", 0.5, "--out", tmp_path / "syn", "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "syn").rglob("*.png"))) == 4
    request = json.loads((tmp_path / "syn" / "provenance.json").read_text())["request"]
    assert request["sampling_steps"] == 1 and request["guidance"] == 0.5
    result = invoke("generate", out, "--n", 4, "--format", "npz", "--privacy-filter",
                    "--train", "phantom:t1,n=16,size=16", "--out", tmp_path / "filtered",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert "privacy filter: dropped and redrew" in result.output


def test_guidance_zero_samples_unconditionally_and_the_default_follows_the_label():
    # two channels per norm group: with one, GroupNorm would remove the label's channel shift
    model = tiny(num_classes=2, ema_decay=0.0, norm_groups=2)
    with torch.random.fork_rng():  # a trained-looking network: MONAI starts its output at 0
        torch.manual_seed(1)
        for parameter in model.unet.parameters():
            parameter.data.normal_(0, 0.1)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    zeros, ones = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    assert (model.generate(noise, zeros) - model.generate(noise, ones)).abs().max() > 0.01
    model.guidance = 0.0
    torch.testing.assert_close(model.generate(noise, zeros), model.generate(noise, ones))


def test_guidance_needs_a_conditional_diffusion_run(phantom16, tmp_path):
    run = tmp_path / "run"
    train_diffusion(phantom16, run, tiny_run(epochs=1), progress=False)
    with pytest.raises(InputError, match="--guidance is for class-conditional diffusion runs"):
        generate(load_run(run), tmp_path / "syn", GenerateConfig(n=2, guidance=3.0),
                 progress=False)
    assert not (tmp_path / "syn").exists()


def test_bad_diffusion_options_are_one_line(tmp_path):
    result = invoke("train", "diffusion", "phantom:t1,n=16,size=16", "--out", tmp_path / "r",
                    "--widths", "8,x", "--no-progress")
    assert result.exit_code == 2 and "'8,x' is not a comma list of whole numbers" in result.output
    assert not (tmp_path / "r").exists()
    one_line_error(invoke("train", "diffusion", "phantom:t1,n=16,size=16", "--out",
                          tmp_path / "r", "--widths", "8,8", "--no-progress"),
                   "attention must have one entry per level (2)")
    assert not (tmp_path / "r").exists()


def test_membership_scores_are_minus_the_denoising_error_at_low_noise():
    model = tiny(num_classes=2)
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    labels = torch.tensor([0, 1, 1])
    scores = model.membership_scores(images, labels, torch.Generator().manual_seed(3))
    rng = torch.Generator().manual_seed(3)
    errors = []
    for level in DiffusionModel.ATTACK_LEVELS:
        t = torch.full((3,), round(level * model.config.timesteps))
        noise = torch.randn(images.shape, generator=rng)
        with torch.no_grad():
            predicted = model.ema.module(model.noise_schedule.add_noise(images, noise, t), t,
                                         class_labels=labels)
        errors.append((predicted - noise).square().mean(dim=(1, 2, 3)))
    torch.testing.assert_close(scores, -torch.stack(errors).mean(dim=0))


def test_the_privacy_audit_attacks_a_diffusion_run_by_its_denoising_error(tmp_path):
    """A model trained long on 8 images predicts their noise better than that of unseen ones:
    the white-box attack finds them, the control does not."""
    members = make_phantom(PhantomConfig(n=8, size=16, seed=0))[0]
    run = tmp_path / "run"
    config = RunConfig("diffusion", DiffusionConfig(**{**TINY, "ema_decay": 0.0, "lr": 1e-3}),
                       TrainConfig(epochs=300, batch_size=8, checkpoint_every=300, preview=4),
                       DataConfig(split="all"))
    train_diffusion(members, run, config, progress=False)
    holdout = tmp_path / "holdout.npz"
    unseen = make_phantom(PhantomConfig(n=16, size=16, seed=1))[0]
    np.savez(holdout, train_images=unseen.images[:, 0])
    train = tmp_path / "train.npz"
    np.savez(train, train_images=members.images[:, 0])
    out = tmp_path / "privacy"
    result = invoke("evaluate", "privacy", "--synthetic", run, "--train", train, "--holdout",
                    holdout, "--holdout-split", "all", "--n", 16, "--bootstrap", 50,
                    "--out", out)
    assert result.exit_code == 0, result.output
    attack = json.loads((out / "privacy.json").read_text())["membership"]["denoising"]
    assert attack["n_members"] == 8 and attack["auc"] > 0.8
    assert "white-box, denoising error" in (out / "privacy.md").read_text()
