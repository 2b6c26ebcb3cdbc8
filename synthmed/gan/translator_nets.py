"""The translators' networks and their parts, as the reference implementation
(junyanz/pytorch-CycleGAN-and-pix2pix) builds them: ResNet generators with reflection padding
or U-Net generators (MONAI's ``UNet``), either optionally correcting a fixed intensity map
(:class:`QuantileMap`), 70x70 PatchGAN discriminators (MONAI's ``PatchDiscriminator``), the
reference's weight init and its pool of past fakes (:class:`ImagePool`, with explicit random
draws and a saved state).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import PatchDiscriminator, UNet
from torch import nn

from synthmed.augment.intensity import FOREGROUND_FLOOR
from synthmed.gan.config import CycleGANConfig
from synthmed.gan.nets import UPSAMPLES

PRIOR_LEVELS = 101  # quantile levels of the prior's tables (foreground_quantiles' default)
PRIOR_BOUND = 0.999  # the prior's values are kept inside (-1, 1) for atanh
UNET_DOWNSAMPLINGS = 5  # a 96 px crop reaches a 3x3 bottleneck, a 256 px slice an 8x8 one


def _norm(kind: str, width: int) -> nn.Module:
    """The reference's norm layers: instance norm without affine or running statistics."""
    if kind == "instance":
        return nn.InstanceNorm2d(width, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    raise ValueError(f"norm must be instance or batch, got {kind!r}")


class ResnetBlock(nn.Module):
    """``x + block(x)`` with two reflection-padded 3x3 convolutions: ``(B, C, H, W)`` kept."""

    def __init__(self, width: int, norm: str) -> None:
        super().__init__()
        bias = norm == "instance"  # batch norm has its own shift
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=bias),
            _norm(norm, width),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=bias),
            _norm(norm, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class QuantileMap(nn.Module):
    """A fixed monotone intensity map between two domains: model-space foreground pixels
    ``(B, C, H, W)`` at quantile level p of the source domain go to the target domain's
    quantile at level p (``invert``: at level 1 - p, a decreasing map), piecewise linearly;
    background pixels (at or below :data:`FOREGROUND_FLOOR`) stay -1. Differentiable in its
    input. Unpaired histogram matching, the rule of
    :func:`~synthmed.augment.intensity.match_histogram`: source levels that repeat a value
    map to the mean of the target quantiles at those levels.

    The tables are the buffers ``source`` and ``target`` ``(levels,)``, saved with the model;
    :meth:`set_tables` fills them.
    """

    def __init__(self, levels: int = PRIOR_LEVELS, invert: bool = False) -> None:
        super().__init__()
        self.invert = invert
        self.register_buffer("source", torch.linspace(-1.0, 1.0, levels))
        self.register_buffer("target", torch.linspace(-1.0, 1.0, levels))

    def set_tables(self, source: Sequence[float], target: Sequence[float]) -> None:
        """Quantiles ``(levels,)`` of each domain's foreground at ``linspace(0, 1, levels)``."""
        self.source.copy_(torch.as_tensor(source, dtype=torch.float32))
        self.target.copy_(torch.as_tensor(target, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        target = self.target.flip(0) if self.invert else self.target
        knots, tied = torch.unique(self.source, return_inverse=True)  # increasing
        values = torch.zeros_like(knots).index_add_(0, tied, target)
        values = values / torch.bincount(tied, minlength=len(knots)).to(values)
        if len(knots) == 1:
            mapped = values.expand_as(x)
        else:
            inside = x.float().clamp(knots[0], knots[-1])
            upper = torch.searchsorted(knots, inside.detach()).clamp(1, len(knots) - 1)
            x0, x1, y0, y1 = knots[upper - 1], knots[upper], values[upper - 1], values[upper]
            mapped = y0 + (y1 - y0) * (inside - x0) / (x1 - x0)
        return torch.where(x > FOREGROUND_FLOOR, mapped, torch.full_like(mapped, -1.0))


class TranslatorGenerator(nn.Module):
    """What both generator architectures share: images ``(B, channels, H, W)`` -> images of
    the same shape in [-1, 1], ``tanh(correction(x))``.

    With a ``prior`` map the network learns a correction to it rather than the whole image:
    ``tanh(atanh(prior(x)) + correction(x))``, and :meth:`zero_last_layer` starts the
    correction at zero, so the untrained generator is exactly the prior (e.g. inverted
    histogram matching for T1 -> T2) and training spends itself on what a global intensity
    map cannot do. Subclasses set ``model``, the network that makes the correction.
    """

    model: nn.Module

    def __init__(self, prior: QuantileMap | None) -> None:
        super().__init__()
        self.prior = prior

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output ``(B, channels, H, W)`` before the tanh."""
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prior is None:
            return torch.tanh(self.correction(x))
        start = self.prior(x).clamp(-PRIOR_BOUND, PRIOR_BOUND)
        return torch.tanh(torch.atanh(start) + self.correction(x))

    def zero_last_layer(self) -> None:
        """Start the correction at zero (with a prior: the generator starts as the prior)."""
        convolutions = [layer for layer in self.model.modules()
                        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d)]
        nn.init.zeros_(convolutions[-1].weight)
        nn.init.zeros_(convolutions[-1].bias)


class ResnetGenerator(TranslatorGenerator):
    """The CycleGAN reference's generator; H and W must be multiples of 4 and at least 8 (two
    stride-2 downsamplings, then reflection padding).

    Args:
        channels: image channels, in and out.
        ngf: width of the first layer; 2x and 4x after each downsampling.
        n_blocks: residual blocks at 1/4 resolution (reference: 9 for 256 px, 6 for 128).
        norm: ``instance`` (reference) or ``batch``.
        upsample: ``convtranspose`` (reference) or ``resize`` (nearest-neighbour x2, then a
            3x3 convolution: no checkerboard artefacts).
        prior: a fixed intensity map the output corrects (``None``: the reference's plain
            ``tanh(net(x))``).

    Examples:
        >>> ResnetGenerator(1, ngf=8, n_blocks=2)(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(self, channels: int, ngf: int, n_blocks: int = 9,
                 norm: str = CycleGANConfig.norm, upsample: str = CycleGANConfig.upsample,
                 prior: QuantileMap | None = None) -> None:
        super().__init__(prior)
        bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, ngf, 7, bias=bias),  # (B, ngf, H, W)
            _norm(norm, ngf),
            nn.ReLU(),
        ]
        for mult in (1, 2):  # (B, 2 ngf, H/2, W/2), (B, 4 ngf, H/4, W/4)
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                       _norm(norm, ngf * mult * 2), nn.ReLU()]
        layers += [ResnetBlock(ngf * 4, norm) for _ in range(n_blocks)]
        for mult in (4, 2):  # (B, 2 ngf, H/2, W/2), (B, ngf, H, W)
            if upsample == "resize":
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(ngf * mult, ngf * mult // 2, 3, padding=1, bias=bias)]
            else:
                layers.append(nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2,
                                                 padding=1, output_padding=1, bias=bias))
            layers += [_norm(norm, ngf * mult // 2), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, channels, 7)]  # (B, channels, H, W)
        self.model = nn.Sequential(*layers)


class UnetGenerator(TranslatorGenerator):
    """pix2pix's generator family (Isola et al. 2017), MONAI's ``UNet``: an encoder of
    :data:`UNET_DOWNSAMPLINGS` stride-2 3x3 convolutions, widths ``ngf`` doubling up to
    ``8 ngf``, a decoder of transposed convolutions (or, with ``upsample="resize"``,
    nearest-neighbour x2 then a 3x3 convolution: :class:`ResizeUpUNet`), and a skip connection
    at every scale, so the output keeps the input's anatomy to the pixel. Norm and LeakyReLU
    0.2 after every convolution but the last; no dropout.

    Any H and W: the input is padded at the bottom and right to multiples of
    ``2 ** UNET_DOWNSAMPLINGS`` (at least two of them, so instance norm sees more than one
    pixel at the bottleneck), by reflection where the image is large enough, and the output
    is cropped back.

    Args:
        channels: image channels, in and out. ngf: width of the first layer.
        norm: ``instance`` or ``batch``. upsample: ``convtranspose`` or ``resize``.
        prior: as for :class:`ResnetGenerator`.

    Examples:
        >>> UnetGenerator(1, ngf=4)(torch.randn(2, 1, 30, 45)).shape
        torch.Size([2, 1, 30, 45])
    """

    def __init__(self, channels: int, ngf: int, norm: str = CycleGANConfig.norm,
                 upsample: str = CycleGANConfig.upsample,
                 prior: QuantileMap | None = None) -> None:
        super().__init__(prior)
        if norm not in ("instance", "batch"):
            raise ValueError(f"norm must be instance or batch, got {norm!r}")
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be {' or '.join(UPSAMPLES)}, got {upsample!r}")
        widths = tuple(ngf * min(2 ** level, 8) for level in range(UNET_DOWNSAMPLINGS + 1))
        self.model = (ResizeUpUNet if upsample == "resize" else UNet)(
            spatial_dims=2, in_channels=channels, out_channels=channels, channels=widths,
            strides=(2,) * UNET_DOWNSAMPLINGS, num_res_units=0, norm=norm.upper(),
            act=("LEAKYRELU", {"negative_slope": 0.2}),
        )

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        multiple = 2 ** UNET_DOWNSAMPLINGS
        padded = pad_to_multiple(x, multiple, smallest=2 * multiple)
        return self.model(padded)[..., :x.shape[-2], :x.shape[-1]]


class ResizeUpUNet(UNet):
    """MONAI's ``UNet`` whose decoder upsamples by resize-convolution (Odena et al. 2016):
    nearest-neighbour x2, then a 3x3 convolution with the same norm and activation, instead of
    a transposed convolution whose uneven kernel overlap paints a checkerboard."""

    def _get_up_layer(self, in_channels: int, out_channels: int, strides: int,
                      is_top: bool) -> nn.Module:
        return nn.Sequential(
            nn.Upsample(scale_factor=strides, mode="nearest"),
            Convolution(self.dimensions, in_channels, out_channels, strides=1,
                        kernel_size=self.up_kernel_size, act=self.act, norm=self.norm,
                        dropout=self.dropout, bias=self.bias, adn_ordering=self.adn_ordering,
                        conv_only=is_top and self.num_res_units == 0),
        )


def pad_to_multiple(images: torch.Tensor, multiple: int, smallest: int) -> torch.Tensor:
    """Images ``(B, C, H, W)`` padded at the bottom and right to sides that are multiples of
    ``multiple`` and at least ``smallest``: by reflection, or by repeating the edge where an
    image is too small to reflect. Crop the result back with ``[..., :H, :W]``."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (max(smallest, -(-side // multiple) * multiple) - side
                    for side in (height, width))
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)


class PatchGAN(nn.Module):
    """Images ``(B, channels, H, W)`` -> a map of real/fake scores ``(B, 1, h, w)``, one per
    overlapping patch (70x70 for 3 layers; 256 px -> 30x30, 128 px -> 14x14).

    MONAI's ``PatchDiscriminator`` with these arguments is the reference's ``NLayer``
    discriminator: a 4x4 stride-2 convolution to ``ndf`` with LeakyReLU 0.2 and no norm,
    ``layers - 1`` more stride-2 ones doubling the width, one stride-1 one doubling it again
    (conv, norm, LeakyReLU each), then a 4x4 stride-1 convolution to one channel; biases only
    where the reference has them. One difference: above 3 layers MONAI keeps doubling the
    width, where the reference stops at 8 x ndf.

    Args:
        channels: image channels. ndf: width of the first layer.
        layers: stride-2 convolutions (3: 70x70 patches). norm: ``instance`` or ``batch``.
    """

    def __init__(self, channels: int, ndf: int, layers: int = CycleGANConfig.d_layers,
                 norm: str = CycleGANConfig.norm) -> None:
        super().__init__()
        if norm not in ("instance", "batch"):
            raise ValueError(f"norm must be instance or batch, got {norm!r}")
        self.net = PatchDiscriminator(
            spatial_dims=2, channels=ndf, in_channels=channels, out_channels=1,
            num_layers_d=layers, kernel_size=4, activation=("LEAKYRELU", {"negative_slope": 0.2}),
            norm=norm.upper(),  # MONAI's instance norm is the reference's (no affine)
            bias=norm == "instance", padding=1, last_conv_kernel_size=4,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]  # MONAI returns every layer's output; the last is the map


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """The reference's ``normal`` init: convolution weights N(0, gain), affine norm weights
    N(1, gain), biases 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.modules.batchnorm._NormBase) and layer.affine:
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)


