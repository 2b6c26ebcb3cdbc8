"""A class-conditional denoising diffusion model from MONAI's parts: ``DiffusionModelUNet``
predicts the noise of an image at a noise level (DDPM training, Ho et al. 2020) and
``DDIMScheduler`` turns noise into images in a few deterministic steps (Song et al. 2021).

Classifier-free guidance (Ho & Salimans 2022): during training a share of the images is
shown with the extra "no label" class, so one network predicts both conditionally and
unconditionally; sampling extrapolates from the unconditional prediction towards the
conditional one by the guidance scale.

Like the DCGAN it is a :class:`~synthmed.gan.model.GenerativeModel` for the fit loop and a
sampler for ``generate``: ``noise_shape`` is what one image's noise looks like, and
``generate(noise, labels)`` the images that noise becomes, so the same seeded blocks give
the same images.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from synthmed.gan.config import DiffusionConfig
from synthmed.gan.model import GenerativeModel, moving_average


class DiffusionModel(GenerativeModel):
    """The noise-predicting U-Net and (optionally) its exponential moving average.

    Examples:
        >>> config = DiffusionConfig(size=8, widths=(8, 8), attention=(False, False),
        ...                          norm_groups=8, sampling_steps=2)
        >>> model = DiffusionModel(config)
        >>> model.sample(2, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 8, 8])
    """

    kind = "diffusion"
    min_batch = 1
    white_box_attack = "denoising"
    #: the noise levels of the membership attack, as shares of ``timesteps``: low levels,
    #: where a model that memorised its images predicts their noise best (Carlini et al. 2023)
    ATTACK_LEVELS = (0.025, 0.05, 0.1, 0.2)

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        if config.size is None:
            raise ValueError("the diffusion model's size is not set: fit the config to its "
                             "data first (synthmed.gan.train.fit_diffusion_to_data)")
        self.config = config
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=config.channels, out_channels=config.channels,
            num_res_blocks=config.res_blocks, channels=config.widths,
            attention_levels=config.attention, norm_num_groups=config.norm_groups,
            num_head_channels=config.widths[-1],
            # one more class than the data's: "no label", for classifier-free guidance
            num_class_embeds=config.num_classes + 1 if config.num_classes else None)
        self.ema = moving_average(self.unet, config.ema_decay) if config.ema_decay else None
        self.noise_schedule = DDPMScheduler(config.timesteps, schedule=config.schedule)
        # generate --sampling-steps and --guidance may change these
        self.sampling_steps, self.guidance = config.sampling_steps, config.guidance

    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """The shape of one image's starting noise ``(C, H, W)``."""
        c = self.config
        return (c.channels, c.size, c.size)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"unet": torch.optim.AdamW(self.unet.parameters(), self.config.lr)}

    def train_step(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        optimizers: dict[str, torch.optim.Optimizer],
        rng: torch.Generator,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> dict[str, float]:
        """Noise each image ``(B, C, H, W)`` to a random level and learn to predict the noise
        (mean squared error); a ``label_dropout`` share of the labels becomes "no label"."""
        images, labels = batch
        device = images.device
        t = torch.randint(0, self.config.timesteps, (len(images),), generator=rng,
                          device=device)
        noise = torch.randn(images.shape, generator=rng, device=device)
        noisy = self.noise_schedule.add_noise(images, noise, t)
        classes = None
        if self.conditional:
            dropped = torch.rand(len(images), generator=rng, device=device) \
                < self.config.label_dropout
            classes = torch.where(dropped, self.config.num_classes, labels)
        with autocast or contextlib.nullcontext():
            predicted = self.unet(noisy, t, class_labels=classes)
        loss = F.mse_loss(predicted.float(), noise)
        optimizer = optimizers["unet"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.unet)
        return {"loss": loss.item()}

    @torch.no_grad()
    def membership_scores(self, images: torch.Tensor, labels: torch.Tensor | None,
                          rng: torch.Generator) -> torch.Tensor:
        """Minus the denoising error ``(B,)`` of real images ``(B, C, H, W)``: the mean squared
        error of the sampling network's noise prediction at the ``ATTACK_LEVELS``, with
        fresh noise from ``rng`` (a training image's noise is predicted better)."""
        net = self.ema.module if self.ema is not None else self.unet
        device = next(net.parameters()).device
        images = images.to(device)
        classes = labels.to(device) if self.conditional else None
        was_training = net.training
        net.eval()
        error = torch.zeros(len(images), device=device)
        try:
            for level in self.ATTACK_LEVELS:
                t = torch.full((len(images),), round(level * self.config.timesteps),
                               device=device)
                noise = torch.randn(images.shape, generator=rng, device=device)
                predicted = net(self.noise_schedule.add_noise(images, noise, t), t,
                                class_labels=classes)
                error += (predicted.float() - noise).square().mean(dim=(1, 2, 3))
        finally:
            net.train(was_training)
        return -(error / len(self.ATTACK_LEVELS)).cpu()

    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [-1, 1]; ``labels`` ``(n,)`` when conditional."""
        return self.generate(torch.randn(n, *self.noise_shape, generator=generator), labels)

    @torch.no_grad()
    def generate(self, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The images ``(n, C, H, W)`` on the CPU that DDIM (eta 0: no further randomness)
        makes of ``noise`` ``(n, C, H, W)`` in ``self.sampling_steps`` steps."""
        if self.conditional and labels is None:
            raise ValueError("a class-conditional model needs labels to sample")
        net = self.ema.module if self.ema is not None else self.unet
        device = next(net.parameters()).device
        scheduler = DDIMScheduler(self.config.timesteps, schedule=self.config.schedule)
        scheduler.set_timesteps(self.sampling_steps)
        x = noise.to(device)
        labels = labels.to(device) if self.conditional else None
        was_training = net.training
        net.eval()
        try:
            for t in scheduler.timesteps:
                x, _ = scheduler.step(self._guided_noise(net, x, t, labels), t, x)
        finally:
            net.train(was_training)
        return x.float().clamp(-1, 1).cpu()

    def _guided_noise(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                      labels: torch.Tensor | None) -> torch.Tensor:
        """The predicted noise of ``x`` at level ``t``; with labels, guided: the unconditional
        prediction moved ``guidance`` times the way the label moves it."""
        steps = t.to(x.device).expand(len(x))
        if labels is None:
            return net(x, steps)
        guidance = self.guidance
        if guidance == 1.0:
            return net(x, steps, class_labels=labels)
        unlabelled = torch.full_like(labels, self.config.num_classes)
        both = net(torch.cat([x, x]), torch.cat([steps, steps]),
                   class_labels=torch.cat([labels, unlabelled]))
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    def preview(self, n: int, seed: int) -> torch.Tensor:
        """The epoch's sample grid: ``n`` images from a fixed noise (rows of classes)."""
        rng = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) * self.config.num_classes // n if self.conditional else None
        return self.sample(n, labels, rng)
