"""The size family of a scaling study: one transformer shape per member index, and its FLOP count.

Member ``i`` = 0, 1, 2, ... widens and deepens in turn, with heads of 32 channels::

    n_layers = 1 + floor(i / 2)        d_model = 32 * (1 + ceil(i / 2))        n_heads = d_model / 32

so members 0, 1, 2, 3, 4, ... are (1 layer, width 32), (1, 64), (2, 64), (2, 96), (3, 96), ...;
the aspect ratio d_model / n_layers stays between 32 and 64 and member 6 (4 layers, width 128) is
the network of ``benchmarks/equal_compute.py``'s table. Everything else (MLP ratio, schedule, optimiser) is the base
preset's. The masked diffusion and the autoregressive family use the same shapes (the latter
with ``model.causal=true``).

Compute is counted as C = 6 N D (:data:`FLOPS_FORMULA`), N the non-embedding parameters (every
weight but the input embedding, as training reports them: :meth:`Objective.num_parameters`) and
D the training tokens; attention's own FLOPs are left out, as in the scaling-law literature
(:func:`maskdiff.objectives.Objective.flops_per_token` counts them, for reference).
"""

from __future__ import annotations

from dataclasses import dataclass

from maskdiff.config import RunConfig
from maskdiff.presets import parameter_count

HEAD_CHANNELS = 32
FLOPS_FORMULA = "C = 6 N D (N: non-embedding parameters, every weight but the input embedding; D: training tokens = steps x batch_size x seq_len)"
FAMILY_RULE = (
    "member i = 0, 1, 2, ...: n_layers = 1 + floor(i/2), d_model = 32 (1 + ceil(i/2)), n_heads = d_model / 32 "
    "(widen and deepen in turn; member 6 is 4 layers of width 128)"
)
# the objectives of the two families a study compares, and the base preset of each
FAMILY_PRESETS = {"mdm": "tiny", "ar": "ar-tiny"}
SHAPE_KEYS = ("model.n_layers", "model.d_model", "model.n_heads")


@dataclass(frozen=True)
class Shape:
    """One member of the size family."""

    member: int
    n_layers: int
    d_model: int

    @property
    def n_heads(self) -> int:
        return self.d_model // HEAD_CHANNELS

    def overrides(self) -> list[str]:
        """The ``--set`` values that give a config this shape."""
        return [f"model.n_layers={self.n_layers}", f"model.d_model={self.d_model}", f"model.n_heads={self.n_heads}"]

    def describe(self) -> str:
        return f"{self.n_layers} layer{'s' if self.n_layers > 1 else ''} x width {self.d_model}"


def member(i: int) -> Shape:
    """The shape of member ``i`` >= 0 (see the module docstring)."""
    if i < 0:
        raise ValueError(f"family members start at 0, got {i}")
    return Shape(i, 1 + i // 2, HEAD_CHANNELS * (1 + (i + 1) // 2))


def shaped(base: RunConfig, shape: Shape) -> RunConfig:
    """``base`` with the network of ``shape``."""
    return base.with_overrides(shape.overrides())


def non_embedding_parameters(base: RunConfig, shape: Shape, vocab_size: int) -> int:
    """N of ``shape`` on top of ``base`` with a vocabulary of ``vocab_size`` tokens."""
    return parameter_count(shaped(base, shape), vocab_size)


def training_flops(params: int, tokens: int) -> float:
    """C = 6 N D."""
    return 6.0 * params * tokens
