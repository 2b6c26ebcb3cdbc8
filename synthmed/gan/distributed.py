"""Process groups for ``torchrun``: one process when launched plainly, many under torchrun."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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
