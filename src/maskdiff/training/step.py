"""One optimizer step: AdamW with warm-up and cosine decay, gradient accumulation, clipping and EMA.

The step knows the objective only through its training loss: ``model(x0, generator, **conditioning)``
(``Objective.forward``, i.e. ``train_loss``) returns nats per sequence [B]; the step minimises its
mean per scored token. The trainer loop and the throughput benchmark both run :func:`train_step`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from maskdiff import distributed
from maskdiff.data import split_batch
from maskdiff.hardware import autocast
from maskdiff.objectives import BatchShard
from maskdiff.training.parallel import gradient_sync
from maskdiff.training.state import TrainState

Mark = Callable[[str], contextlib.AbstractContextManager[Any]]


def no_marks(name: str) -> contextlib.AbstractContextManager[Any]:
    """The default ``mark`` of :func:`train_step`: phases are not timed."""
    return contextlib.nullcontext()


@dataclass
class StepOutcome:
    """What one :func:`train_step` reports; the tensors stay on the device (reading them syncs)."""

    loss: torch.Tensor  # this process's loss, nats per token, averaged over the micro-batches
    grad_norm: torch.Tensor  # of the averaged gradients, before clipping
    applied: bool  # False when the loss or the gradient was not finite and the update was skipped


def train_step(
    state: TrainState,
    micro_batches: Sequence[Any],
    *,
    grad_clip: float = 0.0,
    precision: torch.dtype | None = None,
    ctx: distributed.Context | None = None,
    model: torch.nn.Module | None = None,
    mark: Mark = no_marks,
) -> StepOutcome:
    """Advance ``state`` by one optimizer step over ``micro_batches`` (gradient accumulation).

    Each micro-batch is ``x0`` [B, L], ``(x0, labels)`` or ``{"x0": x0, "loss_mask": ...}``
    (:func:`maskdiff.data.split_batch`); its loss is the objective's ``model(x0,
    generator=state.noise, labels=..., loss_mask=...)`` averaged over the batch and divided by L
    (nats per token), or with a loss mask summed and divided by the number of scored tokens,
    under bf16 autocast when ``precision`` is ``torch.bfloat16``. ``model`` is
    the module that computes the loss: ``state.model`` (the default, also when FSDP-sharded) or a
    DistributedDataParallel wrapper of it; gradients are reduced across processes once, on the
    last micro-batch. ``ctx`` is this process's place in a ``torchrun`` job (None: a single process).

    Under ``torchrun`` every process gets the whole micro-batch (all processes' rows) and computes
    the loss of its own rows, with the noise drawn for all of them (:class:`BatchShard`); its loss
    is scaled so that the average over processes is the loss of the whole batch. So losses and
    gradients equal those of one process with the whole batch, up to rounding.

    The gradients are clipped to norm ``grad_clip`` (0: not clipped). When the loss (averaged over
    the processes of ``ctx``) or the gradient norm is not finite, the update is skipped and
    ``state.skipped_steps`` counts it; otherwise the optimizer steps and the EMA follows. The LR
    schedule and ``state.step`` advance either way. One host sync per step (the finite check).

    ``mark(name)`` wraps each phase ("forward+loss", "backward", "clip_grad", "optimizer", "ema")
    in a context manager, for timers or ``torch.profiler.record_function``.
    """
    ctx = ctx or distributed.Context()
    trained = state.model if model is None else model
    device, accum = state.device, len(micro_batches)
    step_loss = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        # class-conditional image batches come with labels, which go to the denoiser, and
        # prompt/response pairs with the loss mask of their responses
        x0, conditioning = split_batch(batch)
        scored = conditioning.get("loss_mask")
        # per-token normaliser of the whole micro-batch, so the processes' losses average to its loss
        tokens = x0.numel() if scored is None else scored.sum().clamp_min(1).item()
        shard = None
        if ctx.active:
            rows = x0.shape[0] // ctx.world_size
            shard = BatchShard(ctx.rank * rows, (ctx.rank + 1) * rows, x0.shape[0])
            x0, conditioning = x0[shard.rows], {key: value[shard.rows] for key, value in conditioning.items()}
        x0 = x0.to(device, non_blocking=True)
        extra: dict[str, Any] = {key: value.to(device, non_blocking=True) for key, value in conditioning.items()}
        if shard is not None:
            extra["shard"] = shard
        with gradient_sync(trained, i == accum - 1):
            with mark("forward+loss"), autocast(device, precision):
                per_sequence = trained(x0, generator=state.noise, **extra)
                loss = per_sequence.sum() * (ctx.world_size / tokens)  # nats per scored token
            with mark("backward"):
                (loss / accum).backward()
        step_loss += loss.detach() / accum

    with mark("clip_grad"):
        parameters = list(state.model.parameters())
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        if isinstance(grad_norm, DTensor):  # FSDP: the norm over every process's shards
            grad_norm = grad_norm.full_tensor()
        if grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(parameters, grad_clip, grad_norm)
        # the same decision on every process: the gradients (and so their norm) were averaged,
        # and the loss is averaged here
        finite = bool(torch.isfinite(grad_norm) & torch.isfinite(distributed.mean(step_loss, ctx)))
    if finite:
        with mark("optimizer"):
            state.optimizer.step()
        if state.ema is not None:
            with mark("ema"):
                state.ema.update(state.model)
    else:
        state.skipped_steps += 1
    with mark("optimizer"):
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return StepOutcome(step_loss, grad_norm, finite)
