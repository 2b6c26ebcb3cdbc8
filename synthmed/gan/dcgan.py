"""The DCGAN model: networks, one training step and sampling.

The fit loop (:mod:`synthmed.gan.trainer`) drives it through ``make_optimizers``,
``train_step`` and ``preview`` and never knows which GAN it trains. With
:meth:`DCGAN.make_private` its discriminator trains with differential privacy
(:mod:`synthmed.gan.dp`).

Two small-data remedies are options of :class:`DCGANConfig`: adaptive discriminator
augmentation (``ada_target``: the probability of the DiffAugment ops follows D's overfitting,
Karras et al. 2020) and transitional conditioning (``transition_steps``: unconditional first,
then the class terms ramp in, Shahbazi et al. 2022). Their state (the probability, the steps
done) are buffers of the model, so checkpoints keep them and a resumed run repeats exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from synthmed.errors import require
from synthmed.gan import distributed
from synthmed.gan.config import DCGANConfig
from synthmed.gan.losses import (
    diff_augment,
    discriminator_loss,
    generator_loss,
    real_decision,
    real_score,
)
from synthmed.gan.model import GenerativeModel, moving_average
from synthmed.gan.nets import (
    DCGANDiscriminator,
    DCGANGenerator,
    TutorialDiscriminator,
    TutorialGenerator,
)

if TYPE_CHECKING:
    from synthmed.gan.dp import PrivateDiscriminator

Judge = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class DCGAN(GenerativeModel):
    """Generator, discriminator and (optionally) an EMA of the generator.

    Examples:
        >>> model = DCGAN(DCGANConfig(size=32, width=8))
        >>> model.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 32, 32])
    """

    kind = "dcgan"
    min_batch = 2  # BatchNorm needs two images
    white_box_attack = "discriminator"
    progress_buffers = ("augment_probability", "steps_done")
    label_inputs = ("generator.project.0.weight", "ema.module.project.0.weight")

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        if config.size is None:
            raise ValueError("the DCGAN's size is not set: fit the config to its data first "
                             "(synthmed.gan.train.fit_dcgan_to_data)")
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
            moving_average(self.generator, config.ema_decay)
            if config.ema_decay else None
        )
        self.private: PrivateDiscriminator | None = None
        # only runs that use them have these buffers, so older runs' weights still load
        if config.ada_target > 0:
            self.register_buffer("augment_probability", torch.zeros((), dtype=torch.float64))
        if config.transition_steps[1] > 0:
            self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))

    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    @property
    def conditioning_strength(self) -> float:
        """How much the class terms count now, in [0, 1]: 0 before ``transition_steps``'
        start, rising linearly to 1 at its end (a switch when start is end; always 1
        without a transition)."""
        start, end = self.config.transition_steps
        if end == 0:  # no transition, and no step counter
            return 1.0
        steps = int(self.steps_done)
        if steps >= end:
            return 1.0
        return 0.0 if steps < start else (steps - start) / (end - start)

    @property
    def augment_chance(self) -> float:
        """The chance that each DiffAugment op applies to an image: ADA's p, or 1."""
        return float(self.augment_probability) if self.config.ada_target > 0 else 1.0

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """The shape of one image's noise ``(nz,)``."""
        return (self.config.nz,)

    def make_private(self, private: PrivateDiscriminator) -> None:
        """Train D with DP-SGD (:mod:`synthmed.gan.dp`): call before
        :meth:`make_optimizers`, which then wraps D's optimiser.

        Raises:
            InputError: a D that mixes the images of a batch, or that per-sample gradients
                cannot handle.
        """
        c = self.config
        batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                         for m in self.discriminator.modules())
        checks = [
            (not batch_norm, "--d-norm batch mixes the images of a batch, which differential "
                             "privacy forbids: pass --d-norm none (the default with --dp-epsilon)"),
            (not c.minibatch_std, "--minibatch-std mixes the images of a batch, which "
                                  "differential privacy forbids: leave it out with --dp-epsilon"),
            (not c.spectral_norm, "--spectral-norm does not work with per-sample gradients: "
                                  "leave it out with --dp-epsilon"),
            (c.r1_gamma == 0, "--r1 needs a double backward pass, which per-sample gradients "
                              "do not support: leave it out with --dp-epsilon"),
            (c.ada_target == 0, "--ada-target adapts to D's outputs on real images, which the "
                                "privacy accounting does not cover: leave it out with "
                                "--dp-epsilon"),
        ]
        require(checks)
        self.private = private

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam for G and D with their own learning rates; D's made private when D is."""
        c = self.config
        discriminator = torch.optim.Adam(self.discriminator.parameters(), c.lr_d, c.betas,
                                         eps=c.adam_eps)
        if self.private is not None:
            discriminator = self.private.attach(self.discriminator, discriminator)
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), c.lr_g, c.betas,
                                          eps=c.adam_eps),
            "discriminator": discriminator,
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
        same class mix; for a private D, ``batch_size`` fakes with random labels, so that
        nothing about the batch reaches G but through D. Returns the losses, D's mean scores
        on real and fake, and D's accuracy; ``loss_d`` and ``d_real`` are left out for a
        batch without images (Poisson sampling can draw one).
        """
        autocast = autocast or contextlib.nullcontext()
        real, labels = batch
        labels = labels if self.conditional else None
        fakes, fake_labels = real.shape[0], labels
        if self.private is not None:
            fakes = self.private.batch_size
            fake_labels = (torch.randint(self.config.num_classes, (fakes,), generator=rng,
                                         device=real.device) if self.conditional else None)
        z = torch.randn(fakes, self.config.nz, generator=rng, device=real.device)
        augment, chance = self.config.diffaugment, self.augment_chance
        strength = self.conditioning_strength

        def judge(images: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
            if augment:
                images = diff_augment(images, augment, rng, chance)
            return self.discriminator(images, classes, strength).float()

        with autocast:
            fake = self.generator(z, fake_labels, strength)
        discriminator_step = (self._discriminator_loss if self.private is None
                              else self._private_discriminator_loss)
        d_real, d_fake, loss_d = discriminator_step(judge, real, labels, fake.detach(),
                                                    fake_labels, autocast)
        optimizers["discriminator"].zero_grad(set_to_none=True)
        loss_d.backward()
        optimizers["discriminator"].step()

        with self.private.paused() if self.private is not None else contextlib.nullcontext():
            with autocast:
                d_fake_for_g = judge(fake, fake_labels)
            loss_g = generator_loss(self.config.loss, d_fake_for_g)
            optimizers["generator"].zero_grad(set_to_none=True)
            loss_g.backward()
            optimizers["generator"].step()
        if self.ema is not None:
            self.ema.update_parameters(self.generator)

        kind = self.config.loss
        correct = real_decision(kind, d_real).sum() + (~real_decision(kind, d_fake)).sum()
        stats = {
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "d_real": real_score(kind, d_real).mean().item(),
            "d_fake": real_score(kind, d_fake).mean().item(),
            "d_accuracy": correct.item() / (len(d_real) + len(d_fake)),
        }
        if len(d_real) == 0:
            del stats["loss_d"], stats["d_real"]
        if self.config.ada_target > 0:
            self._adapt_augmentation(real_decision(kind, d_real.detach()))
            stats["augment_p"] = chance
        if self.config.transition_steps[1] > 0:
            self.steps_done += 1
            stats["conditioning"] = strength
        return stats

    def _adapt_augmentation(self, called_real: torch.Tensor) -> None:
        """ADA's update of p from D's calls on this step's real images ``(B,)`` (of every
        process): up while ``E[sign D(real)]`` exceeds the target, down while below, by the
        batch's share of ``ada_images``."""
        counts = distributed.summed(torch.stack([called_real.sum(), torch.tensor(
            len(called_real), device=called_real.device)]).double())
        overfitting = 2.0 * counts[0] / counts[1] - 1.0  # E[sign D(real)]
        step = torch.sign(overfitting - self.config.ada_target) * counts[1] / self.config.ada_images
        self.augment_probability.copy_((self.augment_probability + step).clamp(0.0, 1.0))

    def _discriminator_loss(
        self, judge: Judge, real: torch.Tensor, labels: torch.Tensor | None,
        fake: torch.Tensor, fake_labels: torch.Tensor | None,
        autocast: contextlib.AbstractContextManager,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """D's scores on real and fake images ``(B,)`` and its loss, with the R1 penalty."""
        gamma = self.config.r1_gamma
        real = real.detach().requires_grad_(gamma > 0)
        with autocast:
            d_real, d_fake = judge(real, labels), judge(fake, fake_labels)
        loss = discriminator_loss(self.config.loss, d_real, d_fake)
        if gamma > 0:  # R1: penalise D's gradient on real images (Mescheder et al. 2018)
            (gradient,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            loss = loss + gamma / 2 * gradient.float().square().sum(dim=(1, 2, 3)).mean()
        return d_real, d_fake, loss

    def _private_discriminator_loss(
        self, judge: Judge, real: torch.Tensor, labels: torch.Tensor | None,
        fake: torch.Tensor, fake_labels: torch.Tensor | None,
        autocast: contextlib.AbstractContextManager,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same for a private D: real and fake images in one pass, so that each has its
        own per-sample gradient, and the loss's gradient that of its sum over images (its
        value stays the mean), so that no image's gradient depends on the batch size."""
        with autocast:
            scores = judge(torch.cat([real, fake]),
                           None if labels is None else torch.cat([labels, fake_labels]))
        d_real, d_fake = (_as_sum(part) for part in scores.split([len(real), len(fake)]))
        return d_real, d_fake, discriminator_loss(self.config.loss, d_real, d_fake)

    @torch.no_grad()
    def membership_scores(self, images: torch.Tensor, labels: torch.Tensor | None,
                          rng: torch.Generator) -> torch.Tensor:
        """D's logit ``(B,)`` for real images ``(B, C, H, W)``: D learnt to call its training
        images real, so members tend to score higher (``rng`` is not needed)."""
        labels = labels if self.conditional else None
        return self.discriminator(images, labels, self.conditioning_strength).float()

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
            return net(z.to(device), labels, self.conditioning_strength).float().clamp(-1, 1).cpu()
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
                net(z, labels, self.conditioning_strength)
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


def _as_sum(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` ``(n,)`` with their gradient multiplied by ``n``: a mean of them
    backpropagates as their sum."""
    count = len(scores)
    scores.register_hook(lambda grad: grad * count)
    return scores

