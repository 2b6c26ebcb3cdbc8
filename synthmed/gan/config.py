"""The configuration dataclasses of the models, of training and of differential privacy.

Each is one section of a run's ``config.yaml`` (:mod:`synthmed.gan.run_config`) and of a
``--config`` file; every field is type- and range-checked when it is made.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from synthmed.errors import require
from synthmed.gan.losses import AUGMENTS, LOSSES
from synthmed.gan.nets import SIZES, UPSAMPLES
from synthmed.limits import MAX_SEED, MAX_WIDTH
from synthmed.settings import check_fields

# Sane maxima: larger values cannot be what was meant (they exhaust memory or never finish).
MAX_NZ = 4096  # noise dimension
MAX_CLASSES = 10_000
MAX_BLOCKS = 64  # residual blocks per CycleGAN generator
MAX_D_LAYERS = 8  # strided PatchGAN layers (the smallest image is 3 * 2**d_layers px)
MAX_POOL = 10_000  # past fakes kept for the CycleGAN discriminators
MAX_CONTEXT = 8  # neighbouring slices on each side of a 2.5D translator's input
MAX_PREVIEW = 1024  # images in a sample grid


PRECISIONS = ("fp32", "bf16")


def resolve_precision(precision: str) -> str:
    """``precision``, with ``"auto"`` made ``"bf16"`` where the training device computes
    bfloat16 natively (a GPU that supports it; a CPU with AVX-512 or AMX, where bf16 autocast
    trains about 1.5x faster) and ``"fp32"`` elsewhere (on a CPU without AVX-512, bf16 is
    emulated and about 20x slower)."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        native = torch.cuda.is_bf16_supported()
    else:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "bf16" if native else "fp32"


def _between(name: str, value: int, low: int, high: int, why: str = "") -> tuple[bool, str]:
    """A check that ``value`` is in ``low .. high``, with a message naming the range."""
    return (low <= value <= high,
            f"{name} must be between {low} and {high}{why}, got {value}")


