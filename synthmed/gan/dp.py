"""Differentially private DCGAN training: DP-SGD for the discriminator, with Opacus.

Only the discriminator D sees training images, so only D's updates need noise; the
generator G learns through D alone, so G's samples (and both networks' weights) inherit
D's guarantee by post-processing. Each step of the fit loop:

1. Poisson sampling: every training image joins the step's batch independently with
   probability ``q = batch_size / N``, drawn from the loop's seeded order generator (so the
   batch size varies and can be 0); an epoch is ``ceil(N / batch_size)`` steps.
2. D judges the real images and ``batch_size`` fakes in one pass. The fakes' noise and
   labels come from the step generator, never from the batch, so nothing about the batch
   reaches G except through D. One pass gives every image its own row of the per-sample
   gradients that Opacus' hooks compute, ``grad_sample`` ``(B + batch_size, *param.shape)``
   (two passes would add real row i and fake row i together). D's loss is backpropagated
   as a sum over images, so an image's gradient does not depend on how many were drawn.
3. Opacus' ``DPOptimizer`` clips every row to the L2 norm ``C`` (``max_grad_norm``), adds
   Gaussian noise of standard deviation ``sigma * C`` to their sum, divides by the expected
   batch size and takes D's Adam step. Adding or removing one training image changes the
   sum by at most ``C``: the subsampled Gaussian mechanism that Opacus' RDP accountant
   composes over steps. Fakes are clipped too; they carry no private data.
4. G's step runs with the hooks paused: its pass through D computes no per-sample
   gradients and leaves none behind for D's next step.

The noise multiplier ``sigma`` is solved with Opacus' ``get_noise_multiplier`` so that the
planned epochs spend the target epsilon (within 0.01) at delta, by default
``min(1e-5, 1 / (10 N))``. The fit loop stops early, with a checkpoint, when another epoch
would spend more (a run resumed with more epochs). The accountant's state is saved in
``trainer_state.pt``; the spend so far in ``training_data.json`` under
``differential_privacy`` (:meth:`PrivateDiscriminator.record`).

Not covered: the losses and D's scores on real images logged in ``metrics.jsonl`` are
computed from the training images without noise; share samples and weights, not metrics.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer
from torch import nn

from synthmed.errors import InputError
from synthmed.gan.config import DPConfig


class PrivateDiscriminator:
    """DP-SGD for a discriminator: Poisson batches, per-sample gradients, clipping, noise
    and accounting.

    Args:
        config: target epsilon, delta and clipping norm.
        images: N, the training images.
        batch_size: the expected real images per step, and the fakes per step.
        epochs: planned epochs; the noise multiplier is solved to spend the target by then.
        noise: the generator of the Gaussian noise (the fit loop's step generator, saved
            with every checkpoint, so a resumed run repeats exactly).
        state: :meth:`state_dict` of a run to continue (its noise multiplier and steps).

    Raises:
        InputError: a batch larger than the data, or an epsilon too small to reach.
    """

    def __init__(self, config: DPConfig, images: int, batch_size: int, epochs: int,
                 noise: torch.Generator, state: dict[str, Any] | None = None) -> None:
        if batch_size > images:
            raise InputError(f"the batch size {batch_size} exceeds the {images} training "
                             "images: pass a smaller --batch-size")
        self.config = config
        self.images = images
        self.batch_size = batch_size
        self.sample_rate = batch_size / images
        self.steps_per_epoch = math.ceil(images / batch_size)
        self.delta = config.delta_for(images)
        self.noise = noise
        self.accountant = RDPAccountant()
        if state is None:
            self.noise_multiplier = self._solve_noise_multiplier(epochs * self.steps_per_epoch)
        else:
            self.noise_multiplier = float(state["noise_multiplier"])
            self.accountant.load_state_dict(state["accountant"])
        self._hooks: GradSampleHooks | None = None

    def _solve_noise_multiplier(self, steps: int) -> float:
        try:
            with _quiet_accountant():
                return float(get_noise_multiplier(
                    target_epsilon=self.config.epsilon, target_delta=self.delta,
                    sample_rate=self.sample_rate, steps=steps, accountant="rdp"))
        except ValueError:  # Opacus gives up above a noise multiplier of 1e6
            raise InputError(f"epsilon {self.config.epsilon:g} is too small to reach in "
                             f"{steps} steps: pass a larger --dp-epsilon") from None

    def attach(self, discriminator: nn.Module,
               optimizer: torch.optim.Optimizer) -> DPOptimizer:
        """Per-sample gradients for ``discriminator``'s parameters (Opacus hooks, of the
        loss summed over images) and ``optimizer`` wrapped to clip them, add noise, divide by
        the expected batch size and count each step in the accountant."""
        # PyTorch warns that the hooks of D's first layers see no input gradient: expected
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients "
                                                  "are computed with respect to module outputs")
        self._hooks = GradSampleHooks(discriminator, loss_reduction="sum")
        private = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                              max_grad_norm=self.config.max_grad_norm,
                              expected_batch_size=self.batch_size, loss_reduction="mean",
                              generator=self.noise)
        private.attach_step_hook(self.accountant.get_optimizer_hook_fn(self.sample_rate))
        return private

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward and backward passes through D without per-sample gradients (G's step)."""
        self._hooks.disable_hooks()
        try:
            yield
        finally:
            self._hooks.enable_hooks()

    def batches(self, rng: torch.Generator) -> list[torch.Tensor]:
        """An epoch of Poisson batches: ``steps_per_epoch`` index tensors ``(B_t,)``, each
        image in each independently with probability ``sample_rate``."""
        return [(torch.rand(self.images, generator=rng) < self.sample_rate).nonzero().flatten()
                for _ in range(self.steps_per_epoch)]

    @property
    def steps(self) -> int:
        """The noisy steps taken so far."""
        return sum(steps for _, _, steps in self.accountant.history)

    def epsilon(self, steps: int | None = None) -> float:
        """Epsilon at ``delta`` after ``steps`` steps (default: those taken), all with this
        noise multiplier and sample rate."""
        steps = self.steps if steps is None else steps
        return _epsilon(self.noise_multiplier, self.sample_rate, steps, self.delta)

    def affords(self, steps: int) -> bool:
        """Whether ``steps`` more steps stay within the target epsilon."""
        return self.epsilon(self.steps + steps) <= self.config.epsilon

    def record(self) -> dict[str, Any]:
        """The guarantee so far, as ``training_data.json`` holds it (``differential_privacy``)."""
        return {"target_epsilon": float(self.config.epsilon), "epsilon": self.epsilon(),
                "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": float(self.config.max_grad_norm),
                "sample_rate": self.sample_rate, "steps": self.steps, "accountant": "rdp"}

    def metrics(self) -> dict[str, float]:
        """The record's numbers for ``metrics.jsonl``, as ``dp_epsilon``, ``dp_delta``, ..."""
        return {f"dp_{key}": value for key, value in self.record().items()
                if key not in ("target_epsilon", "accountant")}

    def state_dict(self) -> dict[str, Any]:
        """Plain values for ``trainer_state.pt``: the noise multiplier and the accountant."""
        return {"noise_multiplier": self.noise_multiplier,
                "accountant": dict(self.accountant.state_dict())}


@functools.lru_cache(maxsize=64)  # each epoch asks for the same few values
def _epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` subsampled Gaussian steps, by Opacus' RDP accountant."""
    accountant = RDPAccountant()
    if steps:
        accountant.history = [(noise_multiplier, sample_rate, steps)]
    with _quiet_accountant():
        return float(accountant.get_epsilon(delta=delta))


@contextlib.contextmanager
def _quiet_accountant() -> Iterator[None]:
    """Silence the RDP accountant's hint that larger orders could tighten a bound."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield
