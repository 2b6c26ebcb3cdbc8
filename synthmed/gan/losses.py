"""GAN losses on discriminator outputs ``(B,)``, and DiffAugment.

Losses: ``bce`` (non-saturating, BCE from logits, as in the DCGAN tutorial), ``hinge`` and
``lsgan`` (least squares). DiffAugment (Zhao et al. 2020) applies the same differentiable
random colour / translation / cutout to real and fake images before D, so D cannot
memorise a small training set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "hinge", "lsgan")
AUGMENTS = ("color", "translation", "cutout")


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Mean loss of D on real and fake outputs."""
    if kind == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "lsgan":
        return 0.5 * ((real - 1.0) ** 2).mean() + 0.5 * (fake**2).mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Mean loss of G on D's outputs for fakes."""
    if kind == "bce":
        return F.softplus(-fake).mean()
    if kind == "hinge":
        return -fake.mean()
    if kind == "lsgan":
        return 0.5 * ((fake - 1.0) ** 2).mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def real_decision(kind: str, output: torch.Tensor) -> torch.Tensor:
    """D's call per item, True for 'real': logit > 0, or > 0.5 for least squares."""
    return output > (0.5 if kind == "lsgan" else 0.0)


def real_score(kind: str, output: torch.Tensor) -> torch.Tensor:
    """D's output as a score in [0, 1]-ish: sigmoid of logits, raw for least squares."""
    return output if kind == "lsgan" else torch.sigmoid(output)


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], rng: torch.Generator,
                 probability: float = 1.0) -> torch.Tensor:
    """Augment ``x`` ``(B, C, H, W)`` in [-1, 1] with the listed transforms, differentiably.

    Args:
        policy: any of ``color``, ``translation``, ``cutout``, applied in that order.
        rng: the generator all random draws come from (exact resume needs it).
        probability: the chance that each transform applies to an image (ADA's p); below 1
            each transform's draws are followed by one draw per image of whether it applies.
    """
    transforms = {"color": _color, "translation": _translate, "cutout": _cutout}
    for name, transform in transforms.items():
        if name not in policy or probability <= 0.0:
            continue
        changed = transform(x, rng)
        if probability < 1.0:
            applies = torch.rand(x.shape[0], generator=rng, device=x.device) < probability
            changed = torch.where(applies[:, None, None, None], changed, x)
        x = changed
    return x


def _color(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random brightness, saturation (colour images) and contrast per image."""
    def uniform() -> torch.Tensor:
        return torch.rand(x.shape[0], 1, 1, 1, generator=rng, device=x.device, dtype=x.dtype)

    x = x + (uniform() - 0.5)  # brightness
    if x.shape[1] == 3:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (uniform() * 2.0) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (uniform() + 0.5) + mean  # contrast


def _translate(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size, filling with zeros."""
    batch, _, height, width = x.shape
    max_dy, max_dx = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (batch, 1, 1), generator=rng, device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (batch, 1, 1), generator=rng, device=x.device)
    rows = (torch.arange(height, device=x.device)[None, :, None] + dy + 1).clamp(0, height + 1)
    cols = (torch.arange(width, device=x.device)[None, None, :] + dx + 1).clamp(0, width + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # the border is the zero fill
    index = torch.arange(batch, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ``ratio`` x the image size at a random place inside each image."""
    batch, _, height, width = x.shape
    cut_h, cut_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = torch.randint(0, height - cut_h + 1, (batch, 1, 1), generator=rng, device=x.device)
    left = torch.randint(0, width - cut_w + 1, (batch, 1, 1), generator=rng, device=x.device)
    rows = torch.arange(height, device=x.device)[None, :, None]
    cols = torch.arange(width, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + cut_h) & (cols >= left) & (cols < left + cut_w)
    return x * (~inside)[:, None].to(x.dtype)
