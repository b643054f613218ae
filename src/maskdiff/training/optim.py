"""The optimizer and its learning-rate schedule: AdamW with warm-up and cosine decay.

The schedule is an :class:`LRSchedule` object rather than a closure, so that the scheduler's own
state_dict carries it into every checkpoint; a resumed run whose ``train.steps`` changed
re-plans the decay from the learning rate it has reached (:meth:`LRSchedule.replan`), so the
learning rate never jumps.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at optimizer step ``step``: linear warm-up, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or scalars); ``cfg`` is a TrainConfig."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel runs the whole update in a few ops (CPU and CUDA) and can skip it on a flag
    # held on the device (optimizer_step); elsewhere the plain multi-tensor update
    fused = all(p.device.type in FUSED_DEVICES for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether :func:`optimizer_step` can skip an update on a flag that stays on the device."""
    return isinstance(optimizer, torch.optim.AdamW) and all(group.get("fused") for group in optimizer.param_groups)


def optimizer_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """One update, left out (weights, moments and the step count unchanged) where ``skip`` [] is True.

    The fused AdamW kernel reads the flag on the device (it is the ``found_inf`` of mixed-precision
    loss scaling), so nothing waits for the host; other optimizers read it back first.
    """
    if not skips_on_device(optimizer):
        if not bool(skip):
            optimizer.step()
        return
    optimizer.found_inf = skip.float()  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]


class LRSchedule:
    """Multiplier of the peak LR at each optimizer step: :func:`lr_factor` over ``total`` steps, or,
    once re-planned at step ``start``, a cosine from ``start_factor`` there down to ``min_ratio``
    at ``total``. Its attributes are plain numbers, saved with the scheduler's state."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio
        self.start: int | None = None  # the step a re-plan starts from (None: the original plan)
        self.start_factor: float | None = None  # the multiplier reached there

    def __call__(self, step: int) -> float:
        if self.start is None or self.start_factor is None or step < self.start:
            return lr_factor(step, self.warmup, self.total, self.min_ratio)
        progress = min(1.0, (step - self.start) / max(1, self.total - self.start))
        return self.min_ratio + (self.start_factor - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def replan(self, step: int, total: int) -> None:
        """Run to ``total`` steps instead, continuing from the multiplier of ``step`` (the last one taken).

        During warm-up nothing needs re-planning (the warm-up does not depend on the length), so
        only the end moves.
        """
        if step >= self.warmup:
            self.start, self.start_factor = step, self(step)
        self.total = total


def make_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule of :func:`lr_factor` for a TrainConfig ``cfg`` (warm-up, cosine decay over ``cfg.steps``)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))


def lr_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> LRSchedule:
    """The :class:`LRSchedule` that drives a scheduler made by :func:`make_scheduler`."""
    schedule = scheduler.lr_lambdas[0]  # type: ignore[attr-defined]
    assert isinstance(schedule, LRSchedule)
    return schedule
