"""One optimizer step: AdamW with warm-up and cosine decay, gradient accumulation, clipping and EMA.

The step knows the objective only through its training loss: ``model(x0, generator, **conditioning)``
(``Objective.forward``, i.e. ``train_loss``) returns nats per sequence [B]; the step minimises its
mean per scored token. The trainer loop and the throughput benchmark both run :func:`train_step`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from maskdiff import distributed
from maskdiff.data import split_batch
from maskdiff.hardware import autocast
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
    the module that computes the loss: ``state.model`` (the default) or a DistributedDataParallel
    wrapper of it, which then averages the gradients once, on the last micro-batch. ``ctx`` is
    this process's place in a ``torchrun`` job (None: a single process).

    The gradients are clipped to norm ``grad_clip`` (0: not clipped). When the loss (averaged over
    the processes of ``ctx``) or the gradient norm is not finite, the update is skipped and
    ``state.skipped_steps`` counts it; otherwise the optimizer steps and the EMA follows. The LR
    schedule and ``state.step`` advance either way. One host sync per step (the finite check).

    ``mark(name)`` wraps each phase ("forward+loss", "backward", "clip_grad", "optimizer", "ema")
    in a context manager, for timers or ``torch.profiler.record_function``.
    """
    trained = state.model if model is None else model
    device, accum = state.device, len(micro_batches)
    step_loss = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        # class-conditional image batches come with labels, which go to the denoiser, and
        # prompt/response pairs with the loss mask of their responses
        x0, conditioning = split_batch(batch)
        x0 = x0.to(device, non_blocking=True)
        extra = {key: value.to(device, non_blocking=True) for key, value in conditioning.items()}
        scored = extra.get("loss_mask")
        # DDP averages gradients once per optimizer step, on the last micro-batch
        sync: contextlib.AbstractContextManager = contextlib.nullcontext()
        if isinstance(trained, DistributedDataParallel) and i < accum - 1:
            sync = trained.no_sync()
        with sync:
            with mark("forward+loss"), autocast(device, precision):
                per_sequence = trained(x0, generator=state.noise, **extra)
                # nats per scored token
                loss = per_sequence.mean() / x0.shape[-1] if scored is None else per_sequence.sum() / scored.sum().clamp_min(1)
            with mark("backward"):
                (loss / accum).backward()
        step_loss += loss.detach() / accum

    with mark("clip_grad"):
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip if grad_clip > 0 else math.inf)
        # the same decision on every process: the gradients (and so their norm) were averaged,
        # and the loss is averaged here
        finite = bool(torch.isfinite(grad_norm) & torch.isfinite(distributed.mean(step_loss, ctx or distributed.Context())))
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
