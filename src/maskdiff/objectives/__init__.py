"""Training objectives (masked diffusion, and the autoregressive baseline): the interface (:class:`Objective`) and the registered implementations.

``OBJECTIVES`` maps the config's ``objective.name`` to what the objective contributes: its config
section (the run config's ``objective`` section is of that type, as the ``model`` section is of
its architecture's) and a builder ``(its section, denoiser, vocab_size) -> Objective``. Adding an
objective is one module here (the objective and its section) plus one ``OBJECTIVES.add`` line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from maskdiff.objectives.autoregressive import Autoregressive, AutoregressiveConfig
from maskdiff.objectives.base import (
    BatchShard,
    Denoiser,
    DiffusionModel,
    Objective,
    ObjectiveSection,
    mask_tokens,
    masked_cross_entropy,
    stratified_times,
    sum_scored,
)
from maskdiff.objectives.estimator import Estimator
from maskdiff.objectives.genmd4 import GenMD4, GenMD4Config
from maskdiff.objectives.md4 import MaskedDiffusion, MD4Config
from maskdiff.registry import Registry


@dataclass(frozen=True)
class ObjectiveEntry:
    """What an objective contributes: its config section and how to build it."""

    config: type[ObjectiveSection]  # the ``objective`` section of a run with this objective
    build: Callable[[Any, Denoiser, int], Objective]  # (section, denoiser, vocab_size) -> objective
    family: str = "mdm"  # the kind of model a scaling study counts it as: "mdm" (masked diffusion) or "ar" (autoregressive)


OBJECTIVES: Registry[ObjectiveEntry] = Registry("objective.name")
OBJECTIVES.add("md4", ObjectiveEntry(MD4Config, lambda section, net, vocab: MaskedDiffusion(net, schedule=section.schedule, vocab_size=vocab)))
OBJECTIVES.add("genmd4", ObjectiveEntry(GenMD4Config, lambda section, net, vocab: GenMD4(net, vocab, power_init=section.power_init, t1=section.t1)))
OBJECTIVES.add("ar", ObjectiveEntry(AutoregressiveConfig, lambda section, denoiser, vocab: Autoregressive(denoiser, vocab), family="ar"))

__all__ = [
    "OBJECTIVES",
    "BatchShard",
    "Estimator",
    "Objective",
    "ObjectiveEntry",
    "ObjectiveSection",
    "DiffusionModel",
    "MaskedDiffusion",
    "MD4Config",
    "GenMD4",
    "GenMD4Config",
    "Autoregressive",
    "AutoregressiveConfig",
    "Denoiser",
    "mask_tokens",
    "masked_cross_entropy",
    "stratified_times",
    "sum_scored",
]
