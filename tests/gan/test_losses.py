"""GAN losses against their formulas, and DiffAugment's transforms one by one."""

from __future__ import annotations

import math

import pytest
import torch

from synthmed.gan.losses import (
    LOSSES,
    diff_augment,
    discriminator_loss,
    generator_loss,
    real_decision,
    real_score,
)

REAL = [2.0, -1.0, 0.5, 0.0]
FAKE = [-3.0, 1.0, 0.25, -0.5]


def mean(values):
    return sum(values) / len(values)


def softplus(v):
    return math.log1p(math.exp(v))


D_FORMULAS = {
    # BCE from logits: -log sigmoid(r) - log(1 - sigmoid(f))
    "bce": lambda r, f: mean([-math.log(1 / (1 + math.exp(-x))) for x in r])
    + mean([-math.log(1 - 1 / (1 + math.exp(-x))) for x in f]),
    "hinge": lambda r, f: mean([max(0.0, 1 - x) for x in r]) + mean([max(0.0, 1 + x) for x in f]),
    "lsgan": lambda r, f: 0.5 * mean([(x - 1) ** 2 for x in r]) + 0.5 * mean([x**2 for x in f]),
}
G_FORMULAS = {
    "bce": lambda f: mean([-math.log(1 / (1 + math.exp(-x))) for x in f]),  # non-saturating
    "hinge": lambda f: -mean(f),
    "lsgan": lambda f: 0.5 * mean([(x - 1) ** 2 for x in f]),
}


@pytest.mark.parametrize("kind", LOSSES)
def test_losses_equal_their_formulas(kind):
    real, fake = torch.tensor(REAL, dtype=torch.float64), torch.tensor(FAKE, dtype=torch.float64)
    expected = D_FORMULAS[kind](REAL, FAKE)
    assert discriminator_loss(kind, real, fake).item() == pytest.approx(expected)
    assert generator_loss(kind, fake).item() == pytest.approx(G_FORMULAS[kind](FAKE))


def test_bce_is_softplus_for_large_logits():
    """No overflow: BCE from logits stays finite where sigmoid saturates."""
    real, fake = torch.tensor([-200.0]), torch.tensor([200.0])
    assert discriminator_loss("bce", real, fake).item() == pytest.approx(400.0)
    assert generator_loss("bce", fake).item() == pytest.approx(softplus(-200.0), abs=1e-12)


@pytest.mark.parametrize("kind", LOSSES)
def test_d_loss_falls_as_real_rises_and_fake_falls(kind):
    # inside the hinge margins (real < 1, fake > -1) and the least-squares targets
    # (real < 1, fake > 0), so every loss has a slope
    real = torch.tensor([0.2, -0.5], requires_grad=True)
    fake = torch.tensor([0.4, 0.7], requires_grad=True)
    loss = discriminator_loss(kind, real, fake)
    loss.backward()
    assert torch.all(real.grad < 0) and torch.all(fake.grad > 0)
    with torch.no_grad():
        better = discriminator_loss(kind, real + 0.3, fake - 0.3)
        real_up = discriminator_loss(kind, real + 0.3, fake)
        fake_down = discriminator_loss(kind, real, fake - 0.3)
    assert better < real_up < loss and better < fake_down < loss


@pytest.mark.parametrize("kind", LOSSES)
def test_g_loss_falls_as_fake_rises(kind):
    fake = torch.tensor([-0.4, 0.1, 0.5], requires_grad=True)
    loss = generator_loss(kind, fake)
    loss.backward()
    assert torch.all(fake.grad < 0)
    with torch.no_grad():
        assert generator_loss(kind, fake + 0.3) < loss
        assert generator_loss(kind, fake + 0.6) < generator_loss(kind, fake + 0.3)


def test_unknown_loss():
    with pytest.raises(ValueError, match="loss must be one of"):
        discriminator_loss("wgan", torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="loss must be one of"):
        generator_loss("wgan", torch.zeros(2))


def test_decision_and_score():
    logits = torch.tensor([-1.0, 0.0, 0.3, 0.7])
    assert real_decision("bce", logits).tolist() == [False, False, True, True]
    assert real_decision("hinge", logits).tolist() == [False, False, True, True]
    assert real_decision("lsgan", logits).tolist() == [False, False, False, True]
    torch.testing.assert_close(real_score("bce", logits), torch.sigmoid(logits))
    torch.testing.assert_close(real_score("lsgan", logits), logits)


# -- DiffAugment ----------------------------------------------------------------------------

ALL = ("color", "translation", "cutout")


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(batch: int = 8, channels: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=rng(seed)) * 2 - 1


@pytest.mark.parametrize("policy", [("color",), ("translation",), ("cutout",), ALL])
@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (3, 3, 32, 32), (2, 1, 64, 48)])
def test_diffaugment_keeps_shape_and_dtype(policy, shape):
    x = torch.rand(shape) * 2 - 1
    out = diff_augment(x, policy, rng())
    assert out.shape == shape and out.dtype == x.dtype
    assert not torch.equal(out, x)


def test_diffaugment_is_differentiable():
    x = images().requires_grad_(True)
    out = diff_augment(x, ALL, rng())
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.3  # kept pixels pass the gradient on
    # through a generator-like layer too: the augmented output has a grad_fn
    w = torch.ones(1, requires_grad=True)
    diff_augment(images() * w, ALL, rng()).sum().backward()
    assert w.grad is not None and w.grad.item() != 0