@dataclass(frozen=True)
class DCGANConfig:
    """A DCGAN: architecture, loss and optimiser.

    Args:
        preset: ``tutorial`` (the classic 28x28x1 tutorial network) or ``dcgan`` (general).
        size, channels: image side (28, 32, 64, 128, 256; ``None``: the training images'
            own) and channels (1 or 3).
        nz: noise dimension. width: channel width of G's last / D's first layer.
        num_classes: > 0 makes G and D class-conditional.
        loss: ``bce`` (non-saturating), ``hinge`` or ``lsgan``.
        d_norm: ``batch`` or ``none`` in D. spectral_norm: spectral norm on D's weights.
        minibatch_std: a minibatch standard deviation feature in D (against mode collapse).
        upsample: ``convtranspose`` or ``resize`` (+ conv; no checkerboards) in G.
        diffaugment: any of ``color``, ``translation``, ``cutout`` applied before D.
        ada_target: > 0 makes the augmentation adaptive (ADA, Karras et al. 2020): each
            diffaugment op applies to an image with a probability p, raised while D's
            overfitting measure ``E[sign D(real)]`` is above this target (0.6 in the paper)
            and lowered while below it. 0: every op on every image.
        ada_images: real images D sees while p moves by at most 1 (the adjustment speed).
        transition_steps: ``(start, end)``: a conditional model trains unconditionally until
            step ``start``, then its class conditioning ramps in linearly until ``end``
            (Shahbazi et al. 2022, against conditional collapse on small data); ``(0, 0)``:
            conditional from the first step.
        ema_decay: > 0 keeps an exponential moving average of G, used for sampling.
        r1_gamma: > 0 adds the R1 penalty ``gamma / 2 * |grad D(real)|^2`` to D's loss.
        lr_g, lr_d, betas, adam_eps: Adam settings per network.
    """

    section: ClassVar[str] = "model"

    preset: str = "dcgan"
    size: int | None = None
    channels: int = 1
    nz: int = 100
    width: int = 64
    num_classes: int = 0
    loss: str = "bce"
    d_norm: str = "batch"
    spectral_norm: bool = False
    minibatch_std: bool = False
    upsample: str = "convtranspose"
    diffaugment: tuple[str, ...] = ()
    ada_target: float = 0.0
    ada_images: int = 10_000
    transition_steps: tuple[int, int] = (0, 0)
    ema_decay: float = 0.0
    r1_gamma: float = 0.0
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        check_fields(self)
        checks = [
            (self.preset in ("tutorial", "dcgan"), f"preset must be tutorial or dcgan, "
                                                   f"got {self.preset!r}"),
            (self.size is None or self.size in SIZES,
             f"size must be one of {SIZES}, got {self.size}"),
            (self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}"),
            _between("nz", self.nz, 1, MAX_NZ),
            _between("width", self.width, 1, MAX_WIDTH,
                     " (wider networks do not fit in memory)"),
            _between("num_classes", self.num_classes, 0, MAX_CLASSES),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.d_norm in ("batch", "none"), f"d_norm must be batch or none, "
                                               f"got {self.d_norm!r}"),
            (self.upsample in UPSAMPLES,
             f"upsample must be {' or '.join(UPSAMPLES)}, got {self.upsample!r}"),
            (set(self.diffaugment) <= set(AUGMENTS),
             f"diffaugment takes {AUGMENTS}, got {self.diffaugment}"),
            (0.0 <= self.ada_target < 1.0, f"ada_target must be in [0, 1), got {self.ada_target}"),
            (self.ada_target == 0.0 or bool(self.diffaugment),
             "ada_target adapts how often the diffaugment ops apply: give them too "
             "(--diffaugment color,translation,cutout)"),
            _between("ada_images", self.ada_images, 1, 10**9),
            (0 <= self.transition_steps[0] <= self.transition_steps[1],
             f"transition_steps must be (start, end) with 0 <= start <= end, got "
             f"{self.transition_steps}"),
            (0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.r1_gamma >= 0.0, f"r1_gamma must not be negative, got {self.r1_gamma}"),
            (self.lr_g > 0.0, f"lr_g must be positive, got {self.lr_g}"),
            (self.lr_d > 0.0, f"lr_d must be positive, got {self.lr_d}"),
            _betas(self.betas),
            (self.adam_eps > 0.0, f"adam_eps must be positive, got {self.adam_eps}"),
            (self.preset != "tutorial" or not self.minibatch_std,
             "minibatch-std is an option of the dcgan preset"),
            (self.preset != "tutorial" or (self.size, self.channels) == (28, 1),
             "the tutorial preset is 28x28 with 1 channel: use --preset dcgan for other sizes"),
        ]
        require(checks)

    @classmethod
    def tutorial(cls, **overrides: Any) -> DCGANConfig:
        """The tutorial's settings: 28x28x1, noise 100, BCE, Adam 1e-4 (Keras defaults)."""
        return cls(**{**dict(preset="tutorial", size=28, channels=1, nz=100, loss="bce",
                             lr_g=1e-4, lr_d=1e-4, betas=(0.9, 0.999), adam_eps=1e-7),
                      **overrides})


