"""CycleGAN: reference defaults, network shapes and receptive field, the image pool, the
training step (losses, updates, learning, determinism, exact resume) and translation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthmed.augment.intensity import foreground_quantiles, match_histogram
from synthmed.errors import InputError
from synthmed.gan.config import CycleGANConfig
from synthmed.gan.cyclegan import CycleGAN
from synthmed.gan.translator_nets import (
    UNET_DOWNSAMPLINGS,
    ImagePool,
    PatchGAN,
    QuantileMap,
    ResnetGenerator,
    UnetGenerator,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS_KEYS = {"loss_g", "loss_gan_ab", "loss_gan_ba", "loss_cycle_a", "loss_cycle_b",
             "loss_structure_ab", "loss_structure_ba", "loss_idt_a", "loss_idt_b", "loss_d_a",
             "loss_d_b"}
STAT_KEYS = LOSS_KEYS | {"d_real", "d_fake"}


def tiny(**overrides) -> CycleGANConfig:
    return CycleGANConfig(**{**dict(ngf=4, ndf=4, n_blocks=1), **overrides})


def smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random smooth images ``(n, 1, size, size)`` in [-1, 1]."""
    rng = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=rng) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)


def weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


# -- config -----------------------------------------------------------------------------------


def test_config_defaults_are_the_reference():
    c = CycleGANConfig()
    assert (c.channels, c.ngf, c.ndf, c.d_layers, c.norm) == (1, 64, 64, 3, "instance")
    assert (c.lambda_cycle, c.lambda_identity, c.pool_size) == (10.0, 0.5, 50)
    assert (c.lr, c.betas, c.init_gain) == (2e-4, (0.5, 0.999), 0.02)
    assert (c.crop, c.flip) == (None, True)  # None: 7/8 of the image side, as 256 of 286
    assert c.lambda_cycle * c.lambda_identity == 5.0
    assert c.lambda_structure == 0.0  # not in the reference
    assert c.intensity_prior == "none"
    assert all(net.prior is None for net in (CycleGAN(tiny()).generator_ab,
                                             CycleGAN(tiny()).generator_ba))


def test_blocks_auto_and_explicit():
    assert CycleGANConfig().blocks(128) == 6
    assert CycleGANConfig().blocks(256) == 9
    assert CycleGANConfig(n_blocks=3).blocks(256) == 3
    assert CycleGANConfig().blocks(None) == 6  # a size not yet known
    assert len([m for m in CycleGAN(tiny(n_blocks=0, crop=256)).generator_ab.model
                if type(m).__name__ == "ResnetBlock"]) == 9


@pytest.mark.parametrize("overrides, message", [
    (dict(channels=2), "channels"),
    (dict(ngf=0), "ngf"),
    (dict(n_blocks=-1), "n_blocks"),
    (dict(d_layers=0), "d_layers"),
    (dict(norm="layer"), "norm"),
    (dict(generator="vit"), "generator must be one of resnet, unet"),
    (dict(upsample="bicubic"), "upsample"),
    (dict(lambda_cycle=-1.0), "lambda_cycle"),
    (dict(lambda_identity=-0.5), "lambda_identity"),
    (dict(lambda_structure=-1.0), "lambda_structure"),
    (dict(intensity_prior="reversed"), "intensity_prior"),
    (dict(pool_size=-1), "pool_size"),
    (dict(lr=0.0), "lr"),
    (dict(betas=(0.5, 1.0)), "betas"),
    (dict(crop=30), "multiple of 4"),
    (dict(crop=20), "at least 24"),
    (dict(init_gain=0.0), "init_gain"),
])
def test_invalid_config_raises_input_error(overrides, message):
    with pytest.raises(InputError, match=message):
        CycleGANConfig(**overrides)


