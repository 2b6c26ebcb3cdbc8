"""DCGAN generators and discriminators.

Two families:

* ``tutorial``: exactly the classic DCGAN tutorial network (28x28x1, 100-d noise), including
  its Keras defaults: LeakyReLU slope 0.3, BatchNorm momentum 0.99 / epsilon 1e-3, Glorot
  uniform weights and zero biases, 'same' padding.
* ``dcgan``: the general DCGAN (Radford et al.; pytorch/examples) for 28, 32, 64, 128 and 256
  px, 1 or 3 channels, configurable width, with options for small data sets: spectral norm
  and no BatchNorm in D, resize + convolution instead of transposed convolution in G.

Both take ``num_classes > 0`` for the class-conditional variant: a label embedding is
concatenated to the noise in G, and D adds a projection term (Miyato & Koyama 2018),
``<embed(y), pooled features>``, to its logit. Embeddings start small (Keras' uniform
+-0.05 in the tutorial family, N(0, 0.02) in the DCGAN family) so the projection does not
swamp the logit at the start. A ``strength`` in [0, 1] scales both class terms (0: the
networks ignore the labels), for transitional conditioning.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm as apply_spectral_norm

SIZES = (28, 32, 64, 128, 256)
UPSAMPLES = ("convtranspose", "resize")  # the generators' upsampling: reference, or resize + conv
LABEL_DIM = 32


def base_size(size: int) -> int:
    """Side of the first feature map: 7 for 28 px, 4 for the powers of two."""
    if size not in SIZES:
        raise ValueError(f"image size must be one of {SIZES}, got {size}")
    return 7 if size == 28 else 4


class LabelEmbedding(nn.Module):
    """Noise ``(B, nz)`` and labels ``(B,)`` -> ``(B, nz + LABEL_DIM)``.

    Without classes it passes the noise through unchanged."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, LABEL_DIM) if num_classes else None
        self.extra = LABEL_DIM if num_classes else 0

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None,
                strength: float = 1.0) -> torch.Tensor:
        if self.embedding is None:
            return z
        if labels is None:
            raise ValueError("a class-conditional generator needs labels")
        return torch.cat([z, _scaled(self.embedding(labels), strength)], dim=1)


class MinibatchStd(nn.Module):
    """Append the mean standard deviation across groups of the batch as one more channel
    (Karras et al. 2018): D sees how alike a batch is, which fights mode collapse.

    ``(B, C, H, W)`` -> ``(B, C + 1, H, W)``; groups of up to 4 items.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        group = next(g for g in (4, 3, 2, 1) if batch % g == 0)
        spread = x.reshape(group, batch // group, *x.shape[1:]).float().std(dim=0,
                                                                              unbiased=False)
        stat = spread.mean(dim=(1, 2, 3)).to(x.dtype)  # (B / group,)
        stat = stat.repeat(group).reshape(batch, 1, 1, 1).expand(batch, 1, height, width)
        return torch.cat([x, stat], dim=1)


class ProjectionHead(nn.Module):
    """Features ``(B, C, h, w)`` -> logit ``(B,)``: a linear layer on the flattened features,
    plus the projection ``<embed(y), mean over h, w>`` when conditional (the mean rather than
    Miyato's sum keeps the two terms on one scale without spectral norm)."""

    def __init__(self, channels: int, side: int, num_classes: int, spectral: bool) -> None:
        super().__init__()
        wrap = apply_spectral_norm if spectral else (lambda module: module)
        self.linear = wrap(nn.Linear(channels * side * side, 1))
        self.embedding = wrap(nn.Embedding(num_classes, channels)) if num_classes else None

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None,
                strength: float = 1.0) -> torch.Tensor:
        logit = self.linear(features.flatten(1)).squeeze(1)
        if self.embedding is not None:
            if labels is None:
                raise ValueError("a class-conditional discriminator needs labels")
            projection = (self.embedding(labels) * features.mean(dim=(2, 3))).sum(dim=1)
            logit = logit + _scaled(projection, strength)
        return logit


def _scaled(term: torch.Tensor, strength: float) -> torch.Tensor:
    """A class term times the conditioning strength (untouched at full strength)."""
    return term if strength == 1.0 else term * strength


# -- the tutorial preset ----------------------------------------------------------------------


class TutorialGenerator(nn.Module):
    """The tutorial generator: ``(B, 100)`` noise -> ``(B, 1, 28, 28)`` in [-1, 1]."""

    def __init__(self, nz: int = 100, num_classes: int = 0) -> None:
        super().__init__()
        self.nz = nz
        self.label = LabelEmbedding(num_classes)
        self.project = nn.Sequential(
            nn.Linear(nz + self.label.extra, 7 * 7 * 256, bias=False),
            nn.BatchNorm1d(7 * 7 * 256, eps=1e-3, momentum=0.01),
            nn.LeakyReLU(0.3),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 5, stride=1, padding=2, bias=False),  # (B, 128, 7, 7)
            nn.BatchNorm2d(128, eps=1e-3, momentum=0.01),
            nn.LeakyReLU(0.3),
            nn.ConvTranspose2d(128, 64, 5, stride=2, padding=2, output_padding=1, bias=False),
            nn.BatchNorm2d(64, eps=1e-3, momentum=0.01),  # (B, 64, 14, 14)
            nn.LeakyReLU(0.3),
            nn.ConvTranspose2d(64, 1, 5, stride=2, padding=2, output_padding=1, bias=False),
            nn.Tanh(),  # (B, 1, 28, 28)
        )
        _keras_init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                strength: float = 1.0) -> torch.Tensor:
        h = self.project(self.label(z, labels, strength)).view(-1, 256, 7, 7)  # (B, 256, 7, 7)
        return self.deconv(h)