@dataclass(frozen=True)
class TrainConfig:
    """The fit loop.

    Args:
        epochs: passes over the training images.
        batch_size: images per step (per process under torchrun).
        seed: seeds every random draw (noise, order, augmentation, dropout).
        precision: ``fp32`` or ``bf16`` (autocast; about 1.5x faster where the device has
            native bf16, :func:`resolve_precision`).
        checkpoint_every: epochs between checkpoints (and always at the end).
        preview: images in a sample grid (fixed noise; per class when conditional).
        preview_every: epochs between sample grids (and always at the end); a diffusion
            model's grid costs two network passes per sampling step, so sparse grids speed
            short epochs up. Training itself is the same at any cadence.
        decay_epochs: the last epochs, over which the learning rates fall linearly to 0
            (0: constant); ``None``: the model's default, fixed when the run starts (none
            for a DCGAN, the last half for a CycleGAN, as the reference).
    """

    section: ClassVar[str] = "train"

    epochs: int = 50
    batch_size: int = 64
    seed: int = 0
    precision: str = "fp32"
    checkpoint_every: int = 5
    preview: int = 16
    preview_every: int = 1
    decay_epochs: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        require([
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            _between("seed", self.seed, 0, MAX_SEED),
            (self.precision in PRECISIONS,
             f"precision must be fp32 or bf16, got {self.precision!r}"),
            (self.checkpoint_every >= 1,
             f"checkpoint_every must be at least 1, got {self.checkpoint_every}"),
            _between("preview", self.preview, 1, MAX_PREVIEW),
            (self.preview_every >= 1,
             f"preview_every must be at least 1, got {self.preview_every}"),
            (self.decay_epochs is None or 0 <= self.decay_epochs <= self.epochs,
             f"decay_epochs must be between 0 and the {self.epochs} epochs, "
             f"got {self.decay_epochs}"),
        ])

    @classmethod
    def tutorial(cls) -> TrainConfig:
        """The DCGAN tutorial's loop: batches of 256."""
        return cls(batch_size=256, checkpoint_every=15)

    @classmethod
    def cyclegan(cls) -> TrainConfig:
        """The reference CycleGAN's loop: batch 1, 200 epochs (the last 100 decaying)."""
        return cls(epochs=200, batch_size=1)

    def with_decay(self, share: float) -> TrainConfig:
        """This loop with ``decay_epochs`` fixed: ``share`` of the epochs when unset."""
        if self.decay_epochs is not None:
            return self
        return replace(self, decay_epochs=int(self.epochs * share))


@dataclass(frozen=True)
class DPConfig:
    """Differentially private training of a DCGAN's discriminator (:mod:`synthmed.gan.dp`).

    Args:
        epsilon: the target epsilon, spent by the end of the planned epochs.
        delta: the target delta; ``None``: ``min(1e-5, 1 / (10 N))`` for N training images.
        max_grad_norm: every image's gradient is clipped to this L2 norm.
    """

    section: ClassVar[str] = "privacy"

    epsilon: float
    delta: float | None = None
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self)
        require([
            (self.epsilon > 0.0, f"epsilon must be positive, got {self.epsilon}"),
            (self.delta is None or 0.0 < self.delta < 1.0,
             f"delta must be in (0, 1), got {self.delta}"),
            (self.max_grad_norm > 0.0,
             f"max_grad_norm must be positive, got {self.max_grad_norm}"),
        ])

    def delta_for(self, images: int) -> float:
        """The delta for ``images`` training images: the set one, or ``min(1e-5, 1 / (10 N))``
        (well below 1 / N, the chance of simply publishing one image)."""
        return self.delta if self.delta is not None else min(1e-5, 1.0 / (10 * images))


def _betas(betas: tuple[float, ...]) -> tuple[bool, str]:
    return (len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas),
            f"betas must be two numbers in [0, 1), got {list(betas)}")


INTENSITY_PRIORS = ("none", "matching", "inverted")
TRANSLATOR_GENERATORS = ("resnet", "unet")
PAIRED_LOSSES = ("l1", "mse")


