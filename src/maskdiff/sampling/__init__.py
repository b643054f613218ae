"""The reverse process: time grids, per-sample random streams, reveal rules and the sampling loop.

A sampler needs only a model with ``guided_predict``, ``schedule`` and ``mask_id`` (any
:class:`maskdiff.objectives.DiffusionModel`), so the CLI, a test or a server drive it the same
way, through the model's ``iterate``/``sample``. The reveal rules are classes registered by
name in :data:`RULES` (:mod:`maskdiff.sampling.rules`); every option is declared once
(:mod:`maskdiff.sampling.options`) and the fronts' flags and fields are generated from it. A
:class:`SamplingRequest` is what one sampler run draws.
"""

from maskdiff.sampling.cache import CACHE_MODES
from maskdiff.sampling.distributions import GRIDS, categorical, filter_probs, time_grid
from maskdiff.sampling.loop import SamplerStats, Step, fill_after_eos, iterate
from maskdiff.sampling.options import Option, OptionError
from maskdiff.sampling.request import SamplingRequest, combine
from maskdiff.sampling.rules import REMASK_MODES, REMASK_SCHEDULES, RULES, Prediction, Rule, StepContext
from maskdiff.sampling.settings import STEPS, CommonOptions, SamplerOptions, every_option
from maskdiff.sampling.streams import SampleStreams, row_seeds, splitmix64, stream_seeds

__all__ = [
    "CACHE_MODES",
    "GRIDS",
    "METHODS",
    "REMASK_MODES",
    "REMASK_SCHEDULES",
    "RULES",
    "STEPS",
    "CommonOptions",
    "Option",
    "OptionError",
    "Prediction",
    "Rule",
    "SamplerOptions",
    "SamplingRequest",
    "SamplerStats",
    "Step",
    "StepContext",
    "SampleStreams",
    "categorical",
    "combine",
    "every_option",
    "fill_after_eos",
    "filter_probs",
    "iterate",
    "row_seeds",
    "splitmix64",
    "stream_seeds",
    "time_grid",
]


def __getattr__(name: str):
    if name == "METHODS":  # the names of the registered rules, read when asked (kept for compatibility)
        return RULES.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