class TutorialDiscriminator(nn.Module):
    """The tutorial discriminator: ``(B, 1, 28, 28)`` -> logit ``(B,)``."""

    def __init__(self, num_classes: int = 0, spectral_norm: bool = False) -> None:
        super().__init__()
        wrap = apply_spectral_norm if spectral_norm else (lambda module: module)
        self.features = nn.Sequential(
            wrap(nn.Conv2d(1, 64, 5, stride=2, padding=2)),  # (B, 64, 14, 14)
            nn.LeakyReLU(0.3),
            nn.Dropout(0.3),
            wrap(nn.Conv2d(64, 128, 5, stride=2, padding=2)),  # (B, 128, 7, 7)
            nn.LeakyReLU(0.3),
            nn.Dropout(0.3),
        )
        self.head = ProjectionHead(128, 7, num_classes, spectral_norm)
        _keras_init(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                strength: float = 1.0) -> torch.Tensor:
        return self.head(self.features(x), labels, strength)


def _keras_init(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform kernels, zero biases, uniform +-0.05 embeddings
    (BatchNorm keeps 1 and 0)."""
    for layer in module.modules():
        if isinstance(layer, nn.Embedding):
            nn.init.uniform_(getattr(layer, "weight_orig", layer.weight), -0.05, 0.05)
        elif isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            weight = getattr(layer, "weight_orig", layer.weight)
            nn.init.xavier_uniform_(weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


# -- the general DCGAN ------------------------------------------------------------------------


class DCGANGenerator(nn.Module):
    """Noise ``(B, nz)`` -> images ``(B, channels, size, size)`` in [-1, 1].

    Args:
        size: 28, 32, 64, 128 or 256.
        channels: 1 or 3.
        nz: noise dimension.
        width: channels of the last hidden layer; each layer towards the noise doubles it
            (capped at 8 x width).
        num_classes: > 0 for the conditional variant.
        upsample: ``convtranspose`` (4x4, stride 2, as in DCGAN) or ``resize`` (nearest
            upsampling + 3x3 conv, which avoids checkerboard artefacts).

    Examples:
        >>> DCGANGenerator(64, 1)(torch.randn(2, 100)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(self, size: int = 64, channels: int = 1, nz: int = 100, width: int = 64,
                 num_classes: int = 0, upsample: str = "convtranspose") -> None:
        super().__init__()
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be {' or '.join(UPSAMPLES)}, got {upsample!r}")
        self.nz = nz
        side = base_size(size)
        n_up = (size // side).bit_length() - 1
        widths = [width * min(2 ** k, 8) for k in range(n_up, -1, -1)]  # e.g. 512..64
        self.label = LabelEmbedding(num_classes)
        self.project = nn.Sequential(
            nn.Linear(nz + self.label.extra, widths[0] * side * side, bias=False),
            nn.Unflatten(1, (widths[0], side, side)),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            if upsample == "convtranspose":
                blocks.append(nn.ConvTranspose2d(w_in, w_out, 4, stride=2, padding=1, bias=False))
            else:
                blocks += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(w_in, w_out, 3, padding=1, bias=False)]
            blocks += [nn.BatchNorm2d(w_out), nn.ReLU()]
        blocks += [nn.Conv2d(widths[-1], channels, 3, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                strength: float = 1.0) -> torch.Tensor:
        return self.blocks(self.project(self.label(z, labels, strength)))


class DCGANDiscriminator(nn.Module):
    """Images ``(B, channels, size, size)`` -> logit ``(B,)``.

    Args:
        norm: ``batch`` (DCGAN) or ``none`` (for small data, WGAN-style losses and DP-SGD).
        spectral_norm: spectral normalisation on every weight layer.
        minibatch_std: append the batch's standard deviation as a feature before the head
            (against mode collapse; it mixes items, so not with per-sample DP gradients).

    Examples:
        >>> DCGANDiscriminator(32, 3)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2])
    """

    def __init__(self, size: int = 64, channels: int = 1, width: int = 64, num_classes: int = 0,
                 norm: str = "batch", spectral_norm: bool = False,
                 minibatch_std: bool = False) -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be batch or none, got {norm!r}")
        wrap = apply_spectral_norm if spectral_norm else (lambda module: module)
        side = base_size(size)
        n_down = (size // side).bit_length() - 1
        widths = [width * min(2 ** k, 8) for k in range(n_down + 1)]  # e.g. 64..512
        layers: list[nn.Module] = [wrap(nn.Conv2d(channels, widths[0], 3, padding=1)),
                                   nn.LeakyReLU(0.2)]
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers.append(wrap(nn.Conv2d(w_in, w_out, 4, stride=2, padding=1,
                                         bias=norm == "none")))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(w_out))
            layers.append(nn.LeakyReLU(0.2))
        if minibatch_std:
            layers.append(MinibatchStd())
        self.features = nn.Sequential(*layers)  # (B, widths[-1] (+1), side, side)
        self.head = ProjectionHead(widths[-1] + int(minibatch_std), side, num_classes,
                                   spectral_norm)
        _dcgan_init(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                strength: float = 1.0) -> torch.Tensor:
        return self.head(self.features(x), labels, strength)


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: weights N(0, 0.02), BatchNorm weights N(1, 0.02), zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d | nn.Embedding):
            nn.init.normal_(getattr(layer, "weight_orig", layer.weight), 0.0, 0.02)
            if getattr(layer, "bias", None) is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)
