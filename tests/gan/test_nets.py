"""DCGAN networks: the tutorial preset layer by layer, and the general DCGAN for every size."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synthmed.errors import InputError
from synthmed.gan.config import DCGANConfig, TrainConfig
from synthmed.gan.dcgan import DCGAN
from synthmed.gan.nets import (
    LABEL_DIM,
    SIZES,
    DCGANDiscriminator,
    DCGANGenerator,
    TutorialDiscriminator,
    TutorialGenerator,
    base_size,
)
from synthmed.gan.run_config import resolve_dcgan_config

pytestmark = pytest.mark.usefixtures("one_thread")


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def weight_layers(module: nn.Module) -> list[nn.Module]:
    kinds = nn.Linear | nn.Conv2d | nn.ConvTranspose2d
    return [m for m in module.modules() if isinstance(m, kinds)]


# -- the tutorial preset --------------------------------------------------------------------


def test_tutorial_generator_layer_shapes():
    generator = TutorialGenerator()
    shapes: list[tuple[str, tuple[int, ...]]] = []
    linear = next(m for m in generator.modules() if isinstance(m, nn.Linear))
    deconvs = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    linear.register_forward_hook(lambda m, i, o: shapes.append(("dense", tuple(o.shape))))
    deconvs[0].register_forward_pre_hook(lambda m, i: shapes.append(("reshape", tuple(i[0].shape))))
    for deconv in deconvs:
        deconv.register_forward_hook(lambda m, i, o: shapes.append(("convT", tuple(o.shape))))
    out = generator(torch.randn(3, 100))
    assert shapes == [
        ("dense", (3, 7 * 7 * 256)),
        ("reshape", (3, 256, 7, 7)),
        ("convT", (3, 128, 7, 7)),
        ("convT", (3, 64, 14, 14)),
        ("convT", (3, 1, 28, 28)),
    ]
    assert out.shape == (3, 1, 28, 28)
    assert out.abs().max() <= 1.0  # tanh


def test_tutorial_parameter_counts_match_the_keras_summary():
    generator, discriminator = TutorialGenerator(), TutorialDiscriminator()
    running = sum(b.numel() for name, b in generator.named_buffers()
                  if name.endswith(("running_mean", "running_var")))
    assert trainable(generator) == 2_305_472
    assert running == 25_472  # Keras' non-trainable BatchNorm moving mean / variance
    assert trainable(generator) + running == 2_330_944
    assert trainable(discriminator) == 212_865


def test_tutorial_discriminator_shapes_and_layers():
    discriminator = TutorialDiscriminator()
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    outputs = []
    for conv in convs:
        conv.register_forward_hook(lambda m, i, o: outputs.append(tuple(o.shape)))
    logits = discriminator(torch.randn(5, 1, 28, 28))
    assert outputs == [(5, 64, 14, 14), (5, 128, 7, 7)]
    assert logits.shape == (5,)
    assert [m.kernel_size for m in convs] == [(5, 5), (5, 5)]
    assert [m.stride for m in convs] == [(2, 2), (2, 2)]


def test_tutorial_keras_hyperparameters():
    generator, discriminator = TutorialGenerator(), TutorialDiscriminator()
    g_relu = [m for m in generator.modules() if isinstance(m, nn.LeakyReLU)]
    d_relu = [m for m in discriminator.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(g_relu) == 3 and len(d_relu) == 2
    assert all(m.negative_slope == pytest.approx(0.3) for m in g_relu + d_relu)
    dropouts = [m for m in discriminator.modules() if isinstance(m, nn.Dropout)]
    assert [m.p for m in dropouts] == [pytest.approx(0.3)] * 2
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 3
    for norm in norms:
        # Keras BatchNormalization(momentum=0.99, epsilon=1e-3) == torch momentum 0.01
        assert norm.eps == pytest.approx(1e-3) and norm.momentum == pytest.approx(0.01)
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    assert all(layer.bias is None for layer in weight_layers(generator))  # use_bias=False
    d_layers = weight_layers(discriminator)
    assert len(d_layers) == 3 and all(torch.all(layer.bias == 0) for layer in d_layers)


def test_tutorial_batchnorm_momentum_behaviour():
    """One training batch moves the running mean 1 % of the way (Keras momentum 0.99)."""
    generator = TutorialGenerator()
    norm = next(m for m in generator.modules() if isinstance(m, nn.BatchNorm1d))
    dense = next(m for m in generator.modules() if isinstance(m, nn.Linear))
    z = torch.randn(8, 100)
    with torch.no_grad():
        generator(z)
        expected = 0.01 * dense(z).mean(dim=0)
    torch.testing.assert_close(norm.running_mean, expected)


@pytest.mark.parametrize("module", [TutorialGenerator(), TutorialDiscriminator(),
                                    TutorialGenerator(num_classes=3)],
                         ids=["G", "D", "conditional G"])
def test_tutorial_glorot_uniform_init(module):
    for layer in weight_layers(module):
        weight = layer.weight.detach()
        receptive = weight[0, 0].numel()
        fan_sum = (weight.shape[0] + weight.shape[1]) * receptive  # fan_in + fan_out
        bound = math.sqrt(6.0 / fan_sum)
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.9 * bound  # uniform: the bound is reached
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.1)
        assert abs(weight.mean().item()) < 0.1 * bound


def test_tutorial_config_and_cli_training_defaults():
    config = DCGANConfig.tutorial()
    assert (config.preset, config.size, config.channels, config.nz) == ("tutorial", 28, 1, 100)
    assert config.loss == "bce"
    assert config.lr_g == config.lr_d == 1e-4
    assert config.betas == (0.9, 0.999) and config.adam_eps == 1e-7
    resolved = resolve_dcgan_config("tutorial")
    model, train = resolved.model, resolved.train
    assert model == config
    assert train.batch_size == 256 and train.checkpoint_every == 15
    assert train == TrainConfig(batch_size=256, checkpoint_every=15)
    # the general preset keeps the pytorch/examples settings
    resolved = resolve_dcgan_config("dcgan")
    general, general_train = resolved.model, resolved.train
    assert general.size is None  # follows the data
    assert general.lr_g == 2e-4 and general.betas == (0.5, 0.999)
    assert general_train.batch_size == 64


def test_resolve_config_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  lr_g: 0.001\n  diffaugment: [color, cutout]\n"
                    "train:\n  epochs: 7\n  batch_size: 32\n")
    resolved = resolve_dcgan_config("tutorial", path, {"lr_d": 3e-4, "loss": None},
                                    {"batch_size": 16})
    model, train = resolved.model, resolved.train
    assert model.preset == "tutorial" and model.lr_g == 0.001 and model.lr_d == 3e-4
    assert model.diffaugment == ("color", "cutout") and model.loss == "bce"
    assert (train.epochs, train.batch_size, train.checkpoint_every) == (7, 16, 15)
    path.write_text("model:\n  lr: 0.1\n")
    with pytest.raises(InputError, match="unknown setting"):
        resolve_dcgan_config("dcgan", path)


def test_tutorial_model_optimizers():
    model = DCGAN(DCGANConfig.tutorial())
    assert isinstance(model.generator, TutorialGenerator)
    assert isinstance(model.discriminator, TutorialDiscriminator)
    for optimizer in model.make_optimizers().values():
        group = optimizer.param_groups[0]
        assert isinstance(optimizer, torch.optim.Adam)
        assert group["lr"] == 1e-4 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-7


@pytest.mark.parametrize("overrides", [{"size": 32}, {"channels": 3}])
def test_tutorial_preset_is_28x28x1(overrides):
    with pytest.raises(InputError, match="tutorial preset is 28x28"):
        DCGANConfig.tutorial(**overrides)


# -- the general DCGAN ----------------------------------------------------------------------

G_CASES = [({"size": s, "channels": c, "width": 4}, (2, 100), (2, c, s, s))
           for s in SIZES for c in (1, 3)]
G_CASES += [({"size": 32, "channels": 1, "width": 4, "nz": 16}, (3, 16), (3, 1, 32, 32)),
            ({"size": 28, "channels": 1, "width": 4, "upsample": "resize"}, (2, 100),
             (2, 1, 28, 28))]
D_CASES = [({"size": s, "channels": c, "width": 4}, (2, c, s, s), (2,))
           for s in SIZES for c in (1, 3)]
D_CASES += [({"size": 64, "channels": 1, "width": 4, "norm": "none", "spectral_norm": True},
             (3, 1, 64, 64), (3,))]


@pytest.mark.parametrize("kwargs, input_shape, expected_shape", G_CASES)
def test_generator_shape(kwargs, input_shape, expected_shape):
    generator = DCGANGenerator(**kwargs).eval()
    with torch.no_grad():
        out = generator(torch.randn(input_shape))
    assert out.shape == expected_shape
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("kwargs, input_shape, expected_shape", D_CASES)
def test_discriminator_shape(kwargs, input_shape, expected_shape):
    discriminator = DCGANDiscriminator(**kwargs).eval()
    with torch.no_grad():
        assert discriminator(torch.randn(input_shape)).shape == expected_shape


@pytest.mark.parametrize("size, side", [(28, 7), (32, 4), (64, 4), (128, 4), (256, 4)])
def test_first_feature_map_side(size, side):
    assert base_size(size) == side
    generator = DCGANGenerator(size, width=4)
    first = generator.project(torch.randn(2, 100))
    assert first.shape[2:] == (side, side)
    discriminator = DCGANDiscriminator(size, width=4)
    assert discriminator.features(torch.randn(2, 1, size, size)).shape[2:] == (side, side)


@pytest.mark.parametrize("size", [0, 16, 48, 100, 512])
def test_invalid_size(size):
    with pytest.raises(ValueError, match="image size must be one of"):
        DCGANGenerator(size)
    with pytest.raises(ValueError, match="image size must be one of"):
        DCGANDiscriminator(size)
    with pytest.raises(InputError, match="size must be one of"):
        DCGANConfig(size=size)


def test_invalid_options():
    with pytest.raises(ValueError, match="upsample"):
        DCGANGenerator(32, upsample="bilinear")
    with pytest.raises(ValueError, match="norm"):
        DCGANDiscriminator(32, norm="instance")
    for bad in ({"channels": 2}, {"loss": "wgan"}, {"diffaugment": ("rotate",)},
                {"ema_decay": 1.0}, {"preset": "stylegan"}):
        with pytest.raises(InputError):
            DCGANConfig(**bad)


@pytest.mark.parametrize("net", ["dcgan", "tutorial"])
def test_conditional_networks_need_labels(net):
    if net == "dcgan":
        generator = DCGANGenerator(32, width=4, num_classes=3).eval()
        discriminator = DCGANDiscriminator(32, width=4, num_classes=3).eval()
        size = 32
    else:
        generator, discriminator, size = (TutorialGenerator(num_classes=3).eval(),
                                          TutorialDiscriminator(num_classes=3).eval(), 28)
    z, x = torch.randn(2, 100), torch.randn(2, 1, size, size)
    with pytest.raises(ValueError, match="needs labels"):
        generator(z)
    with pytest.raises(ValueError, match="needs labels"):
        discriminator(x)
    with torch.no_grad():
        a, b = generator(z, torch.tensor([0, 0])), generator(z, torch.tensor([2, 2]))
        assert a.shape == (2, 1, size, size)
        assert not torch.allclose(a, b)  # the label steers the image
        assert discriminator(x, torch.tensor([1, 2])).shape == (2,)
    first = next(m for m in generator.modules() if isinstance(m, nn.Linear))
    assert first.in_features == 100 + LABEL_DIM


def test_resize_upsampling_has_no_transposed_convolution():
    resize = DCGANGenerator(64, width=4, upsample="resize")
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in resize.modules())
    assert sum(isinstance(m, nn.Upsample) for m in resize.modules()) == 4  # 4 -> 64
    default = DCGANGenerator(64, width=4)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in default.modules()) == 4
    assert not any(isinstance(m, nn.Upsample) for m in default.modules())


def test_spectral_norm_bounds_the_largest_singular_value():
    discriminator = DCGANDiscriminator(32, width=4, norm="none", spectral_norm=True, num_classes=2)
    layers = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 5  # 4 convolutions (32 -> 4 px), the linear head
    assert all(hasattr(m, "weight_orig") and hasattr(m, "weight_u") for m in layers)
    assert hasattr(discriminator.head.embedding, "weight_orig")
    x = torch.randn(2, 1, 32, 32)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        for _ in range(50):  # each training-mode forward is one power iteration
            discriminator(x, labels)
    for layer in layers:
        orig = layer.weight_orig.detach().reshape(layer.weight_orig.shape[0], -1)
        sigma = torch.linalg.matrix_norm(layer.weight.detach().reshape(orig.shape[0], -1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)
        assert torch.linalg.matrix_norm(orig, ord=2).item() != pytest.approx(1.0, abs=0.05)
    plain = DCGANDiscriminator(32, width=4)
    assert not any(hasattr(m, "weight_orig") for m in plain.modules())


def test_tutorial_discriminator_spectral_norm():
    discriminator = TutorialDiscriminator(spectral_norm=True)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert all(hasattr(m, "weight_orig") for m in convs)
    # Glorot init went to the raw weight
    bound = math.sqrt(6.0 / ((64 + 128) * 25))
    assert convs[1].weight_orig.abs().max() <= bound


def test_discriminator_norm_option():
    batch = DCGANDiscriminator(32, width=4, norm="batch")
    none = DCGANDiscriminator(32, width=4, norm="none")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in batch.modules()) == 3
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in none.modules())
    # without normalisation the strided convolutions get their bias back
    assert all(m.bias is not None for m in none.modules() if isinstance(m, nn.Conv2d))


def test_projection_discriminator_uses_the_label():
    discriminator = DCGANDiscriminator(32, width=4, num_classes=3).eval()
    x = torch.randn(1, 1, 32, 32).repeat(3, 1, 1, 1)
    with torch.no_grad():
        logits = discriminator(x, torch.tensor([0, 1, 2]))
        pooled = discriminator.features(x[:1]).mean(dim=(2, 3))[0]  # (C,)
        embed = discriminator.head.embedding.weight
    assert len(set(logits.tolist())) == 3  # same image, three labels, three logits
    # the difference is exactly the projection <e_y - e_y', features pooled over h, w>
    torch.testing.assert_close(logits[1] - logits[0], (embed[1] - embed[0]) @ pooled)
    torch.testing.assert_close(logits[2] - logits[0], (embed[2] - embed[0]) @ pooled)


def test_dcgan_init_normal_0_02():
    generator = DCGANGenerator(64, width=16, num_classes=4)
    discriminator = DCGANDiscriminator(64, width=16, num_classes=4)
    for net in (generator, discriminator):
        weights = [m.weight.detach().flatten() for m in net.modules()
                   if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d | nn.Embedding)]
        everything = torch.cat(weights)
        assert everything.numel() > 100_000
        assert everything.std().item() == pytest.approx(0.02, rel=0.03)
        assert abs(everything.mean().item()) < 1e-3
        for weight in weights:
            if weight.numel() >= 2000:
                assert weight.std().item() == pytest.approx(0.02, rel=0.1)
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        gamma = torch.cat([m.weight.detach() for m in norms])
        assert gamma.mean().item() == pytest.approx(1.0, abs=0.01)
        assert gamma.std().item() == pytest.approx(0.02, rel=0.25)
        assert all(torch.all(m.bias == 0) for m in norms)
        biases = [m.bias for m in net.modules()
                  if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None]
        assert biases and all(torch.all(b == 0) for b in biases)


def test_minibatch_std_appends_the_batch_spread():
    from synthmed.gan.nets import MinibatchStd

    x = torch.randn(8, 3, 4, 4)
    out = MinibatchStd()(x)
    assert out.shape == (8, 4, 4, 4)
    assert torch.equal(out[:, :3], x)
    groups = x.reshape(4, 2, 3, 4, 4).std(dim=0, unbiased=False).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out[:, 3, 0, 0], groups.repeat(4))
    same = MinibatchStd()(torch.ones(6, 2, 3, 3))  # identical items: zero spread
    assert torch.count_nonzero(same[:, 2]) == 0


def test_discriminator_with_minibatch_std_and_the_option_is_refused_for_tutorial():
    d = DCGANDiscriminator(32, 1, width=4, num_classes=2, minibatch_std=True)
    assert d(torch.randn(6, 1, 32, 32), torch.tensor([0, 1] * 3)).shape == (6,)
    with pytest.raises(InputError, match="minibatch-std"):
        DCGANConfig.tutorial(minibatch_std=True)


@pytest.mark.parametrize("preset", ["dcgan", "tutorial"])
def test_conditioning_strength_scales_the_class_terms(preset):
    """At strength 0 both networks ignore the labels; in between, D's class term is scaled."""
    config = DCGANConfig(preset=preset, size=28, width=4, num_classes=3)
    model = DCGAN(config).eval()
    z, x = torch.randn(1, config.nz), torch.randn(1, 1, 28, 28)
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        for net, inputs in ((model.generator, z), (model.discriminator, x)):
            ignored = [net(inputs, labels[k:k + 1], 0.0) for k in range(3)]
            assert all(torch.equal(ignored[0], out) for out in ignored[1:])
            assert not torch.equal(net(inputs, labels[:1]), net(inputs, labels[1:2]))
        x, labels = x.repeat(3, 1, 1, 1), torch.tensor([0, 1, 2])
        full, half, none = (model.discriminator(x, labels, s) for s in (1.0, 0.5, 0.0))
    torch.testing.assert_close(half - none, (full - none) / 2)


