"""What a likelihood figure is: a Monte Carlo bound, or an exact value, and how to speak of it.

An objective declares the estimator of its ``nelbo`` (MD4 and GenMD4: the bound; the
autoregressive model: its exact likelihood); evaluation adds the exact chain rule of a diffusion
model. Whatever differs between them (how many draws make sense, the words and the relation a
report uses) is asked of the :class:`Estimator`, never decided by comparing its name. A str-Enum:
it prints and serialises to JSON as its name ("nelbo", "exact", "chain_rule").
"""

from __future__ import annotations

from maskdiff.errors import plural
from maskdiff.registry import Named


class Estimator(Named):
    NELBO = "nelbo"  # the Monte Carlo bound of a diffusion model: random, an upper bound on the NLL
    EXACT = "exact"  # an autoregressive model's exact negative log-likelihood
    CHAIN_RULE = "chain_rule"  # a diffusion model's exact likelihood of left-to-right unmasking

    @property
    def monte_carlo(self) -> bool:
        """Whether each value is a random draw (several draws per sequence make sense; a Monte Carlo error exists)."""
        return self is Estimator.NELBO

    @property
    def is_bound(self) -> bool:
        """Whether the value bounds the negative log-likelihood from above (rather than equalling it)."""
        return self is Estimator.NELBO

    def draws(self, requested: int) -> int:
        """How many estimates of one sequence to average: ``requested`` for a Monte Carlo estimator, else one."""
        return requested if self.monte_carlo else 1

    @property
    def quantity(self) -> str:
        """The short name of the figure: "NELBO" or "NLL"."""
        return "NELBO" if self.is_bound else "NLL"

    @property
    def relation(self) -> str:
        """How the perplexity relates to the figure: "<=" for a bound, "=" for an exact value."""
        return "<=" if self.is_bound else "="

    @property
    def perplexity_name(self) -> str:
        return "perplexity bound" if self.is_bound else "perplexity"

    def describe(self, timesteps: int | None = None) -> str:
        """What the figure is, for a report: "NELBO, continuous-time", "exact NLL (autoregressive)", ..."""
        if self is Estimator.NELBO:
            return "NELBO, continuous-time" if timesteps is None else f"NELBO, discrete-time (T={timesteps})"
        if self is Estimator.EXACT:
            return "exact NLL (autoregressive)"
        return "exact left-to-right chain-rule NLL"

    def cost(self, draws: int) -> str:
        """How each sequence was evaluated: "8 Monte Carlo draws each", "one pass each", ..."""
        if self is Estimator.NELBO:
            return f"{plural(draws, 'Monte Carlo draw')} each"
        if self is Estimator.EXACT:
            return "one pass each"
        return "one network call per token"
