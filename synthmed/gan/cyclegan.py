"""CycleGAN (Zhu et al. 2017): unpaired translation between two imaging domains A and B;
with ``paired``, pix2pix (Isola et al. 2017) on co-registered pairs.

As the reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix): ResNet generators
with reflection padding, 70x70 PatchGAN discriminators (:mod:`synthmed.gan.translator_nets`),
least-squares GAN losses, L1 cycle and identity losses, and a pool of past fakes for the
discriminators. The fit loop (:mod:`synthmed.gan.trainer`) drives it through
``make_optimizers``, ``train_step`` and ``preview``; ``translate`` maps images of any size.

Unlike the reference, every random draw (the image pool's) comes from an explicit generator
and the pool is part of the ``state_dict``, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import LocalNormalizedCrossCorrelationLoss

from synthmed.gan.config import CycleGANConfig
from synthmed.gan.model import GenerativeModel
from synthmed.gan.translator_nets import (
    PRIOR_LEVELS,
    ImagePool,
    PatchGAN,
    QuantileMap,
    ResnetGenerator,
    TranslatorGenerator,
    UnetGenerator,
    init_weights,
    pad_to_multiple,
)

DIRECTIONS = ("a2b", "b2a")
TRANSLATE_BATCH = 8  # images per forward pass when translating, unless told otherwise


class CycleGAN(GenerativeModel):
    """Two generators (A -> B, B -> A), a PatchGAN per domain and a pool of fakes per domain;
    with ``config.paired``, two pix2pix translators (Isola et al. 2017) on co-registered pairs.

    ``discriminator_a`` judges domain A images (real A against fakes from B; paired: each
    stacked on the B image it was made from), ``pool_a`` holds fakes of A. The generators are
    ``config.generator``'s: ResNet (the reference's) or U-Net (pix2pix's). Residual blocks:
    ``config.blocks(config.crop)``, i.e. 9 for crops above 128 px and 6 otherwise; when
    training on whole images larger than 128 px, set ``n_blocks`` (``config.blocks(size)``) to
    get the reference's 9. With ``config.context`` every network takes stacks of
    ``config.stack_channels`` channels (2.5D: neighbouring slices).

    Examples:
        >>> model = CycleGAN(CycleGANConfig(ngf=4, ndf=4, n_blocks=1))
        >>> model.translate(torch.zeros(2, 1, 30, 45), "a2b").shape
        torch.Size([2, 1, 30, 45])
    """

    kind = "cyclegan"
    min_batch = 1  # the reference trains with batch 1

    def __init__(self, config: CycleGANConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        judged = c.stack_channels * (2 if c.paired else 1)  # paired: (input, output) stacks
        self.generator_ab, self.generator_ba = (self._generator() for _ in DIRECTIONS)
        self.discriminator_a = PatchGAN(judged, c.ndf, c.d_layers, c.norm)
        self.discriminator_b = PatchGAN(judged, c.ndf, c.d_layers, c.norm)
        for net in (self.generator_ab, self.generator_ba, self.discriminator_a,
                    self.discriminator_b):
            init_weights(net, c.init_gain)
        if c.intensity_prior != "none":
            self.generator_ab.zero_last_layer()
            self.generator_ba.zero_last_layer()
        self.local_ncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=9)
        self.pool_a = ImagePool(0 if c.paired else c.pool_size)
        self.pool_b = ImagePool(0 if c.paired else c.pool_size)

    def _generator(self) -> TranslatorGenerator:
        c = self.config
        if c.generator == "unet":
            return UnetGenerator(c.stack_channels, c.ngf, c.norm, c.upsample, self._prior())
        return ResnetGenerator(c.stack_channels, c.ngf, c.blocks(c.crop), c.norm, c.upsample,
                               self._prior())

    def _prior(self) -> QuantileMap | None:
        if self.config.intensity_prior == "none":
            return None
        return QuantileMap(PRIOR_LEVELS, invert=self.config.intensity_prior == "inverted")

    def set_intensity_prior(self, quantiles_a: Sequence[float],
                            quantiles_b: Sequence[float]) -> None:
        """Give the generators' prior maps the domains' foreground quantiles ``(101,)`` each
        (:func:`~synthmed.augment.intensity.foreground_quantiles` of the training images);
        nothing to do without a prior."""
        if self.config.intensity_prior != "none":
            self.generator_ab.prior.set_tables(quantiles_a, quantiles_b)
            self.generator_ba.prior.set_tables(quantiles_b, quantiles_a)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam for both generators and one for both discriminators (as the reference);
        with ``lambda_gan`` 0 only the generators' (the discriminators never train)."""
        c = self.config
        generators = itertools.chain(self.generator_ab.parameters(),
                                     self.generator_ba.parameters())
        optimizers = {"generator": torch.optim.Adam(generators, c.lr, c.betas)}
        if c.lambda_gan > 0:
            discriminators = itertools.chain(self.discriminator_a.parameters(),
                                             self.discriminator_b.parameters())
            optimizers["discriminator"] = torch.optim.Adam(discriminators, c.lr, c.betas)
        return optimizers

    def train_step(
        self,
        batch: tuple[torch.Tensor, ...],
        optimizers: dict[str, torch.optim.Optimizer],
        rng: torch.Generator,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> dict[str, float]:
        """One generator update, then one discriminator update (none with ``lambda_gan`` 0).

        ``batch`` = (a, b) or (a, b, input_a, input_b), each ``(B, S, h, w)`` in [-1, 1]
        (``S`` = ``config.stack_channels``; h and w multiples of 4): the images of each
        domain (paired: item i of a and of b is one subject's slice in both contrasts) and
        what the generators take (the same images, intensity-augmented when asked; default:
        the images themselves). Targets, cycles and the discriminators' real images are
        always the un-augmented ones.

        Returns the weighted losses (``loss_g`` is their sum: ``loss_gan_*`` unless
        ``lambda_gan`` is 0, unpaired ``loss_cycle_*``, ``loss_structure_*``, ``loss_idt_*``
        (0.0 when their weight is 0), paired ``loss_l1_*`` or ``loss_mse_*`` and
        ``loss_structure_*`` when its weight is above 0) and, with a
        discriminator step, each discriminator's loss and the discriminators' mean scores on
        real images and on the (pooled) fakes.
        """
        autocast = autocast or contextlib.nullcontext()
        real_a, real_b, *inputs = batch
        input_a, input_b = inputs or (real_a, real_b)
        discriminators = (self.discriminator_a, self.discriminator_b)

        for parameter in itertools.chain(*(d.parameters() for d in discriminators)):
            parameter.requires_grad_(False)
        with autocast:
            fake_b, fake_a = self.generator_ab(input_a), self.generator_ba(input_b)
            if self.config.paired:
                losses = self._paired_losses(real_a, real_b, input_a, input_b, fake_a, fake_b)
            else:
                losses = self._cycle_losses(real_a, real_b, input_a, input_b, fake_a, fake_b)
        loss_g = sum(losses.values())
        optimizers["generator"].zero_grad(set_to_none=True)
        loss_g.backward()
        optimizers["generator"].step()
        for parameter in itertools.chain(*(d.parameters() for d in discriminators)):
            parameter.requires_grad_(True)
        stats = {"loss_g": loss_g.item(), **{name: value.item() for name, value in losses.items()}}
        if self.config.lambda_gan == 0:
            return stats
        return {**stats, **self._discriminator_step(real_a, real_b, input_a, input_b,
                                                    fake_a.detach(), fake_b.detach(),
                                                    optimizers, rng, autocast)}

    def _discriminator_step(self, real_a: torch.Tensor, real_b: torch.Tensor,
                            input_a: torch.Tensor, input_b: torch.Tensor, fake_a: torch.Tensor,
                            fake_b: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer],
                            rng: torch.Generator,
                            autocast: contextlib.AbstractContextManager) -> dict[str, float]:
        """One update of both discriminators on real images against the pooled fakes, all
        ``(B, S, h, w)``; returns their losses and mean scores."""
        shown_a = self.pool_a.query(fake_a, rng)
        shown_b = self.pool_b.query(fake_b, rng)
        with autocast:
            d_real_a = self._judge(self.discriminator_a, real_a, input_b)
            d_fake_a = self._judge(self.discriminator_a, shown_a, input_b)
            d_real_b = self._judge(self.discriminator_b, real_b, input_a)
            d_fake_b = self._judge(self.discriminator_b, shown_b, input_a)
        loss_d_a = 0.5 * (_mse(d_real_a, 1.0) + _mse(d_fake_a, 0.0))
        loss_d_b = 0.5 * (_mse(d_real_b, 1.0) + _mse(d_fake_b, 0.0))
        optimizers["discriminator"].zero_grad(set_to_none=True)
        (loss_d_a + loss_d_b).backward()
        optimizers["discriminator"].step()
        return {
            "loss_d_a": loss_d_a.item(),
            "loss_d_b": loss_d_b.item(),
            "d_real": 0.5 * (d_real_a.float().mean() + d_real_b.float().mean()).item(),
            "d_fake": 0.5 * (d_fake_a.float().mean() + d_fake_b.float().mean()).item(),
        }

    def _judge(self, discriminator: PatchGAN, images: torch.Tensor,
               made_from: torch.Tensor) -> torch.Tensor:
        """The discriminator's scores for ``images`` ``(B, S, h, w)``; paired, for each image
        stacked on the input it was (or should be) made from."""
        if self.config.paired:
            images = torch.cat([made_from, images], dim=1)  # (B, 2 S, h, w)
        return discriminator(images)

    def _cycle_losses(self, real_a: torch.Tensor, real_b: torch.Tensor, input_a: torch.Tensor,
                      input_b: torch.Tensor, fake_a: torch.Tensor, fake_b: torch.Tensor
                      ) -> dict[str, torch.Tensor]:
        """The CycleGAN's generator losses, all ``(B, S, h, w)`` in; weighted scalars out."""
        c = self.config
        identity_weight = c.lambda_cycle * c.lambda_identity
        rec_a, rec_b = self.generator_ba(fake_b), self.generator_ab(fake_a)
        losses = {
            "loss_gan_ab": _mse(self.discriminator_b(fake_b), 1.0) * c.lambda_gan,
            "loss_gan_ba": _mse(self.discriminator_a(fake_a), 1.0) * c.lambda_gan,
            "loss_cycle_a": F.l1_loss(rec_a.float(), real_a.float()) * c.lambda_cycle,
            "loss_cycle_b": F.l1_loss(rec_b.float(), real_b.float()) * c.lambda_cycle,
            "loss_structure_ab": self._structure_loss(fake_b, input_a),
            "loss_structure_ba": self._structure_loss(fake_a, input_b),
        }
        if identity_weight > 0:
            idt_a, idt_b = self.generator_ab(input_b), self.generator_ba(input_a)
            losses["loss_idt_a"] = F.l1_loss(idt_a.float(), real_b.float()) * identity_weight
            losses["loss_idt_b"] = F.l1_loss(idt_b.float(), real_a.float()) * identity_weight
        else:
            losses["loss_idt_a"] = losses["loss_idt_b"] = real_a.new_zeros((), dtype=torch.float)
        return losses

    def _paired_losses(self, real_a: torch.Tensor, real_b: torch.Tensor, input_a: torch.Tensor,
                       input_b: torch.Tensor, fake_a: torch.Tensor, fake_b: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        """pix2pix's generator losses per direction: the conditional GAN term (none with
        ``lambda_gan`` 0), the pixel loss (``paired_loss``) to the subject's own slice in the
        target contrast and, with ``lambda_structure``, the structure loss."""
        c = self.config
        pixel = F.l1_loss if c.paired_loss == "l1" else F.mse_loss
        losses = {
            f"loss_{c.paired_loss}_ab": pixel(fake_b.float(), real_b.float()) * c.lambda_l1,
            f"loss_{c.paired_loss}_ba": pixel(fake_a.float(), real_a.float()) * c.lambda_l1,
        }
        if c.lambda_structure > 0:
            losses["loss_structure_ab"] = self._structure_loss(fake_b, input_a)
            losses["loss_structure_ba"] = self._structure_loss(fake_a, input_b)
        if c.lambda_gan > 0:
            losses["loss_gan_ab"] = _mse(self._judge(self.discriminator_b, fake_b, input_a),
                                         1.0) * c.lambda_gan
            losses["loss_gan_ba"] = _mse(self._judge(self.discriminator_a, fake_a, input_b),
                                         1.0) * c.lambda_gan
        return losses

    def _structure_loss(self, output: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``lambda_structure`` x (1 - mean squared local NCC of ``output`` and ``source``),
        both ``(B, C, h, w)``; a float 0 when the weight is 0."""
        if not self.config.lambda_structure:
            return source.new_zeros((), dtype=torch.float)
        squared_ncc = -self.local_ncc(output.float(), source.float())
        return (1.0 - squared_ncc) * self.config.lambda_structure

    @torch.no_grad()
    def translate(self, images: torch.Tensor, direction: str,
                  batch_size: int = TRANSLATE_BATCH) -> torch.Tensor:
        """Translate ``images`` ``(N, S, H, W)`` in [-1, 1] (``S`` = ``config.stack_channels``)
        of any H and W: ``a2b`` or ``b2a``.

        The images are padded at the bottom and right to multiples of 4 (at least 8; by
        reflection, or by repeating the edge for tiny images), run through the generator in
        eval mode in batches on its device, and cropped back. Returns float32 ``(N, S, H, W)``
        in [-1, 1] on the CPU.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        net = self.generator_ab if direction == "a2b" else self.generator_ba
        device = next(net.parameters()).device
        height, width = images.shape[-2:]
        was_training = net.training
        net.eval()
        try:
            outputs = []
            for chunk in images.split(batch_size):
                x = pad_to_multiple(chunk.to(device, torch.float32), 4, smallest=8)
                outputs.append(net(x)[..., :height, :width].float().clamp(-1, 1).cpu())
        finally:
            net.train(was_training)
        return torch.cat(outputs)

    def preview(self, examples: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The epoch's grid for examples a ``(k, S, H, W)`` and b (of the same shape; paired:
        the same slices), on the CPU, 2.5D as centre slices: ``(6, k, C, H, W)`` rows A, A->B,
        A->B->A, B, B->A, B->A->B; paired ``(4, k, C, H, W)`` rows A, A->B, B, B->A, so each
        translation sits next to its truth."""
        a, b = examples
        if a.shape != b.shape:
            raise ValueError(f"preview examples of A and B must have one shape, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        fake_b, fake_a = self.translate(a, "a2b"), self.translate(b, "b2a")
        if self.config.paired:
            rows = [a.float().cpu(), fake_b, b.float().cpu(), fake_a]
        else:
            rows = [a.float().cpu(), fake_b, self.translate(fake_b, "b2a"),
                    b.float().cpu(), fake_a, self.translate(fake_a, "a2b")]
        return torch.stack([self.centre(row) for row in rows])

    def centre(self, stacks: torch.Tensor) -> torch.Tensor:
        """The centre slice ``(N, C, H, W)`` of 2.5D stacks ``(N, S, H, W)``."""
        channels = self.config.channels
        first = self.config.context * channels
        return stacks[:, first:first + channels]


def _mse(scores: torch.Tensor, target: float) -> torch.Tensor:
    """The least-squares GAN loss: mean of ``(scores - target)^2``, in float32."""
    return (scores.float() - target).square().mean()
