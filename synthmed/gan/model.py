"""What the training engine (:mod:`synthmed.gan.trainer`) asks of a model family.

A family (the DCGAN, the CycleGAN, a next one) subclasses :class:`GenerativeModel`, sets
``kind`` (its name in ``config.yaml`` and in the weights' metadata) and ``min_batch``, and
implements the three abstract methods; the engine then gives it progress, metrics, previews,
atomic checkpoints, exact resume, bf16 and ``torchrun`` without knowing anything else of it.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from synthmed.errors import InputError

if TYPE_CHECKING:
    from synthmed.gan.dp import PrivateDiscriminator


class GenerativeModel(nn.Module, ABC):
    """A model the engine trains: its networks are submodules, its config ``self.config``.

    Class attributes:
        kind: the family's name (``dcgan``, ``cyclegan``).
        min_batch: the smallest batch a step can take (BatchNorm needs 2).
        white_box_attack: the name of :meth:`membership_scores` in the privacy audit.
    """

    kind: ClassVar[str]
    min_batch: ClassVar[int] = 1
    white_box_attack: ClassVar[str] = ""
    config: Any

    @abstractmethod
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers by name (``generator``, ``discriminator`` ...); the engine adds a
        learning-rate schedule to each and saves their states."""

    @abstractmethod
    def train_step(self, batch: Any, optimizers: dict[str, torch.optim.Optimizer],
                   rng: torch.Generator,
                   autocast: contextlib.AbstractContextManager | None = None
                   ) -> dict[str, float]:
        """One optimisation step on ``batch`` (what the training data's ``batch`` gives);
        returns the step's losses and scores (the engine stops on a non-finite one)."""

    @abstractmethod
    def preview(self, **inputs: Any) -> torch.Tensor:
        """The epoch's sample grid from fixed ``inputs`` (the training data's
        ``preview_inputs``): samples ``(N, C, H, W)`` or rows ``(R, K, C, H, W)``."""

    def finish_epoch(self, seed: int) -> None:
        """Called after each epoch's last step (the DCGAN refreshes its EMA's BatchNorm
        statistics); nothing by default."""

    def make_private(self, private: PrivateDiscriminator) -> None:
        """Train with differential privacy (:mod:`synthmed.gan.dp`), before
        :meth:`make_optimizers`; a family without it refuses (as its run config does)."""
        raise InputError(f"differential privacy is available for DCGAN training only, not "
                         f"{self.kind}")

    def membership_scores(self, images: torch.Tensor, labels: torch.Tensor | None,
                          rng: torch.Generator) -> torch.Tensor:
        """White-box membership scores ``(B,)`` of real images ``(B, C, H, W)`` (higher: more
        like a training image), for the privacy audit; a family without one refuses.
        ``white_box_attack`` names it in reports."""
        raise InputError(f"the privacy audit has no white-box attack on a {self.kind} run")

    def state(self) -> dict[str, torch.Tensor]:
        """The weights to save: every tensor of the state dict, detached, on the CPU."""
        return {name: tensor.detach().cpu() for name, tensor in self.state_dict().items()}


def moving_average(network: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``network``'s weights and buffers, for sampling; call
    its ``update_parameters(network)`` after each step. The decay ramps up as
    ``min(decay, (1 + t) / (10 + t))`` over the ``t`` updates so far, so the untrained
    network of the first steps fades out quickly. Each update is one fused lerp per device
    and dtype (a per-tensor average would wait for the device once per tensor)."""

    @torch.no_grad()
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor],
                updates: torch.Tensor) -> None:
        step_decay = min(decay, (1.0 + float(updates)) / (10.0 + float(updates)))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - step_decay)
        else:  # integer buffers (a batch norm's batch count)
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(step_decay * mine + (1.0 - step_decay) * theirs)

    return AveragedModel(network, multi_avg_fn=average, use_buffers=True)