@dataclass(frozen=True)
class CycleGANConfig:
    """A CycleGAN (Zhu et al. 2017); the defaults are the reference implementation's
    (junyanz/pytorch-CycleGAN-and-pix2pix), which trains with batch 1 for 100 epochs at a
    constant learning rate then 100 epochs of linear decay to 0 (:class:`TrainConfig`).

    Args:
        channels: 1 (native one-channel) or 3.
        generator: ``resnet`` (the CycleGAN reference's: downsampling x4, residual blocks,
            upsampling) or ``unet`` (pix2pix's: MONAI's ``UNet``, skip connections at every
            scale, :class:`~synthmed.gan.translator_nets.UnetGenerator`).
        ngf, ndf: widths of the generators' first layer and the discriminators' first layer.
        n_blocks: residual blocks per ResNet generator; 0 picks the reference's 9 for training crops
            above 128 px and 6 otherwise (:meth:`blocks`).
        d_layers: strided layers of the PatchGAN discriminator (3: 70x70 patches).
        norm: ``instance`` or ``batch`` normalisation in all networks.
        upsample: the generators' upsampling, ``convtranspose`` (reference) or ``resize``
            (nearest x2 + conv, without checkerboard artefacts).
        lambda_cycle: weight of each direction's L1 cycle-consistency loss.
        lambda_identity: weight of the identity loss, as a fraction of ``lambda_cycle``
            (0.5 x 10 = 5); 0 skips it.
        lambda_structure: weight of each direction's structure loss, 1 - the mean squared
            local normalised cross-correlation (MONAI's LNCC, 9 px windows) between a
            generator's input and output. Squared, so it is blind to the sign of the
            contrast: an inverted map (T1 -> T2) costs nothing, but texture that the input
            does not have, or contrast that flips inside a window, does (the cycle's hidden
            codes). 0 skips it, as the reference.
        intensity_prior: ``none`` (reference), ``matching`` or ``inverted``: each generator
            corrects a fixed histogram-matching map from its source domain's training
            foreground quantiles to its target's (``inverted``: a decreasing map, as for
            T1 <-> T2 brain MR, whose tissue contrasts are largely reversed) instead of
            drawing the whole image; it starts as that map. Use with ``lambda_identity`` 0:
            the identity loss asks for the opposite of an inverted map.
        pool_size: past fakes kept to show the discriminators (0: only the newest).
        lr, betas: Adam settings, the same for generators and discriminators.
        crop: side of the random square training crops, a multiple of 4 (0: whole images;
            ``None``: 7/8 of the smaller image side, like the reference's 256 of 286).
        flip: random horizontal flips of the training images.
        standardize: match each subject's foreground histogram to its domain's pooled one
            before training and translation (Nyúl-style histogram standardisation), so a
            scanner that spreads the same tissues differently over [-1, 1] is not mistaken
            for different anatomy.
        init_gain: standard deviation of the N(0, init_gain) initial weights.
        paired: pix2pix (Isola et al. 2017) on co-registered pairs instead of a CycleGAN:
            each generator learns its direction from the subject's own slice in the other
            contrast (L1, ``lambda_l1``) and a conditional PatchGAN that judges (input,
            output) stacks; no cycle, identity or pool. Both directions are trained.
        lambda_l1: weight of the paired pixel loss (pix2pix: 100; named for its L1).
        paired_loss: the paired pixel loss, ``l1`` (pix2pix; the conditional median) or
            ``mse`` (the conditional mean).
        lambda_gan: weight of each generator's adversarial term (1: the references). Paired,
            0 trains a regression translator without discriminators: smoother images, closer
            to the truth on subjects it has not seen (README).
        context: neighbouring slices on each side given to the generators with each slice
            (2.5D): they take and make ``2 * context + 1`` slices as channels, and
            translation keeps the centre one. 0: single slices.
        intensity_augment: bias field, gamma and noise (MONAI, :func:`~synthmed.augment.
            augmentation.mri_augment`) on the generators' inputs, never on their targets, so a
            translator learns to ignore what another scanner does to intensities.
        spatial_augment: a random rotation (±10°), scale (0.9-1.1) and shift (±6 %) of each
            whole slice before the crop (:func:`~synthmed.augment.augmentation.random_affine`),
            the same for a pair's two contrasts, so a few training subjects stand for more
            head positions and sizes.
    """

    section: ClassVar[str] = "model"

    channels: int = 1
    generator: str = "resnet"
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 0
    d_layers: int = 3
    norm: str = "instance"
    upsample: str = "convtranspose"
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    lambda_structure: float = 0.0
    intensity_prior: str = "none"
    pool_size: int = 50
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    crop: int | None = None
    flip: bool = True
    standardize: bool = True
    init_gain: float = 0.02
    paired: bool = False
    lambda_l1: float = 100.0
    paired_loss: str = "l1"
    lambda_gan: float = 1.0
    context: int = 0
    intensity_augment: bool = False
    spatial_augment: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        require([
            (self.ngf >= 1 and self.ndf >= 1,
             f"ngf and ndf must be positive, got {self.ngf} and {self.ndf}"),
            _between("ngf", self.ngf, 1, MAX_WIDTH, " (wider networks do not fit in memory)"),
            _between("ndf", self.ndf, 1, MAX_WIDTH, " (wider networks do not fit in memory)"),
            (self.n_blocks >= 0, f"n_blocks must be 0 (auto) or positive, got {self.n_blocks}"),
            _between("n_blocks", self.n_blocks, 0, MAX_BLOCKS),
            (self.d_layers >= 1, f"d_layers must be positive, got {self.d_layers}"),
            _between("d_layers", self.d_layers, 1, MAX_D_LAYERS),
        ])
        smallest = self.min_size
        checks = [
            (self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}"),
            (self.generator in TRANSLATOR_GENERATORS,
             f"generator must be one of {', '.join(TRANSLATOR_GENERATORS)}, "
             f"got {self.generator!r}"),
            (self.norm in ("instance", "batch"),
             f"norm must be instance or batch, got {self.norm!r}"),
            (self.upsample in UPSAMPLES,
             f"upsample must be {' or '.join(UPSAMPLES)}, got {self.upsample!r}"),
            (min(self.lambda_cycle, self.lambda_identity, self.lambda_structure) >= 0.0,
             f"lambda_cycle, lambda_identity and lambda_structure must not be negative, got "
             f"{self.lambda_cycle}, {self.lambda_identity} and {self.lambda_structure}"),
            (self.intensity_prior in INTENSITY_PRIORS,
             f"intensity_prior must be one of {', '.join(INTENSITY_PRIORS)}, "
             f"got {self.intensity_prior!r}"),
            (self.pool_size >= 0, f"pool_size must not be negative, got {self.pool_size}"),
            _between("pool_size", self.pool_size, 0, MAX_POOL),
            (self.lr > 0.0, f"lr must be positive, got {self.lr}"),
            _betas(self.betas),
            (self.crop is None or (self.crop >= 0 and self.crop % 4 == 0),
             f"crop must be 0 (whole images) or a multiple of 4, got {self.crop}"),
            (not self.crop or self.crop >= smallest,
             f"crop must be at least {smallest} px for a {self.d_layers}-layer PatchGAN, "
             f"got {self.crop}"),
            (self.init_gain > 0.0, f"init_gain must be positive, got {self.init_gain}"),
            (self.lambda_l1 >= 0.0, f"lambda_l1 must not be negative, got {self.lambda_l1}"),
            (self.paired_loss in PAIRED_LOSSES,
             f"paired_loss must be one of {', '.join(PAIRED_LOSSES)}, got {self.paired_loss!r}"),
            (self.lambda_gan >= 0.0, f"lambda_gan must not be negative, got {self.lambda_gan}"),
            (self.lambda_gan > 0.0 or self.paired, "lambda_gan 0 needs paired training: a "
             "CycleGAN learns its target domain only from its discriminators"),
            _between("context", self.context, 0, MAX_CONTEXT),
        ]
        require(checks)

    @property
    def stack_channels(self) -> int:
        """Channels the generators take and make: ``channels`` per slice of the 2.5D stack."""
        return self.channels * (2 * self.context + 1)

    @property
    def min_size(self) -> int:
        """The smallest image side the discriminator takes (24 px for 3 layers): its map
        must keep at least one pixel after ``d_layers`` halvings and two 4x4 convolutions."""
        return 3 * 2 ** self.d_layers

    def blocks(self, size: int | None) -> int:
        """Residual blocks for training images of side ``size``: ``n_blocks`` when set, else
        9 above 128 px and 6 up to 128 px or for an unknown size (the reference's choice for
        256 and 128 px)."""
        if self.n_blocks:
            return self.n_blocks
        return 9 if size is not None and size > 128 else 6