@pytest.mark.parametrize("transition, expected", [
    ((4, 8), [0, 0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1]),  # a linear ramp
    ((3, 3), [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),  # start = end: a switch, not a division by 0
])
def test_transition_ramps_the_conditioning_in_over_its_steps(transition, expected):
    model = DCGAN(DCGANConfig(size=28, width=4, num_classes=2, transition_steps=transition))
    strengths = []
    for step in range(10):
        model.steps_done.fill_(step)
        strengths.append(model.conditioning_strength)
    assert strengths == expected
    assert DCGAN(DCGANConfig(size=28, width=4, num_classes=2)).conditioning_strength == 1.0


def test_ada_moves_the_probability_by_the_batch_share_towards_the_target():
    model = DCGAN(DCGANConfig(size=28, width=4, diffaugment=("cutout",), ada_target=0.6,
                              ada_images=100))
    assert model.augment_chance == 0.0  # ADA starts without augmentation
    overfit = torch.tensor([True] * 9 + [False])  # E[sign D(real)] = 0.8 > 0.6: up
    for _ in range(3):
        model._adapt_augmentation(overfit)
    assert model.augment_chance == pytest.approx(0.3)
    model._adapt_augmentation(torch.tensor([True] * 7 + [False] * 3))  # 0.4 < 0.6: down
    assert model.augment_chance == pytest.approx(0.2)
    for _ in range(30):
        model._adapt_augmentation(torch.zeros(10, dtype=torch.bool))
    assert model.augment_chance == 0.0  # held in [0, 1]
    assert DCGAN(DCGANConfig(size=28, width=4, diffaugment=("cutout",))).augment_chance == 1.0


def test_small_data_options_are_checked():
    with pytest.raises(InputError, match="diffaugment ops"):
        DCGANConfig(ada_target=0.6)
    with pytest.raises(InputError, match="ada_target must be in"):
        DCGANConfig(ada_target=1.0, diffaugment=("color",))
    with pytest.raises(InputError, match="transition_steps"):
        DCGANConfig(transition_steps=(5, 2))
