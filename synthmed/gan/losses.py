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


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], rng: torch.Generator) -> torch.Tensor:
    """Augment ``x`` ``(B, C, H, W)`` in [-1, 1] with the listed transforms, differentiably.

    Args:
        policy: any of ``color``, ``translation``, ``cutout``, applied in that order.
        rng: the generator all random draws come from (exact resume needs it).
    """
    batch = x.shape[0]

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(batch, *shape, generator=rng, device=x.device, dtype=x.dtype)

    if "color" in policy:
        x = x + (uniform(1, 1, 1) - 0.5)  # brightness
        if x.shape[1] == 3:
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (uniform(1, 1, 1) * 2.0) + mean  # saturation
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (uniform(1, 1, 1) + 0.5) + mean  # contrast
    if "translation" in policy:
        x = _translate(x, rng, ratio=0.125)
    if "cutout" in policy:
        x = _cutout(x, rng, ratio=0.5)
    return x


def _translate(x: torch.Tensor, rng: torch.Generator, ratio: float) -> torch.Tensor:
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


def _cutout(x: torch.Tensor, rng: torch.Generator, ratio: float) -> torch.Tensor:
    """Zero a square of ``ratio`` x the image size at a random place inside each image."""
    batch, _, height, width = x.shape
    cut_h, cut_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = torch.randint(0, height - cut_h + 1, (batch, 1, 1), generator=rng, device=x.device)
    left = torch.randint(0, width - cut_w + 1, (batch, 1, 1), generator=rng, device=x.device)
    rows = torch.arange(height, device=x.device)[None, :, None]
    cols = torch.arange(width, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + cut_h) & (cols >= left) & (cols < left + cut_w)
    return x * (~inside)[:, None].to(x.dtype)
