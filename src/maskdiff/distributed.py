"""Multi-process training under ``torchrun``: process group set-up and the few collectives the trainer needs.

With one process (no ``WORLD_SIZE`` > 1 in the environment) every function here is a cheap no-op,
so the trainer has a single code path.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether this process created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and draws progress bars."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the ``torchrun`` process group if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, owns), device


def launched_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 outside torchrun), known before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def teardown(ctx: Context) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def mean(value: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The average of ``value`` over processes."""
    if not ctx.active:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def total(value: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The sum of ``value`` over processes (exact where at most one process holds a non-zero entry)."""
    if not ctx.active:
        return value
    reduced = value.to(_collective_device(), copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(value.device)


def _collective_device() -> torch.device:
    """Where tensors must be for collectives: the GPU under nccl, the CPU under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` is FSDP-sharded (its forward passes are then collective: every process runs each one)."""
    # a model is sharded only once FSDP has been imported: commands that never shard skip that import (~1.4 s)
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def gather(obj: Any, ctx: Context) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_agree(ok: bool, ctx: Context) -> bool:
    """True when ``ok`` holds on every process (so all of them stop together on an error)."""
    if not ctx.active:
        return ok
    flag = torch.tensor([0 if ok else 1], device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() == 0
