"""How a model is laid out for training: activation checkpointing, and under ``torchrun`` DDP or FSDP2.

``train.parallel=ddp`` keeps the whole model, its gradients and optimizer state on every process
and averages the gradients (DistributedDataParallel). ``train.parallel=fsdp`` shards all three
across the processes with FSDP2 (:func:`torch.distributed.fsdp.fully_shard`): every repeated
block of the network is one unit, gathered just before it runs and freed after, and the rest of
the model (embedding, output layer, a learned schedule) is the root unit. Where the hardware has
native bf16 (:func:`maskdiff.hardware.resolve_precision`) the gathered weights are bf16 and the
gradients are reduced in fp32 (``MixedPrecisionPolicy``); the sharded master weights and the
optimizer stay fp32. The EMA copy is sharded the same way, so its update stays local.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from maskdiff.distributed import is_sharded


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks of a network: the composite modules held in its ``nn.ModuleList``\\ s, innermost first.

    They are the units of activation checkpointing and of FSDP sharding (transformer blocks,
    U-Net residual blocks); a plain layer in a list (a skip projection) is not a block.
    """
    out: list[nn.Module] = []
    for child in module.children():
        out += repeated_blocks(child)
        if isinstance(module, nn.ModuleList) and any(True for _ in child.children()):
            out.append(child)
    return out


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute every block's activations in the backward pass instead of keeping them.

    The block's ``forward`` is wrapped in :func:`torch.utils.checkpoint.checkpoint` (non-reentrant,
    with the RNG state kept, so dropout draws the same masks twice); parameter names do not change,
    so checkpoints are the same with and without it.
    """
    for block in repeated_blocks(model):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def shard(model: nn.Module, precision: torch.dtype | None) -> None:
    """Shard ``model`` (an Objective) in place with FSDP2 over the default process group.

    Blocks first, then the root; ``nelbo`` is registered as a forward method, so evaluation
    gathers the weights as the training loss does. With ``precision`` (bf16) the gathered
    weights have that dtype and gradients are reduced in fp32.
    """
    policy = MixedPrecisionPolicy(param_dtype=precision, reduce_dtype=torch.float32) if precision is not None else MixedPrecisionPolicy()
    for block in repeated_blocks(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    register_fsdp_forward_method(model, "nelbo")


def training_module(model: nn.Module, ddp: bool) -> nn.Module:
    """The module the training step calls: ``model`` itself, or a DistributedDataParallel wrapper of it."""
    return DistributedDataParallel(model) if ddp and not is_sharded(model) else model


def gradient_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Within: whether the backward pass reduces gradients across processes (off for all but the last
    micro-batch of an accumulated step)."""
    if isinstance(module, DistributedDataParallel) and not sync:
        return module.no_sync()
    if isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()