DIFFUSION_SCHEDULES = ("linear_beta", "scaled_linear_beta", "cosine")
MAX_TIMESTEPS = 10_000


@dataclass(frozen=True)
class DiffusionConfig:
    """A denoising diffusion model (DDPM training, DDIM sampling) from MONAI's parts, with
    classifier-free guidance when class-conditional (Ho & Salimans 2022).

    Args:
        size, channels: image side (``None``: the training images'; a multiple of
            ``2 ** (len(widths) - 1)``) and channels (1 or 3).
        num_classes: > 0 makes the model class-conditional.
        widths: channels of the U-Net's levels (each divisible by ``norm_groups``).
        attention: self-attention at each level (as many as ``widths``).
        res_blocks: residual blocks per level.
        norm_groups: groups of the GroupNorm layers.
        timesteps: noise levels of training (``schedule``: the betas over them).
        label_dropout: share of training images shown without their label, so the same
            network also predicts unconditionally (what the guidance extrapolates from).
        guidance: classifier-free guidance scale at sampling (1: none; only when
            conditional).
        sampling_steps: DDIM steps per sample (deterministic, eta 0).
        lr: AdamW learning rate. ema_decay: > 0 keeps an exponential moving average of the
            network, used for sampling.
    """

    section: ClassVar[str] = "model"

    size: int | None = None
    channels: int = 1
    num_classes: int = 0
    widths: tuple[int, ...] = (32, 64, 64)
    attention: tuple[bool, ...] = (False, False, True)
    res_blocks: int = 1
    norm_groups: int = 8
    timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    label_dropout: float = 0.1
    guidance: float = 2.0
    sampling_steps: int = 50
    lr: float = 2e-4
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        check_fields(self)
        require([
            (self.size is None or self.size % self.multiple == 0,
             f"size must be a multiple of {self.multiple} for {len(self.widths)} U-Net "
             f"levels, got {self.size}"),
            (self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}"),
            _between("num_classes", self.num_classes, 0, MAX_CLASSES),
            (1 <= len(self.widths) <= 6, f"widths must list 1 to 6 levels, got {self.widths}"),
            (all(1 <= w <= MAX_WIDTH and w % self.norm_groups == 0 for w in self.widths),
             f"widths must be between 1 and {MAX_WIDTH} and divisible by norm_groups "
             f"{self.norm_groups}, got {list(self.widths)}"),
            (len(self.attention) == len(self.widths),
             f"attention must have one entry per level ({len(self.widths)}), got "
             f"{list(self.attention)}"),
            _between("res_blocks", self.res_blocks, 1, 8),
            (self.norm_groups >= 1, f"norm_groups must be positive, got {self.norm_groups}"),
            _between("timesteps", self.timesteps, 2, MAX_TIMESTEPS),
            (self.schedule in DIFFUSION_SCHEDULES,
             f"schedule must be one of {', '.join(DIFFUSION_SCHEDULES)}, got {self.schedule!r}"),
            (0.0 <= self.label_dropout < 1.0,
             f"label_dropout must be in [0, 1), got {self.label_dropout}"),
            (self.guidance >= 0.0, f"guidance must not be negative, got {self.guidance}"),
            _between("sampling_steps", self.sampling_steps, 1, self.timesteps),
            (self.lr > 0.0, f"lr must be positive, got {self.lr}"),
            (0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
        ])

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this: each level below the first halves them."""
        return 2 ** (len(self.widths) - 1)
