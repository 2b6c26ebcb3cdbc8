"""Differentially private DCGAN training: the accounting, D's per-image gradients and noise,
the run's record of the guarantee, refusals, the budget stop and exact resume."""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import yaml
from opacus.accountants import RDPAccountant
from safetensors.torch import load_file

from synthmed.augment.phantom import PhantomConfig, make_phantom
from synthmed.errors import InputError
from synthmed.gan import checkpoint
from synthmed.gan.config import CycleGANConfig, DCGANConfig, DPConfig, TrainConfig
from synthmed.gan.dp import PrivateDiscriminator
from synthmed.gan.run import build_model, load_run
from synthmed.gan.run_config import RunConfig
from synthmed.gan.trainer import fit

from ..conftest import invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

RECORD_TYPES = {"target_epsilon": float, "epsilon": float, "delta": float,
                "noise_multiplier": float, "max_grad_norm": float, "sample_rate": float,
                "steps": int, "accountant": str}
DP_METRICS = {"dp_epsilon", "dp_delta", "dp_noise_multiplier", "dp_max_grad_norm",
              "dp_sample_rate", "dp_steps"}
MODEL = DCGANConfig(size=32, width=4, d_norm="none", num_classes=2, diffaugment=("translation",))


@pytest.fixture(scope="module")
def phantom():
    """16 labelled 32x32 slices (T1, T2)."""
    return make_phantom(PhantomConfig(n=16, size=32))




