"""Training objectives (masked diffusion, and the autoregressive baseline): the interface (:class:`Objective`) and the registered implementations.

``OBJECTIVES`` maps the config's ``diffusion.objective`` to a builder
``(diffusion section, denoiser, vocab_size) -> Objective``. Adding an objective is one module
here plus one ``OBJECTIVES.add`` line below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from maskdiff.objectives.autoregressive import Autoregressive
from maskdiff.objectives.base import BatchShard, Denoiser, DiffusionModel, Objective, mask_tokens, masked_cross_entropy, stratified_times, sum_scored
from maskdiff.objectives.genmd4 import GenMD4
from maskdiff.objectives.md4 import MaskedDiffusion
from maskdiff.registry import Registry

ObjectiveBuilder = Callable[[Any, Denoiser, int], Objective]

OBJECTIVES: Registry[ObjectiveBuilder] = Registry("diffusion.objective")
OBJECTIVES.add("md4", lambda section, denoiser, vocab: MaskedDiffusion(denoiser, schedule=section.schedule, vocab_size=vocab))
OBJECTIVES.add("genmd4", lambda section, denoiser, vocab: GenMD4(denoiser, vocab, power_init=section.power_init, t1=section.t1))
OBJECTIVES.add("ar", lambda section, denoiser, vocab: Autoregressive(denoiser, vocab))  # needs model.causal=true (checked by the config)

__all__ = [
    "OBJECTIVES",
    "BatchShard",
    "Objective",
    "DiffusionModel",
    "MaskedDiffusion",
    "GenMD4",
    "Autoregressive",
    "Denoiser",
    "mask_tokens",
    "masked_cross_entropy",
    "stratified_times",
    "sum_scored",
]