# -- networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize("upsample", ["convtranspose", "resize"])
def test_generator_keeps_the_shape(channels, norm, upsample):
    net = ResnetGenerator(channels, ngf=4, n_blocks=1, norm=norm, upsample=upsample)
    out = net(torch.randn(2, channels, 32, 48))
    assert out.shape == (2, channels, 32, 48)
    assert out.abs().max() <= 1.0
    transposed = any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())
    assert transposed == (upsample == "convtranspose")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize("size", [(30, 45), (8, 8), (64, 96)])
@pytest.mark.parametrize("upsample", ["convtranspose", "resize"])
def test_unet_generator_takes_any_size_and_skips_at_every_scale(channels, norm, size, upsample):
    net = UnetGenerator(channels, ngf=4, norm=norm, upsample=upsample)
    x = torch.randn(2, channels, *size)
    out = net(x)
    assert out.shape == x.shape and out.abs().max() <= 1.0
    downsamplings = [m for m in net.modules()
                     if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(downsamplings) == UNET_DOWNSAMPLINGS
    assert max(m.out_channels for m in downsamplings) == 8 * 4  # widths stop at 8 ngf
    # the skip connections: the last layer sees the first layer's features beside the decoder's
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)
           or isinstance(m, torch.nn.Conv2d) and m.stride == (1, 1)]
    assert len(ups) == UNET_DOWNSAMPLINGS + 1  # the bottleneck's convolution, then the decoder
    assert ups[-1].in_channels == 2 * 4 and ups[-1].out_channels == channels
    transposed = any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())
    assert transposed == (upsample == "convtranspose")


@pytest.mark.parametrize("upsample, checkerboard", [("convtranspose", True), ("resize", False)])
def test_unet_resize_upsampling_paints_no_checkerboard(upsample, checkerboard):
    """A constant feature map stays constant inside through a resize-convolution, while a 3x3
    stride-2 transposed convolution overlaps its kernels unevenly: a period-2 pattern."""
    net = UnetGenerator(1, ngf=4, upsample=upsample).model
    up = net._get_up_layer(8, 4, 2, is_top=True)
    torch.nn.init.normal_(next(p for p in up.parameters() if p.dim() == 4), std=1.0)
    out = up(torch.ones(1, 8, 6, 6))[0, :, 2:-2, 2:-2]  # away from the borders' padding
    assert out.shape[-2:] == (8, 8)
    assert (out.std(dim=(1, 2)).max() > 1e-3) == checkerboard


def test_generator_is_the_reference_layout():
    """Parameter counts of the reference's 3-channel networks (as printed by its trainer)."""
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(ResnetGenerator(3, 64, 9)) == 11_378_179
    assert count(PatchGAN(3, 64, 3)) == 2_764_737


@pytest.mark.parametrize("size, side", [(256, 30), (128, 14), (32, 2)])
def test_patchgan_map_size(size, side):
    assert PatchGAN(1, ndf=4)(torch.randn(1, 1, size, size)).shape == (1, 1, side, side)