def opacus_epsilon(sigma: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon by Opacus' own RDP accountant, independently of synthmed."""
    accountant = RDPAccountant()
    accountant.history = [(sigma, sample_rate, steps)]
    return accountant.get_epsilon(delta=delta)


def metric_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def dp_record(run_dir) -> dict:
    return json.loads((run_dir / "training_data.json").read_text())["differential_privacy"]


def train_private(run_dir, data, train_config, *, resume=False, model=None, seed=None):
    privacy = DPConfig(4.0)
    config = RunConfig("dcgan", MODEL, train_config, privacy=privacy)
    model = model or build_model(config, seed=train_config.seed if seed is None else seed)
    return model, fit(model, data, config, run_dir, resume=resume, progress=False)


def killed_at(model, call: int) -> None:
    """Make ``model.train_step`` raise KeyboardInterrupt on its ``call``-th call (from 1)."""
    real_step, calls = model.train_step, [0]

    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    model.train_step = step


def private_model(noise_seed: int = 0, batch_size: int = 4):
    """A conditional DCGAN with a private D (16 images, batch 4, noise multiplier 1: a
    saved state, which spares solving for it) and its optimisers."""
    model = build_model(RunConfig("dcgan", MODEL, TrainConfig()), seed=0)
    fresh = {"noise_multiplier": 1.0, "accountant": {"history": [], "mechanism": "rdp"}}
    private = PrivateDiscriminator(DPConfig(4.0), 16, batch_size, epochs=2,
                                   noise=torch.Generator().manual_seed(noise_seed), state=fresh)
    model.make_private(private)
    return model, model.make_optimizers()


def labelled(data, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.images[:n]), torch.from_numpy(data.labels[:n])


# -- accounting and sampling ----------------------------------------------------------------


def test_noise_multiplier_spends_the_target_by_the_last_epoch():
    private = PrivateDiscriminator(DPConfig(2.0), images=1000, batch_size=50, epochs=3,
                                   noise=torch.Generator())
    assert (private.sample_rate, private.steps_per_epoch) == (0.05, 20)
    assert private.delta == 1e-5  # min(1e-5, 1 / (10 N))
    planned = opacus_epsilon(private.noise_multiplier, 0.05, 60, 1e-5)
    assert 2.0 - 0.01 <= planned <= 2.0
    assert private.epsilon(60) == planned
    assert private.epsilon() == 0.0 and private.steps == 0
    assert private.affords(60) and not private.affords(61)
    assert DPConfig(1.0).delta_for(10**6) == 1e-7 and DPConfig(1.0, 1e-3).delta_for(10) == 1e-3


def test_impossible_settings_are_refused():
    with pytest.raises(InputError, match="too small to reach in 10 steps"):
        PrivateDiscriminator(DPConfig(1e-9), 100, 10, 1, torch.Generator())
    with pytest.raises(InputError, match="batch size 11 exceeds the 10 training images"):
        PrivateDiscriminator(DPConfig(1.0), 10, 11, 1, torch.Generator())
    with pytest.raises(InputError, match="epsilon must be positive"):
        DPConfig(0.0)
    with pytest.raises(InputError, match=r"delta must be in \(0, 1\)"):
        DPConfig(1.0, delta=1.0)


def test_poisson_batches_come_from_the_given_generator():
    private = PrivateDiscriminator(DPConfig(4.0), 200, 20, 1, torch.Generator())
    epochs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # global randomness must not matter
        rng = torch.Generator().manual_seed(7)
        epochs.append([private.batches(rng) for _ in range(20)])
    assert all(torch.equal(a, b) for one, other in zip(*epochs, strict=True)
               for a, b in zip(one, other, strict=True))
    batches = [batch for epoch in epochs[0] for batch in epoch]
    assert len(batches) == 20 * 10  # steps_per_epoch = ceil(200 / 20)
    sizes = torch.tensor([len(batch) for batch in batches], dtype=torch.float)
    assert len(set(sizes.tolist())) > 5  # Poisson: the batch size varies ...
    assert abs(sizes.mean().item() - 20) < 1.0  # ... around the expected one
    assert all(len(set(batch.tolist())) == len(batch) and batch.max() < 200 for batch in batches
               if len(batch))


# -- D's private step -----------------------------------------------------------------------


@pytest.mark.parametrize("reals", [5, 1, 0])
def test_each_image_gets_its_own_gradient_whatever_the_batch_size(phantom, reals):
    """D's per-sample gradients are each image's own loss gradient, unscaled by the number of
    images Poisson sampling drew: the sensitivity of the clipped sum rests on both."""
    model, optimizers = private_model()
    reference = build_model(RunConfig("dcgan", MODEL, TrainConfig()), seed=0).discriminator
    real, labels = labelled(phantom[0], reals)
    fake = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fake_labels = torch.tensor([0, 1, 1, 0])

    def judge(images, classes):
        return model.discriminator(images, classes).float()

    optimizers["discriminator"].zero_grad(set_to_none=True)
    d_real, d_fake, loss = model._private_discriminator_loss(
        judge, real, labels, fake, fake_labels, contextlib.nullcontext())
    assert d_real.shape == (reals,) and d_fake.shape == (4,)
    loss.backward()
    images = [(x, y, -1.0) for x, y in zip(real, labels, strict=True)] + \
             [(x, y, 1.0) for x, y in zip(fake, fake_labels, strict=True)]
    for row, (image, label, sign) in enumerate(images):
        # one image's term of the BCE loss: softplus(-D(x)) if real, softplus(D(x)) if fake
        own = F.softplus(sign * reference(image[None], label[None])).sum()
        grads = torch.autograd.grad(own, list(reference.parameters()))
        for parameter, grad in zip(model.discriminator.parameters(), grads, strict=True):
            assert parameter.grad_sample.shape[0] == reals + 4
            torch.testing.assert_close(parameter.grad_sample[row], grad, rtol=1e-4, atol=1e-7)


def test_a_private_step_is_noisy_seeded_and_leaves_no_stale_per_sample_gradients(phantom):
    batch = labelled(phantom[0], 3)
    weights = {}
    for noise_seed in (0, 0, 1):
        model, optimizers = private_model(noise_seed)
        d_before = [p.detach().clone() for p in model.discriminator.parameters()]
        stats = model.train_step(batch, optimizers, torch.Generator().manual_seed(5))
        assert set(stats) == {"loss_d", "loss_g", "d_real", "d_fake", "d_accuracy"}
        for parameter in model.discriminator.parameters():
            # D's own step only: G's pass through D added no second set of rows
            assert isinstance(parameter.grad_sample, torch.Tensor)
            assert parameter.grad_sample.shape[0] == 3 + 4  # 3 real images, batch_size fakes
        assert all(not getattr(m, "activations", []) for m in model.discriminator.modules())
        assert all(not torch.equal(a, b) for a, b in
                   zip(d_before, model.discriminator.parameters(), strict=True))
        weights.setdefault(noise_seed, []).append(
            torch.cat([p.detach().flatten() for p in model.discriminator.parameters()]))
    assert torch.equal(weights[0][0], weights[0][1])  # the noise comes from its generator
    assert not torch.equal(weights[0][0], weights[1][0])  # and there is noise


def test_a_batch_without_real_images_still_takes_a_noisy_step(phantom):
    model, optimizers = private_model()
    empty = labelled(phantom[0], 0)
    stats = model.train_step(empty, optimizers, torch.Generator().manual_seed(5))
    assert set(stats) == {"loss_g", "d_fake", "d_accuracy"}  # nothing real to score
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert model.private.steps == 1  # counted: the step is part of the mechanism


# -- a private run through the command line -------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A private conditional DCGAN trained by the CLI, 2 epochs of 4 steps. Do not modify."""
    out = tmp_path_factory.mktemp("private") / "run"
    result = invoke("train", "dcgan", "phantom:t1,n=16", "--size", 32, "--width", 8,
                    "--conditional", "--epochs", 2, "--batch-size", 4, "--checkpoint-every", 1,
                    "--dp-epsilon", 8, "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_a_private_run_records_its_guarantee(cli_run):
    run, output = cli_run
    assert "dp_epsilon" in output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["privacy"] == {"epsilon": 8.0, "delta": None, "max_grad_norm": 1.0}
    assert config["model"]["d_norm"] == "none"  # the default under --dp-epsilon

    record = dp_record(run)
    assert set(record) == set(RECORD_TYPES)
    assert all(type(record[key]) is kind for key, kind in RECORD_TYPES.items())
    assert record["steps"] == 2 * 4 and record["sample_rate"] == 4 / 16
    assert (record["target_epsilon"], record["delta"], record["max_grad_norm"],
            record["accountant"]) == (8.0, 1e-5, 1.0, "rdp")
    expected = opacus_epsilon(record["noise_multiplier"], 4 / 16, 8, 1e-5)
    assert record["epsilon"] == expected and 8.0 - 0.01 <= expected <= 8.0

    lines = metric_lines(run)
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(set(line) >= DP_METRICS for line in lines)
    assert [line["dp_steps"] for line in lines] == [4, 8]
    assert lines[0]["dp_epsilon"] < lines[1]["dp_epsilon"]
    assert lines[1]["dp_epsilon"] == pytest.approx(expected, rel=1e-5)
    assert lines[0]["dp_epsilon"] == pytest.approx(
        opacus_epsilon(record["noise_multiplier"], 4 / 16, 4, 1e-5), rel=1e-5)

    state = checkpoint.load_state(run)
    assert state["privacy"]["noise_multiplier"] == record["noise_multiplier"]
    assert state["privacy"]["accountant"]["history"] == [(record["noise_multiplier"], 0.25, 8)]


def test_generate_samples_a_private_run(cli_run, tmp_path):
    run, _ = cli_run
    loaded = load_run(run)
    assert loaded.training_data["differential_privacy"]["steps"] == 8
    assert loaded.sample(2, torch.tensor([0, 1])).shape == (2, 1, 32, 32)
    out = tmp_path / "synthetic"
    result = invoke("generate", run, "--out", out, "--n", 4, "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(list(out.rglob("*.png"))) == 4


def test_resuming_a_spent_run_stops_at_once(cli_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = invoke("train", "dcgan", "phantom:t1,n=16", "--size", 32, "--out", run,
                    "--resume", "--epochs", 4, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "for 2 epochs" in result.output
    assert "privacy budget spent: epsilon" in result.output and "of 8 after" in result.output
    assert "after 2 of 4 epochs" in result.output
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for name in ("model.safetensors", "trainer_state.pt", "training_data.json", "metrics.jsonl"):
        assert after[name] == before[name]


@pytest.mark.parametrize("args, message", [
    (["--d-norm", "batch"], "--d-norm batch mixes the images of a batch, which differential "
                            "privacy forbids: pass --d-norm none"),
    (["--r1", 1], "--r1 needs a double backward pass"),
    (["--minibatch-std"], "--minibatch-std mixes the images of a batch"),
    (["--diffaugment", "cutout", "--ada-target", 0.6], "--ada-target adapts to D's outputs on "
                                                       "real images"),
])
def test_cli_refuses_what_privacy_cannot_train(tmp_path, args, message):
    out = tmp_path / "run"
    result = invoke("train", "dcgan", "phantom:t1,n=8", "--size", 32, "--width", 4,
                    "--batch-size", 4, "--epochs", 1, "--dp-epsilon", 4, *args,
                    "--no-progress", "--out", out)
    one_line_error(result, message)
    assert not out.exists()


def test_cli_dp_options_need_an_epsilon(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "dcgan", "phantom:t1,n=8", "--size", 32, "--dp-delta", 1e-6,
                    "--no-progress", "--out", out)
    one_line_error(result, "--dp-delta and --dp-max-grad-norm need --dp-epsilon")
    assert not out.exists()


def test_privacy_is_refused_for_cyclegan(tmp_path, phantom):
    config = RunConfig("cyclegan", CycleGANConfig(ngf=4, ndf=4, n_blocks=1, crop=24),
                       TrainConfig(epochs=1, batch_size=1))
    with pytest.raises(InputError, match="privacy: differentially private training is a DCGAN "
                                         "option, not for a cyclegan run"):
        replace(config, privacy=DPConfig(1.0))
    model = build_model(config)
    with pytest.raises(InputError, match="differential privacy is available for DCGAN "
                                         "training only, not cyclegan"):
        model.make_private(None)
    assert not (tmp_path / "run").exists()


# -- budget and resume ----------------------------------------------------------------------


def test_training_stops_with_a_checkpoint_when_the_budget_is_spent(tmp_path, phantom):
    """A run planned for 3 epochs, killed in epoch 2 and resumed for 6: it stops after epoch
    3, the last the budget pays for, with a checkpoint there (not a checkpoint epoch)."""
    run = tmp_path / "run"
    model = build_model(RunConfig("dcgan", MODEL, TrainConfig()), seed=0)
    killed_at(model, 4 + 2)
    with pytest.raises(KeyboardInterrupt):
        train_private(run, phantom[0], TrainConfig(epochs=3, batch_size=4, preview=4,
                                                   checkpoint_every=1), model=model)
    assert checkpoint.load_state(run)["epoch"] == 1
    longer = TrainConfig(epochs=6, batch_size=4, preview=4, checkpoint_every=5)
    _, result = train_private(run, phantom[0], longer, resume=True)
    assert result.epochs == 3
    assert result.note.startswith("privacy budget spent: epsilon")
    assert "after 3 of 6 epochs" in result.note and "checkpoint of epoch 3 is kept" in result.note
    assert checkpoint.load_state(run)["epoch"] == 3 and load_run(run).epoch == 3
    record = dp_record(run)
    assert record["steps"] == 3 * 4 and record["epsilon"] <= record["target_epsilon"] == 4.0
    assert [line["epoch"] for line in metric_lines(run)] == [1, 2, 3]


def test_exact_resume_after_a_kill_repeats_a_private_run(tmp_path, phantom):
    train_config = TrainConfig(epochs=3, batch_size=4, checkpoint_every=2, preview=4, seed=5,
                               decay_epochs=2)
    model_a, _ = train_private(tmp_path / "a", phantom[0], train_config)

    run_b = tmp_path / "b"
    model_b = build_model(RunConfig("dcgan", MODEL, train_config), seed=5)
    killed_at(model_b, 2 * 4 + 2)  # epoch 3, step 2: the epoch-2 checkpoint is the last
    with pytest.raises(KeyboardInterrupt):
        train_private(run_b, phantom[0], train_config, model=model_b)
    assert checkpoint.load_state(run_b)["privacy"]["accountant"]["history"][0][2] == 2 * 4

    torch.manual_seed(12345)  # a fresh process: other global RNG state, other initial weights
    model_c, result = train_private(run_b, phantom[0], train_config, resume=True, seed=99)
    assert result.epochs == 3 and result.note == ""

    def without_speed(lines):
        return [{k: v for k, v in line.items() if k != "images_per_s"} for line in lines]

    lines = metric_lines(run_b)
    assert without_speed(lines) == without_speed(metric_lines(tmp_path / "a"))
    assert [line["lr_discriminator"] for line in lines] == pytest.approx(
        [2e-4, 2e-4 * 2 / 3, 2e-4 / 3], rel=1e-5)  # the schedule drives D's private optimiser
    assert dp_record(run_b) == dp_record(tmp_path / "a")
    weights_a = load_file(tmp_path / "a" / "model.safetensors")
    weights_b = load_file(run_b / "model.safetensors")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    state_a, state_c = model_a.state_dict(), model_c.state_dict()
    assert all(torch.equal(state_a[k], state_c[k]) for k in state_a)
    trainer_a, trainer_b = checkpoint.load_state(tmp_path / "a"), checkpoint.load_state(run_b)
    assert trainer_a["privacy"] == trainer_b["privacy"]
    assert trainer_b["privacy"]["accountant"]["history"][0][2] == 3 * 4
    assert torch.equal(trainer_a["rng"]["order"], trainer_b["rng"]["order"])
