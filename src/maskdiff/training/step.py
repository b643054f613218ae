"""One optimizer step: AdamW with warm-up and cosine decay, gradient accumulation, clipping and EMA.

The step knows the objective only through its training loss: ``model(x0, generator, **conditioning)``
(``Objective.forward``, i.e. ``train_loss``) returns nats per sequence [B]; the step minimises its
mean per scored token. The trainer loop and the throughput benchmark both run :func:`train_step`.

Nothing in a step waits for the device: the finite check is a flag on the device that the fused
AdamW kernel and the EMA read there (a skipped update leaves every bit as it was), and the loss,
gradient norm and skip count stay on the device until the caller reads them (the loop does every
``train.log_every`` steps). :func:`compile_loss` puts the loss computation under ``torch.compile``
(``train.compile``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from maskdiff import distributed
from maskdiff.data import split_batch
from maskdiff.hardware import autocast
from maskdiff.objectives import BatchShard
from maskdiff.training.optim import optimizer_step
from maskdiff.training.parallel import gradient_sync
from maskdiff.training.state import TrainState

Mark = Callable[[str], contextlib.AbstractContextManager[Any]]


def no_marks(name: str) -> contextlib.AbstractContextManager[Any]:
    """The default ``mark`` of :func:`train_step`: phases are not timed."""
    return contextlib.nullcontext()


class CompiledLoss:
    """A training module's loss under ``torch.compile``, compiled once per input shape (``dynamic=False``).

    The transformer denoiser and the loss after it compile into one graph (no graph break inside
    the network); the masking-noise draws, which take an explicit ``torch.Generator``, run eagerly
    between graphs. Where compiling fails
    (no backend or compiler for the device, an unsupported operation), one warning is printed and
    the eager module computes this and every later loss, from the same noise.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module  # the eager module (what gradient_sync and the optimizer see)
        self.compiled: Callable[..., torch.Tensor] | None = torch.compile(module, dynamic=False)

    def __call__(self, x0: torch.Tensor, generator: torch.Generator | None = None, **conditioning) -> torch.Tensor:
        if self.compiled is not None:
            noise = generator.get_state() if generator is not None else None
            try:
                return self.compiled(x0, generator=generator, **conditioning)
            except COMPILE_ERRORS as err:
                print(f"maskdiff: warning: torch.compile failed, training eagerly: {first_line(err)}", file=sys.stderr)
                self.compiled = None
                if generator is not None and noise is not None:
                    generator.set_state(noise)  # the eager loss draws the noise the failed call drew
        return self.module(x0, generator=generator, **conditioning)


def _compile_errors() -> tuple[type[BaseException], ...]:
    import torch._dynamo.exc as dynamo_errors

    return (dynamo_errors.TorchDynamoException, dynamo_errors.BackendCompilerFailed)


COMPILE_ERRORS = _compile_errors()  # what a failed compilation raises (a backend's own errors arrive wrapped)


def first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def compile_loss(module: torch.nn.Module) -> CompiledLoss:
    """``module`` (the model, or its DistributedDataParallel wrapper) with its loss compiled: :class:`CompiledLoss`."""
    return CompiledLoss(module)


@dataclass
class StepOutcome:
    """What one :func:`train_step` reports; the tensors stay on the device (reading them waits for it)."""

    loss: torch.Tensor  # this process's loss, nats per token, averaged over the micro-batches
    grad_norm: torch.Tensor  # of the averaged gradients, before clipping
    applied: torch.Tensor  # [] bool: False when the loss or the gradient was not finite and the update was skipped


def train_step(
    state: TrainState,
    micro_batches: Sequence[Any],
    *,
    grad_clip: float = 0.0,
    precision: torch.dtype | None = None,
    ctx: distributed.Context | None = None,
    model: torch.nn.Module | CompiledLoss | None = None,
    mark: Mark = no_marks,
) -> StepOutcome:
    """Advance ``state`` by one optimizer step over ``micro_batches`` (gradient accumulation).

    Each micro-batch is ``x0`` [B, L], ``(x0, labels)`` or ``{"x0": x0, "loss_mask": ...}``
    (:func:`maskdiff.data.split_batch`); its loss is the objective's ``model(x0,
    generator=state.noise, labels=..., loss_mask=...)`` averaged over the batch and divided by L
    (nats per token), or with a loss mask summed and divided by the number of scored tokens,
    under bf16 autocast when ``precision`` is ``torch.bfloat16``. ``model`` is
    the module that computes the loss: ``state.model`` (the default, also when FSDP-sharded), a
    DistributedDataParallel wrapper of it, or either under :func:`compile_loss`; gradients are
    reduced across processes once, on the last micro-batch. ``ctx`` is this process's place in a ``torchrun`` job (None: a single process).

    Under ``torchrun`` every process gets the whole micro-batch (all processes' rows) and computes
    the loss of its own rows, with the noise drawn for all of them (:class:`BatchShard`); its loss
    is scaled so that the average over processes is the loss of the whole batch. So losses and
    gradients equal those of one process with the whole batch, up to rounding.

    The gradients are clipped to norm ``grad_clip`` (0: not clipped). When the loss (averaged over
    the processes of ``ctx``) or the gradient norm is not finite, the update is skipped and
    ``state.skipped_steps`` counts it; otherwise the optimizer steps and the EMA follows. The LR
    schedule and ``state.step`` advance either way. The decision is made on the device: with the
    fused AdamW (CPU, CUDA) the step issues no host synchronisation; another optimizer reads the
    flag back. A loss mask's token count stays on the device too.

    ``mark(name)`` wraps each phase ("forward+loss", "backward", "clip_grad", "optimizer", "ema")
    in a context manager, for timers or ``torch.profiler.record_function``.
    """
    ctx = ctx or distributed.Context()
    trained = state.model if model is None else model
    synced = trained.module if isinstance(trained, CompiledLoss) else trained
    device, accum = state.device, len(micro_batches)
    step_loss = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        # class-conditional image batches come with labels, which go to the denoiser, and
        # prompt/response pairs with the loss mask of their responses
        x0, conditioning = split_batch(batch)
        scored = conditioning.get("loss_mask")
        # per-token normaliser of the whole micro-batch, so the processes' losses average to its loss;
        # a loss mask's count is divided in float64 on the device, as a Python number would be
        scale = ctx.world_size / x0.numel() if scored is None else (ctx.world_size / scored.to(device).sum().clamp_min(1).double()).float()
        shard = None
        if ctx.active:
            rows = x0.shape[0] // ctx.world_size
            shard = BatchShard(ctx.rank * rows, (ctx.rank + 1) * rows, x0.shape[0])
            x0, conditioning = x0[shard.rows], {key: value[shard.rows] for key, value in conditioning.items()}
        x0 = x0.to(device, non_blocking=True)
        extra: dict[str, Any] = {key: value.to(device, non_blocking=True) for key, value in conditioning.items()}
        if shard is not None:
            extra["shard"] = shard
        with gradient_sync(synced, i == accum - 1):
            with mark("forward+loss"), autocast(device, precision):
                per_sequence = trained(x0, generator=state.noise, **extra)
                loss = per_sequence.sum() * scale  # nats per scored token
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
        finite = torch.isfinite(grad_norm) & torch.isfinite(distributed.mean(step_loss, ctx))
        skip = ~finite
    with mark("optimizer"):
        optimizer_step(state.optimizer, skip)
    if state.ema is not None:
        with mark("ema"):
            state.ema.update(state.model, skip)
    state.skipped += skip
    with mark("optimizer"):
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return StepOutcome(step_loss, grad_norm, finite)
