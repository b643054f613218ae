"""Exponential moving average of a model's weights, used for evaluation and sampling."""

from __future__ import annotations

import copy

import torch
from torch.distributed.tensor import DTensor


class EMA:
    """A frozen copy of ``module`` whose floating-point weights track the live ones.

    After n updates the decay is min(decay, (1 + n) / (10 + n)), so the average is not
    dominated by the random initialisation early in training. The update count is a Python
    int: updating never waits for the device.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @staticmethod
    def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
        tensors = list(module.parameters()) + list(module.buffers())
        # FSDP-sharded weights: this process's shard (the EMA is sharded like the model)
        return [(t.to_local() if isinstance(t, DTensor) else t).detach() for t in tensors if t.is_floating_point()]

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """Move the average towards the current weights of ``module``."""
        weight = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._tensors(self.module), self._tensors(module), weight)
        self.updates += 1