def test_diffaugment_is_deterministic_per_generator():
    x = images()
    a, b = diff_augment(x, ALL, rng(1)), diff_augment(x, ALL, rng(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, diff_augment(x, ALL, rng(2)))
    # the generator is the only source of randomness: the global seed does not matter
    torch.manual_seed(123)
    c = diff_augment(x, ALL, rng(1))
    torch.manual_seed(456)
    assert torch.equal(c, diff_augment(x, ALL, rng(1))) and torch.equal(a, c)
    # and it advances: the next call on the same generator draws new values
    shared = rng(1)
    assert not torch.equal(diff_augment(x, ALL, shared), diff_augment(x, ALL, shared))


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[i, j] = x[i + dy, j + dx]``, zero outside."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        x[..., max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


@pytest.mark.parametrize("size", [28, 32])
def test_translation_only_moves_content(size):
    x = images(batch=64, channels=2, size=size) + 2.0  # no zeros in the content
    out = diff_augment(x, ("translation",), rng())
    limit = round(size / 8)  # 4 px
    shifts = []
    for image, moved in zip(x, out, strict=True):
        matches = [(dy, dx) for dy in range(-size // 4, size // 4 + 1)
                   for dx in range(-size // 4, size // 4 + 1)
                   if torch.equal(shift(image, dy, dx), moved)]
        assert len(matches) == 1, "each image is one shift of itself, zero-filled"
        shifts.append(matches[0])
    assert max(max(abs(dy), abs(dx)) for dy, dx in shifts) == limit  # reaches 1/8, not more
    assert len(set(shifts)) > 10  # each image draws its own shift


def test_translation_moves_a_bright_pixel():
    x = torch.zeros(32, 1, 32, 32)
    x[:, :, 16, 16] = 1.0
    out = diff_augment(x, ("translation",), rng(3))
    for moved in out:
        ys, xs = torch.nonzero(moved[0] == 1.0, as_tuple=True)
        assert len(ys) == 1  # one pixel, still there
        assert abs(ys.item() - 16) <= 4 and abs(xs.item() - 16) <= 4
        assert moved.sum().item() == 1.0  # everything else stays zero


@pytest.mark.parametrize("size, side", [(32, 16), (28, 14), (64, 32)])
def test_cutout_zeros_a_square_of_half_the_side(size, side):
    x = torch.ones(16, 3, size, size)
    out = diff_augment(x, ("cutout",), rng())
    for image in out:
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
        zeros = image[0] == 0
        assert zeros.sum().item() == side * side  # the whole square lies inside the image
        rows = torch.nonzero(zeros.any(dim=1)).flatten()
        cols = torch.nonzero(zeros.any(dim=0)).flatten()
        assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side
        assert torch.all(image[0][~zeros] == 1)  # nothing else changes
    corners = {tuple(torch.nonzero(image[0] == 0)[0].tolist()) for image in out}
    assert len(corners) > 4  # a random place per image


def test_color_is_an_affine_map_per_image():
    x = images(batch=32)
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)  # zero mean: out = contrast * x + brightness
    out = diff_augment(x, ("color",), rng())
    slopes, offsets = [], []
    for image, changed in zip(x.flatten(1), out.flatten(1), strict=True):
        design = torch.stack([image, torch.ones_like(image)], dim=1).double()
        solution = torch.linalg.lstsq(design, changed.double()[:, None]).solution.flatten()
        torch.testing.assert_close(design @ solution, changed.double(), atol=1e-5, rtol=0)
        slopes.append(solution[0].item())
        offsets.append(solution[1].item())
    assert all(0.5 <= s <= 1.5 for s in slopes)  # contrast
    assert all(-0.5 <= o <= 0.5 for o in offsets)  # brightness
    assert max(slopes) - min(slopes) > 0.3 and max(offsets) - min(offsets) > 0.3


def test_color_keeps_grey_rgb_grey():
    """Saturation scales the distance from the per-pixel channel mean: grey stays grey."""
    x = images(batch=8).repeat(1, 3, 1, 1)
    out = diff_augment(x, ("color",), rng())
    torch.testing.assert_close(out[:, 0], out[:, 1])
    torch.testing.assert_close(out[:, 0], out[:, 2])
    assert not torch.allclose(out, x)


def test_empty_policy_is_identity():
    x = images()
    generator = rng()
    before = generator.get_state()
    assert torch.equal(diff_augment(x, (), generator), x)
    assert torch.equal(generator.get_state(), before)


def test_diffaugment_bf16():
    x = images().to(torch.bfloat16)
    out = diff_augment(x, ALL, rng())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_augment_probability_applies_each_op_to_a_share_of_the_images():
    x = images(batch=400)
    assert torch.equal(diff_augment(x, ALL, rng(), probability=0.0), x)
    # probability 1 is plain DiffAugment, draw for draw
    assert torch.equal(diff_augment(x, ALL, rng(4), probability=1.0), diff_augment(x, ALL, rng(4)))
    out = diff_augment(x, ("cutout",), rng(), probability=0.25)
    changed = (out != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.15 < changed < 0.35  # about a quarter of the images lost a square
    untouched = ~(out != x).flatten(1).any(dim=1)
    assert torch.equal(out[untouched], x[untouched])