def test_patchgan_sees_70x70_patches():
    """The gradient of one interior score has a 70x70 support in the input (batch norm in
    eval mode is pointwise, unlike instance norm, which mixes the whole image)."""
    net = PatchGAN(1, ndf=4, norm="batch").eval()
    x = torch.randn(1, 1, 128, 128, requires_grad=True)
    net(x)[0, 0, 7, 7].backward()
    rows, cols = (x.grad[0, 0] != 0).nonzero(as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (70, 70)


def test_init_is_normal_0_02():
    model = CycleGAN(CycleGANConfig(ngf=16, n_blocks=1, ndf=16, norm="batch"))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    big = torch.cat([m.weight.flatten() for m in convs])
    assert big.mean().abs() < 2e-3 and abs(big.std().item() - 0.02) < 2e-3
    assert all(m.bias is None or (m.bias == 0).all() for m in convs)
    norms = torch.cat([m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(norms.mean().item() - 1.0) < 5e-3 and 0.01 < norms.std().item() < 0.03


# -- image pool -------------------------------------------------------------------------------


def test_pool_size_0_passes_through():
    images = torch.randn(3, 1, 8, 8)
    assert ImagePool(0).query(images, torch.Generator()) is images


def test_pool_fills_then_mixes_old_and_new():
    pool, rng = ImagePool(4), torch.Generator().manual_seed(0)
    first = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    assert torch.equal(pool.query(first, rng), first)  # filling: the new images come back
    assert int(pool.count) == 4 and torch.equal(pool.images, first)
    new = torch.arange(100.0, 140.0).reshape(40, 1, 1, 1).expand(40, 1, 2, 2)
    out = pool.query(new, rng)
    swapped = out[:, 0, 0, 0] != new[:, 0, 0, 0]
    assert 8 < swapped.sum() < 32  # about half are swapped for stored ones
    # every image is either returned or kept, exactly once
    kept_or_returned = torch.cat([out, pool.images])[:, 0, 0, 0].sort().values
    assert torch.equal(kept_or_returned, torch.cat([first, new])[:, 0, 0, 0].sort().values)


def test_pool_draws_only_from_its_generator():
    images = torch.randn(30, 1, 4, 4)
    outputs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        pool, rng = ImagePool(5), torch.Generator().manual_seed(7)
        outputs.append(torch.cat([pool.query(images[i:i + 3], rng) for i in range(0, 30, 3)]))
    assert torch.equal(*outputs)
    pool = ImagePool(5)
    other = torch.cat([pool.query(images[i:i + 3], torch.Generator().manual_seed(i))
                       for i in range(0, 30, 3)])
    assert not torch.equal(outputs[0], other)


def test_pool_rejects_another_image_shape():
    pool = ImagePool(2)
    pool.query(torch.zeros(1, 1, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="shape"):
        pool.query(torch.zeros(1, 1, 8, 12), torch.Generator())


def test_state_dict_round_trip_restores_the_pools():
    model = CycleGAN(tiny(pool_size=3))
    rng = torch.Generator().manual_seed(0)
    for seed in range(5):
        model.pool_a.query(smooth_images(1, seed=seed), rng)
    fresh = CycleGAN(tiny(pool_size=3))
    fresh.load_state_dict(model.state_dict())
    assert int(fresh.pool_a.count) == 3 and torch.equal(fresh.pool_a.images, model.pool_a.images)
    queries = smooth_images(6, seed=9)
    results = [m.pool_a.query(queries, torch.Generator().manual_seed(3)) for m in (model, fresh)]
    assert torch.equal(*results)
    assert fresh.pool_b.images.shape == (0,)  # never queried: still empty


# -- training ---------------------------------------------------------------------------------


def test_train_step_returns_finite_stats_and_updates_all_networks():
    model = CycleGAN(tiny())
    optimizers = model.make_optimizers()
    nets = [model.generator_ab, model.generator_ba, model.discriminator_a, model.discriminator_b]
    before = [weights(net) for net in nets]
    stats = model.train_step((smooth_images(2), -smooth_images(2, seed=1)), optimizers,
                             torch.Generator().manual_seed(0))
    assert set(stats) == STAT_KEYS
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in stats.values())
    parts = [stats[k] for k in LOSS_KEYS - {"loss_g", "loss_d_a", "loss_d_b"}]
    assert stats["loss_g"] == pytest.approx(sum(parts), rel=1e-5)
    assert stats["loss_idt_a"] > 0 and stats["loss_idt_b"] > 0
    for net, old in zip(nets, before, strict=True):
        assert any(not torch.equal(a, b) for a, b in zip(old, weights(net), strict=True)), net
    assert all(p.requires_grad for p in model.parameters())


def test_no_identity_loss_when_its_weight_is_0():
    model = CycleGAN(tiny(lambda_identity=0.0))
    calls = []
    model.generator_ab.register_forward_hook(lambda *args: calls.append(1))
    stats = model.train_step((smooth_images(1), smooth_images(1, seed=1)),
                             model.make_optimizers(), torch.Generator())
    assert set(stats) == STAT_KEYS
    assert stats["loss_idt_a"] == stats["loss_idt_b"] == 0.0
    assert len(calls) == 2  # A -> B and the cycle B -> A -> B; no identity pass


def test_structure_loss_is_blind_to_the_contrast_sign_but_not_to_invented_texture():
    model = CycleGAN(tiny(lambda_structure=2.0))
    source = smooth_images(2)
    inverted = model._structure_loss(-0.5 * source, source)  # an inverted contrast
    textured = model._structure_loss(source + 0.3 * torch.randn(source.shape), source)
    assert inverted.item() == pytest.approx(0.0, abs=1e-3)
    assert 0.2 < textured.item() <= 2.0  # the weight x (1 - squared NCC in [0, 1])
    assert CycleGAN(tiny())._structure_loss(source + 0.3, source).item() == 0.0


def test_structure_loss_joins_the_generator_loss():
    model = CycleGAN(tiny(lambda_structure=1.0))
    stats = model.train_step((smooth_images(1), smooth_images(1, seed=1)),
                             model.make_optimizers(), torch.Generator())
    assert stats["loss_structure_ab"] > 0 and stats["loss_structure_ba"] > 0
    parts = [stats[k] for k in LOSS_KEYS - {"loss_g", "loss_d_a", "loss_d_b"}]
    assert stats["loss_g"] == pytest.approx(sum(parts), rel=1e-5)


def foreground_images(seed: int, spread: float) -> np.ndarray:
    """``(3, 1, 32, 32)`` model-space images: a square of random foreground on -1."""
    rng = np.random.default_rng(seed)
    images = np.full((3, 1, 32, 32), -1.0, np.float32)
    images[:, :, 4:28, 4:28] = np.tanh(rng.normal(0.0, spread, (3, 1, 24, 24)))
    return images


@pytest.mark.parametrize("generator", ["resnet", "unet"])
@pytest.mark.parametrize("prior, invert", [("matching", False), ("inverted", True)])
def test_an_untrained_generator_with_a_prior_is_that_histogram_matching(prior, invert, generator):
    a, b = foreground_images(0, 0.4), foreground_images(1, 1.0)
    model = CycleGAN(tiny(intensity_prior=prior, lambda_identity=0.0, generator=generator))
    model.set_intensity_prior(foreground_quantiles(a), foreground_quantiles(b))
    for direction, source, target in (("a2b", a, b), ("b2a", b, a)):
        translated = model.translate(torch.from_numpy(source), direction).numpy()
        expected = match_histogram(source, foreground_quantiles(target), invert=invert)
        assert np.abs(translated - expected).max() < 2e-3, direction  # atanh's bound 0.999
        assert np.all(translated[source <= -1.0] < -0.99)  # background stays background
    correlation = np.corrcoef(a[a > -1], model.translate(torch.from_numpy(a), "a2b")
                              .numpy()[a > -1])[0, 1]
    assert (correlation < -0.9) if invert else (correlation > 0.9)


def test_quantile_map_averages_tied_source_levels_and_passes_gradients():
    qmap = QuantileMap(levels=5)
    qmap.set_tables([-0.5, 0.0, 0.0, 0.5, 1.0], [-1.0, -0.5, 0.5, 0.75, 1.0])
    x = torch.tensor([-1.0, -0.5, -0.25, 0.0, 0.25, 2.0], requires_grad=True)
    mapped = qmap(x)
    # -1 is background; the tie at 0 maps to the mean of -0.5 and 0.5; 2 clamps to the top
    assert mapped.tolist() == pytest.approx([-1.0, -1.0, -0.5, 0.0, 0.375, 1.0])
    mapped[2].backward()
    assert x.grad[2].item() == pytest.approx(1.0 / 0.5)  # slope from (-0.5, -1) to (0, 0)


def test_a_prior_is_corrected_by_training_and_saved_with_the_model():
    model = CycleGAN(tiny(intensity_prior="inverted", lambda_identity=0.0))
    a, b = foreground_images(0, 0.4), foreground_images(1, 1.0)
    model.set_intensity_prior(foreground_quantiles(a), foreground_quantiles(b))
    before = model.translate(torch.from_numpy(a), "a2b")
    optimizers = model.make_optimizers()
    for step in range(3):
        model.train_step((torch.from_numpy(a[:1]), torch.from_numpy(b[:1])), optimizers,
                         torch.Generator().manual_seed(step))
    after = model.translate(torch.from_numpy(a), "a2b")
    assert not torch.allclose(before, after)  # the correction learns
    restored = CycleGAN(tiny(intensity_prior="inverted", lambda_identity=0.0))
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.translate(torch.from_numpy(a), "a2b"), after)
    assert "generator_ab.prior.source" in model.state_dict()


def test_train_step_under_bf16_autocast():
    model = CycleGAN(tiny())
    stats = model.train_step((smooth_images(1), smooth_images(1, seed=1)),
                             model.make_optimizers(), torch.Generator(),
                             torch.autocast("cpu", dtype=torch.bfloat16))
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())


def test_training_cuts_the_cycle_error():
    """A few dozen steps on smooth images A and B = -A at least halve the cycle error
    |G_ba(G_ab(a)) - a| on held-out images (translated in eval mode)."""
    torch.manual_seed(0)
    model = CycleGAN(tiny(ngf=8, lr=2e-3, pool_size=4))
    optimizers, rng = model.make_optimizers(), torch.Generator().manual_seed(0)
    held_out = smooth_images(8, seed=999)

    def cycle_error() -> float:
        back = model.translate(model.translate(held_out, "a2b"), "b2a")
        return (back - held_out).abs().mean().item()

    before = cycle_error()
    for step in range(40):
        model.train_step((smooth_images(2, seed=step), -smooth_images(2, seed=1000 + step)),
                         optimizers, rng)
    assert cycle_error() < 0.5 * before


def _trained(seed: int, steps: int = 4) -> CycleGAN:
    torch.manual_seed(seed)
    model = CycleGAN(tiny(pool_size=2))
    optimizers, rng = model.make_optimizers(), torch.Generator().manual_seed(5)
    for step in range(steps):
        model.train_step((smooth_images(1, seed=step), smooth_images(1, seed=50 + step)),
                         optimizers, rng)
    return model


def test_training_is_deterministic():
    first, second, other = _trained(0), _trained(0), _trained(1)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not torch.equal(first.generator_ab.model[1].weight, other.generator_ab.model[1].weight)


# -- translation and preview ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 1, 30, 45), (1, 3, 32, 32), (2, 1, 3, 5), (1, 1, 9, 6)])
def test_translate_any_size(shape):
    model = CycleGAN(tiny(channels=shape[1]))
    images = torch.rand(shape, dtype=torch.float64) * 2 - 1
    out = model.translate(images, "a2b", batch_size=2)
    assert out.shape == shape and out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.abs().max() <= 1.0
    assert model.generator_ab.training  # training mode restored


def test_translate_is_the_generator_on_aligned_sizes():
    model = CycleGAN(tiny(norm="batch"))
    images = smooth_images(3)
    model.eval()
    with torch.no_grad():
        expected = model.generator_ba(images)
    model.train()
    assert torch.allclose(model.translate(images, "b2a", batch_size=2), expected, atol=1e-6)
    with pytest.raises(ValueError, match="direction"):
        model.translate(images, "ab")


def test_preview_rows():
    model = CycleGAN(tiny())
    a, b = smooth_images(2), smooth_images(2, seed=1)
    grid = model.preview(examples=(a, b))
    assert grid.shape == (6, 2, 1, 32, 32)
    assert torch.equal(grid[0], a) and torch.equal(grid[3], b)
    assert torch.equal(grid[1], model.translate(a, "a2b"))
    assert torch.equal(grid[5], model.translate(grid[4], "a2b"))


def test_config_is_a_frozen_dataclass():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CycleGANConfig().ngf = 8  # type: ignore[misc]
