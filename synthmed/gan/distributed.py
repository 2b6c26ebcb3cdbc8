"""Data-parallel training under ``torchrun``: process groups (one process when launched
plainly), the model shared by every process, averaged gradients and statistics.

Gradients are averaged across processes (all-reduce, gloo on CPU, NCCL on GPUs) before each
optimiser step and normalisation statistics at each epoch's end, so all copies of the model
stay identical.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def init() -> tuple[int, int]:
    """``(rank, world size)``; starts the process group (NCCL on GPUs, else gloo) when
    torchrun set ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def barrier() -> None:
    """Wait for every process; nothing to wait for in a single process."""
    if dist.is_initialized():
        dist.barrier()


def all_succeeded(ok: bool) -> bool:
    """True when ``ok`` holds on every process (so all stop together, none waits forever)."""
    if not dist.is_initialized():
        return ok
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([int(ok)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def share_model(model: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                world: int) -> None:
    """Make every process's copy of ``model`` process 0's, and have each optimiser step
    on gradients averaged across the processes."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)
    for optimizer in optimizers.values():
        optimizer.register_step_pre_hook(_average_gradients_hook(world))
    dist.barrier()


def _average_gradients_hook(world: int) -> Callable[..., None]:
    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= world

    return hook


def average_buffers(model: nn.Module, world: int) -> None:
    """Average the normalisation statistics (``running_mean`` / ``running_var``) over the
    processes; other buffers (a CycleGAN's pool of past fakes) stay each process's own."""
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and "running_" in name.rsplit(".", 1)[-1]:
            dist.all_reduce(buffer)
            buffer /= world


def summed(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the processes (a copy; themselves in a single process)."""
    total = values.clone()
    if dist.is_initialized():
        dist.all_reduce(total)
    return total


def gather(state: torch.Tensor, world: int, device: torch.device) -> list[torch.Tensor]:
    """Every process's copy of an RNG state (CPU tensors), in rank order; the collective
    runs on ``device`` because NCCL only moves GPU tensors."""
    if world == 1:
        return [state.cpu()]
    local = state.to(device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    return [tensor.cpu() for tensor in gathered]
