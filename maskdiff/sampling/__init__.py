"""The reverse process: time grids, per-sample random streams, reveal rules and the sampling loop.

A sampler needs only a model with ``guided_predict``, ``schedule`` and ``mask_id`` (any
:class:`maskdiff.objectives.DiffusionModel`), so the CLI, a test or a server drive it the same
way, through the model's ``iterate``/``sample``.
"""

from maskdiff.sampling.distributions import GRIDS, categorical, filter_probs, time_grid
from maskdiff.sampling.loop import METHODS, SamplerOptions, Step, fill_after_eos, iterate, sample
from maskdiff.sampling.streams import SampleStreams, splitmix64

__all__ = [
    "GRIDS", "METHODS", "SamplerOptions", "Step", "SampleStreams", "categorical", "fill_after_eos", "filter_probs",
    "iterate", "sample", "splitmix64", "time_grid",
]
