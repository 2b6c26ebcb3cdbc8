"""The DCGAN model: networks, one training step and sampling.

The fit loop (:mod:`synthmed.gan.trainer`) drives it through ``make_optimizers``,
``train_step`` and ``preview`` and never knows which GAN it trains.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from synthmed.gan.config import DCGANConfig
from synthmed.gan.losses import (
    diff_augment,
    discriminator_loss,
    generator_loss,
    real_decision,
    real_score,
)
from synthmed.gan.nets import (
    DCGANDiscriminator,
    DCGANGenerator,
    TutorialDiscriminator,
    TutorialGenerator,
)


class DCGAN(nn.Module):
    """Generator, discriminator and (optionally) an EMA of the generator.

    Examples:
        >>> model = DCGAN(DCGANConfig(size=32, width=8))
        >>> model.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 32, 32])
    """

    kind = "dcgan"
    min_batch = 2  # BatchNorm needs two images

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        self.config = config
        classes = config.num_classes
        if config.preset == "tutorial":
            self.generator: nn.Module = TutorialGenerator(config.nz, classes)
            self.discriminator: nn.Module = TutorialDiscriminator(classes, config.spectral_norm)
        else:
            self.generator = DCGANGenerator(config.size, config.channels, config.nz, config.width,
                                            classes, config.upsample)
            self.discriminator = DCGANDiscriminator(config.size, config.channels, config.width,
                                                    classes, config.d_norm, config.spectral_norm,
                                                    config.minibatch_std)
        self.ema = (
            AveragedModel(self.generator, avg_fn=_ema_with_warmup(config.ema_decay),
                          use_buffers=True)
            if config.ema_decay else None
        )

    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam for G and D with their own learning rates."""
        c = self.config
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), c.lr_g, c.betas,
                                          eps=c.adam_eps),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), c.lr_d, c.betas,
                                              eps=c.adam_eps),
        }

    def train_step(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        optimizers: dict[str, torch.optim.Optimizer],
        rng: torch.Generator,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> dict[str, float]:
        """One D update then one G update on ``batch`` = (images ``(B, C, H, W)``, labels ``(B,)``).

        Fakes are drawn for the batch's own labels when conditional, so both sides see the
        same class mix. Returns the losses, D's mean scores on real and fake, and D's accuracy.
        """
        autocast = autocast or contextlib.nullcontext()
        real, labels = batch
        labels = labels if self.conditional else None
        z = torch.randn(real.shape[0], self.config.nz, generator=rng, device=real.device)
        augment = self.config.diffaugment

        def judge(images: torch.Tensor) -> torch.Tensor:
            if augment:
                images = diff_augment(images, augment, rng)
            return self.discriminator(images, labels).float()

        gamma = self.config.r1_gamma
        real = real.detach().requires_grad_(gamma > 0)
        with autocast:
            fake = self.generator(z, labels)
            d_real, d_fake = judge(real), judge(fake.detach())
        loss_d = discriminator_loss(self.config.loss, d_real, d_fake)
        if gamma > 0:  # R1: penalise D's gradient on real images (Mescheder et al. 2018)
            (gradient,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            loss_d = loss_d + gamma / 2 * gradient.float().square().sum(dim=(1, 2, 3)).mean()
        optimizers["discriminator"].zero_grad(set_to_none=True)
        loss_d.backward()
        optimizers["discriminator"].step()

        with autocast:
            d_fake_for_g = judge(fake)
        loss_g = generator_loss(self.config.loss, d_fake_for_g)
        optimizers["generator"].zero_grad(set_to_none=True)
        loss_g.backward()
        optimizers["generator"].step()
        if self.ema is not None:
            self.ema.update_parameters(self.generator)

        kind = self.config.loss
        correct = real_decision(kind, d_real).sum() + (~real_decision(kind, d_fake)).sum()
        return {
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "d_real": real_score(kind, d_real).mean().item(),
            "d_fake": real_score(kind, d_fake).mean().item(),
            "d_accuracy": correct.item() / (2 * real.shape[0]),
        }

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [-1, 1]; ``labels`` ``(n,)`` when conditional."""
        z = torch.randn(n, self.config.nz, generator=generator)
        return self.generate(z, labels, use_ema)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                 use_ema: bool = True) -> torch.Tensor:
        """Images ``(n, C, H, W)`` on the CPU for the noise ``z`` ``(n, nz)`` (and labels),
        G in eval mode on its own device."""
        if self.conditional and labels is None:
            raise ValueError("a class-conditional model needs labels to sample")
        net = self.ema.module if (use_ema and self.ema is not None) else self.generator
        device = next(net.parameters()).device
        labels = labels.to(device) if self.conditional else None
        was_training = net.training
        net.eval()
        try:
            return net(z.to(device), labels).float().clamp(-1, 1).cpu()
        finally:
            net.train(was_training)

    @torch.no_grad()
    def finish_epoch(self, seed: int, batches: int = 1, batch_size: int = 256) -> None:
        """Re-estimate G's BatchNorm statistics for sampling ("precise BN").

        G samples in eval mode, with running averages of its BatchNorm statistics; with few
        steps per epoch (small data sets) those averages lag far behind the weights and the
        samples come out washed-out. This replaces them by the statistics of ``batches`` fresh
        batches, drawn from a generator seeded with ``seed`` (training itself is unchanged).
        """
        nets = [self.generator] + ([self.ema.module] if self.ema is not None else [])
        for net in nets:
            norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            if not norms:
                continue
            device = next(net.parameters()).device
            rng = torch.Generator(device=device).manual_seed(seed)
            momenta = [norm.momentum for norm in norms]
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average over the batches below
            was_training = net.training
            net.train()
            for _ in range(batches):
                z = torch.randn(batch_size, self.config.nz, generator=rng, device=device)
                labels = (torch.randint(self.config.num_classes, (batch_size,), generator=rng,
                                        device=device) if self.conditional else None)
                net(z, labels)
            net.train(was_training)
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum

    def preview(self, n: int, seed: int) -> torch.Tensor:
        """The epoch's sample grid: ``n`` images from a fixed noise (rows of classes)."""
        rng = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.config.nz, generator=rng)
        labels = None
        if self.conditional:
            labels = torch.arange(n) * self.config.num_classes // n  # equal blocks per class
        return self.generate(z, labels)


def _ema_with_warmup(decay: float):
    """EMA update with the decay ramped up as ``min(decay, (1 + t) / (10 + t))`` over the
    ``t`` updates so far, so the untrained generator of the first steps fades out quickly."""

    def average(averaged: torch.Tensor, current: torch.Tensor,
                updates: torch.Tensor) -> torch.Tensor:
        step_decay = min(decay, (1.0 + float(updates)) / (10.0 + float(updates)))
        return step_decay * averaged + (1.0 - step_decay) * current

    return average