class ImagePool(nn.Module):
    """The reference's history of past fakes (Shrivastava et al. 2017), which the
    discriminators see instead of only the newest fakes.

    Until ``size`` images are stored, each new image is stored and returned; after that each
    is, with probability 1/2, swapped for a random stored one (which is returned), else
    returned itself. ``size`` 0 returns the input. The stored images are the buffer
    ``images`` ``(size, C, H, W)`` (allocated on the first query; ``(0,)`` before) and their
    number the buffer ``count``, so the pool is saved and restored with the model.

    Args:
        size: images to keep (reference: 50).
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros(0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def query(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Images ``(B, C, H, W)`` for the discriminator, as many as given, drawn with ``rng``
        (never torch's global generator). All images must share one shape ``(C, H, W)``."""
        if self.size == 0:
            return images
        images = images.detach()
        if self.images.dim() == 1:
            self.images = torch.zeros(self.size, *images.shape[1:], dtype=self.images.dtype,
                                      device=images.device)
        elif self.images.shape[1:] != images.shape[1:]:
            raise ValueError(f"the image pool holds images of shape {tuple(self.images.shape[1:])}"
                             f", got {tuple(images.shape[1:])}: train on one image size or crop")
        returned = []
        for image in images:
            count = int(self.count)
            if count < self.size:
                self.images[count] = image
                self.count += 1
                returned.append(image)
            elif torch.rand((), generator=rng, device=rng.device).item() > 0.5:
                k = int(torch.randint(self.size, (), generator=rng, device=rng.device))
                returned.append(self.images[k].to(image.dtype, copy=True))
                self.images[k] = image
            else:
                returned.append(image)
        return torch.stack(returned)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        stored = state_dict.get(prefix + "images")
        if stored is not None and stored.shape[:1] in ((0,), (self.size,)):
            # take the stored shape (a fresh pool is empty); other sizes fail in the load
            self.images = torch.zeros(stored.shape, dtype=self.images.dtype,
                                      device=self.images.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
