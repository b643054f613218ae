"""Exponential moving average of a model's weights, used for evaluation and sampling."""

from __future__ import annotations

import copy

import torch
from torch.distributed.tensor import DTensor


class EMA:
    """A frozen copy of ``module`` whose floating-point weights track the live ones.

    After n updates the decay is min(decay, (1 + n) / (10 + n)), so the average is not
    dominated by the random initialisation early in training. The update count lives on the
    device (an update may be skipped on a flag that stays there): updating never waits for the
    host, and only reading :attr:`updates` does.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        device = next(iter(self._tensors(self.module)), torch.empty(0)).device
        self._count = torch.zeros((), dtype=torch.float64, device=device)  # float64: the decay's arithmetic is a Python float's

    @property
    def updates(self) -> int:
        """Updates made so far (reading it waits for the device)."""
        return int(self._count)

    @updates.setter
    def updates(self, count: int) -> None:
        self._count.fill_(count)

    @staticmethod
    def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
        tensors = list(module.parameters()) + list(module.buffers())
        # FSDP-sharded weights: this process's shard (the EMA is sharded like the model)
        return [(t.to_local() if isinstance(t, DTensor) else t).detach() for t in tensors if t.is_floating_point()]

    @torch.no_grad()
    def update(self, module: torch.nn.Module, skip: torch.Tensor | None = None) -> None:
        """Move the average towards the current weights of ``module``; not at all where ``skip`` [] (bool) is True."""
        ratio = (1 + self._count) / (10 + self._count)
        weight = 1 - ratio.clamp_max(self.decay)
        if skip is not None:
            weight = torch.where(skip, 0.0, weight)
        averages = self._tensors(self.module)
        weights = {t.dtype: weight.to(t.dtype) for t in averages}
        # a weight of 0 leaves the average's bits as they are
        torch._foreach_lerp_(averages, self._tensors(module), [weights[t.dtype] for t in averages])
        self._count += 1 if skip is None else (~skip).double()
