"""What the training engine (:mod:`synthmed.gan.trainer`) asks of a model family.

A family (the DCGAN, the CycleGAN, a next one) subclasses :class:`GenerativeModel`, sets
``kind`` (its name in ``config.yaml`` and in the weights' metadata) and ``min_batch``, and
implements the three abstract methods; the engine then gives it progress, metrics, previews,
atomic checkpoints, exact resume, bf16 and ``torchrun`` without knowing anything else of it.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
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
        progress_buffers: buffers that count a run's own progress (steps done, an adapted
            probability), which a run started from another's weights starts afresh.
        label_inputs: weights ``(out, noise + label)`` of the layers that take the label
            beside the noise in a class-conditional model.
    """

    kind: ClassVar[str]
    min_batch: ClassVar[int] = 1
    white_box_attack: ClassVar[str] = ""
    progress_buffers: ClassVar[tuple[str, ...]] = ()
    label_inputs: ClassVar[tuple[str, ...]] = ()
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

    def start_from(self, source: GenerativeModel, where: Path) -> None:
        """Copy the weights of ``source`` (another run's model, e.g. one trained on a larger
        set, for fine-tuning on this one): every tensor of the same name and shape. Class
        embeddings that are missing there or of another shape (another class count) keep
        their initialisation, as does the label part of a layer that takes noise and label
        here and noise only there (a conditional model from an unconditional one: the
        source fills its leading part); :attr:`progress_buffers` start afresh.

        Raises:
            InputError: (naming the source run ``where``) any other tensor missing there or
                of another shape.
        """
        theirs = source.state_dict()
        copied = {}
        for name, tensor in self.state_dict().items():
            if name in self.progress_buffers:
                continue
            other = theirs.get(name)
            if other is not None and other.shape == tensor.shape:
                copied[name] = other
            elif (other is not None and name in self.label_inputs
                  and other.shape[0] == tensor.shape[0] and other.shape[1] < tensor.shape[1]):
                copied[name] = torch.cat([other, tensor[:, other.shape[1]:]], dim=1)
            elif "embedding" not in name:
                found = "missing" if other is None else f"of shape {tuple(other.shape)}"
                raise InputError(f"its weights do not fit this model: {name} is {found} there "
                                 f"and of shape {tuple(tensor.shape)} here (train both with "
                                 f"the same size, channels, widths and conditioning)", where)
        self.load_state_dict(copied, strict=False)

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
