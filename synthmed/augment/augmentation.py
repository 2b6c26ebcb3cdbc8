"""Augmentation of the classifier's training batches, seeded by an explicit generator.

- :func:`classic_augment`: flips, small affine and brightness / contrast, batched in torch
  (its move alone, :func:`random_affine`, also augments the translators' training pairs);
- :func:`mri_augment`: MR / X-ray intensity artefacts from MONAI (bias field, gamma, Gibbs
  ringing, noise), the strongest cheap baseline a synthetic regime has to beat.

Both take and return ``(B, C, H, W)`` in [-1, 1] and draw nothing from the global RNGs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import GibbsNoise, RandAdjustContrast, RandBiasField, RandGaussianNoise
from monai.utils import convert_to_tensor

from synthmed.errors import InputError


def random_affine(images: torch.Tensor, rng: torch.Generator, flip: bool = True
                  ) -> torch.Tensor:
    """A random rigid-plus-scale move of each image of a batch ``(B, C, H, W)``, the same for
    all its channels (stacked slices, or both contrasts of a pair).

    Per image: a horizontal flip with probability 1/2 (when ``flip``), a rotation of up to
    ±10°, an isotropic scale in [0.9, 1.1] and a translation of up to ±6 % of each side,
    applied as one batched bilinear resampling (``affine_grid`` / ``grid_sample``, reflection
    padding as in MONAI's ``Affine``; rotation in pixel units, so non-square images are not
    sheared). All parameters are drawn from ``rng`` (on its device), none from the global RNG.
    """
    b, _, h, w = images.shape
    draw = _uniform(b, rng, images.device)
    sign = torch.where(draw(0, 1) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=images.device)
    angle = torch.deg2rad(draw(-10, 10))
    scale = draw(0.9, 1.1)
    shift_x, shift_y = draw(-0.12, 0.12), draw(-0.12, 0.12)  # 6 % of a side spans 2

    # theta maps output to input coordinates, normalised to [-1, 1] per axis; the rotation
    # is in pixels, hence the aspect factors h / w and w / h.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * sign, -sin * h / w, shift_x], dim=1),
        torch.stack([sin * w / h * sign, cos, shift_y], dim=1),
    ], dim=1).to(images.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)  # (B, C, H, W)


def classic_augment(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Classic augmentation of a batch ``(B, C, H, W)`` in [-1, 1], clamped to [-1, 1]: a
    flip, rotation, scale and translation per image (:func:`random_affine`), then contrast
    x [0.9, 1.1] about the image mean and brightness ±0.1, drawn from ``rng`` after the move.
    """
    _check_batch(images, "classic_augment")
    b = len(images)
    out = random_affine(images, rng)
    draw = _uniform(b, rng, images.device)
    contrast, brightness = draw(0.9, 1.1), draw(-0.1, 0.1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    out = (out - mean) * contrast.view(b, 1, 1, 1).to(out.dtype) + mean
    out = out + brightness.view(b, 1, 1, 1).to(out.dtype)
    return out.clamp(-1.0, 1.0)


def _uniform(n: int, rng: torch.Generator, device: torch.device
             ) -> Callable[[float, float], torch.Tensor]:
    """``draw(low, high)``: ``n`` uniform numbers from ``rng`` (float64 on its device), on
    ``device``."""

    def draw(low: float, high: float) -> torch.Tensor:  # (n,)
        u = torch.rand(n, generator=rng, device=rng.device, dtype=torch.float64)
        return (low + (high - low) * u).to(device)

    return draw


def mri_augment(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """MR / X-ray intensity and artefact augmentation of a batch ``(B, C, H, W)`` in [-1, 1].

    Per image, each with probability 1/2: a smooth multiplicative bias field (MONAI
    ``RandBiasField``, degree 3, coefficients up to 0.3), a gamma in [0.7, 1.5]
    (``RandAdjustContrast``) and Gaussian noise of sd 0.03 of the intensity range
    (``RandGaussianNoise``); on a third of the images, Gibbs ringing (``GibbsNoise``: k-space
    truncated by alpha in [0, 0.6], one alpha per batch, so the batch takes one FFT). MONAI's
    random state is seeded from ``rng``.
    """
    _check_batch(images, "mri_augment")
    seed = int(torch.randint(2**31 - 1, (1,), generator=rng, device=rng.device))
    state = np.random.RandomState(seed)
    per_image = [RandBiasField(degree=3, coeff_range=(0.0, 0.3), prob=0.5),
                 RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
                 RandGaussianNoise(prob=0.5, std=0.03)]
    for transform in per_image:
        transform.set_random_state(state=state)
    unit = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)  # (B, C, H, W) in [0, 1]
    out = []
    for image in unit:  # (C, H, W)
        for transform in per_image:
            image = transform(image)
        out.append(convert_to_tensor(image, track_meta=False, dtype=torch.float32))
    batch = torch.stack(out)  # (B, C, H, W)
    ringing = np.flatnonzero(state.uniform(size=len(batch)) < 1 / 3)
    if len(ringing):
        b, c, h, w = batch[ringing].shape
        rung = GibbsNoise(alpha=state.uniform(0.0, 0.6))(batch[ringing].reshape(b * c, h, w))
        batch[ringing] = convert_to_tensor(rung, track_meta=False).reshape(b, c, h, w)
    return (batch * 2 - 1).clamp(-1.0, 1.0).to(images.device, images.dtype)


#: name -> augmentation of a batch; a regime's names are applied in order.
AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "classic": classic_augment,
    "mri": mri_augment,
}


def _check_batch(images: torch.Tensor, name: str) -> None:
    if images.ndim != 4:
        raise InputError(f"{name} needs images (B, C, H, W), got {tuple(images.shape)}")
