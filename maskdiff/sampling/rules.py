"""Reveal rules: which masked positions a reverse step reveals, one small class per rule, registered by name.

Every step of the sampler (:func:`maskdiff.sampling.iterate`) asks its rule three things:

1. :meth:`Rule.may_reveal`, the skip test: which rows (samples) may reveal something in this
   step. It is asked before the network runs, so it sees the masks, the step's reveal draws and
   the schedule's reveal chance but not the prediction; the network is called only for these rows.
2. :meth:`Rule.draw`: a value for every position of the rows the network ran on, drawn from the
   prediction (after temperature, top-k and top-p) with the step's value draws.
3. :meth:`Rule.reveal`: given that prediction, which masked positions take their drawn value.

On the last step of a block the sampler reveals everything still masked itself, so a rule is
asked only about the steps before it. A rule's own options are fields of
:class:`~maskdiff.sampling.SamplerOptions` named in :attr:`Rule.option_names`; they are passed
to its constructor and checked by :meth:`Rule.check`. A rule is a subclass registered in
:data:`RULES` (``@RULES.register("name")``); ``SamplerOptions(method=...)``, ``model.sample(method=...)``
and the CLI's ``--method`` choices read that table, so adding a rule touches no other file.

Shapes: N rows (samples) of L positions over V token values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from maskdiff.errors import MaskdiffError
from maskdiff.registry import Registry
from maskdiff.sampling.distributions import categorical

# the options a rule reads: a maskdiff.sampling.SamplerOptions, which itself asks RULES for the
# method's name (so this module does not import it: the loop depends on the rules, not the reverse)
SamplerOptions = Any


@dataclass
class StepContext:
    """What a rule knows about a reverse step before the network is called."""

    masked: torch.Tensor  # [N, L] bool: masked positions that this step may reveal (those of the current block)
    u_reveal: torch.Tensor  # [N, L] U[0, 1) draws for the reveal decisions (drawn every step, used or not)
    p_reveal: torch.Tensor  # chance that a masked position is revealed by this step: 0-d, or [V] per token value
    last: bool = False  # the block's last step (the sampler then reveals everything still masked)

    @property
    def per_value(self) -> bool:
        """A state-dependent schedule (GenMD4): position i is revealed as v with probability mu_i(v) p_reveal[v]."""
        return self.p_reveal.ndim > 0


@dataclass
class Prediction:
    """The network's proposal for every position: a drawn value, how likely it is, and the reveal chance."""

    values: torch.Tensor  # [N, L] long: the value each position takes if revealed
    confidence: torch.Tensor  # [N, L] float64: the model's probability of that value
    chance: torch.Tensor  # [N, L] float64: sum_v mu(v) p_reveal[v], the chance of a reveal (per-value schedules)

    def for_rows(self, rows: torch.Tensor, num_rows: int) -> Prediction:
        """This prediction (made for ``rows``) spread over all ``num_rows`` rows, zeros in the others."""
        if rows.numel() == num_rows:  # rows is an ascending subset of 0..N-1, so here it is all of them
            return self
        out = []
        for part in (self.values, self.confidence, self.chance):
            full = part.new_zeros((num_rows, *part.shape[1:]))
            full[rows] = part
            out.append(full)
        return Prediction(*out)


class Rule:
    """A reveal rule: its skip test (:meth:`may_reveal`), its value draw (:meth:`draw`), its reveal
    decision (:meth:`reveal`) and its options (:attr:`option_names`, :meth:`check`).

    The first line of a subclass's docstring is its one-line summary (the CLI lists it).
    """

    option_names: ClassVar[tuple[str, ...]] = ()  # SamplerOptions fields this rule reads: its constructor's keywords
    from_transition: ClassVar[bool] = False  # draw values from the reverse transition mu(v) p_reveal[v], not mu(v)

    @classmethod
    def check(cls, options: SamplerOptions) -> list[str]:
        """What is wrong with this rule's own options in ``options`` (one message each; none by default)."""
        return []

    @classmethod
    def from_options(cls, options: SamplerOptions) -> Rule:
        """The rule with its options taken from ``options``."""
        return cls(**{name: getattr(options, name) for name in cls.option_names})

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring, without its final full stop."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].rstrip(".") if doc else ""

    def may_reveal(self, step: StepContext) -> torch.Tensor:
        """[N] bool: rows that may reveal something in this step; the network runs only for these.

        By default every row with a masked position. A rule whose reveals do not depend on the
        prediction can say more, and so save network calls.
        """
        return step.masked.any(-1)

    def draw(
        self, probs: torch.Tensor, u_value: torch.Tensor, p_reveal: torch.Tensor, last: bool, model_probs: torch.Tensor | None = None
    ) -> Prediction:
        """Values for the R rows the network ran on, by inverse-CDF sampling with ``u_value`` [R, L].

        ``probs`` [R, L, V] is the prediction after temperature, top-k and top-p; confidence is
        read from ``model_probs`` (default ``probs``; the sampler passes the unfiltered softmax
        at temperature 0, whose ``probs`` are one-hot). With a per-value ``p_reveal`` [V] a rule
        with :attr:`from_transition` draws v in proportion to mu(v) p_reveal[v], the value a
        revealed position has under the exact reverse transition; on a block's ``last`` step,
        which reveals everything, every rule draws from mu itself.
        """
        weighted = probs * p_reveal if p_reveal.ndim > 0 and not last else probs
        values = categorical(weighted if self.from_transition else probs, u_value)
        model_probs = probs if model_probs is None else model_probs
        confidence = model_probs.gather(-1, values.unsqueeze(-1)).squeeze(-1)
        return Prediction(values, confidence, weighted.sum(-1))

    def reveal(self, step: StepContext, prediction: Prediction) -> torch.Tensor:
        """[N, L] bool: the masked positions that take their drawn value in this (not last) step.

        Rows that :meth:`may_reveal` excluded must reveal nothing (their prediction is zeros when
        the network skipped them).
        """
        raise NotImplementedError


RULES: Registry[type[Rule]] = Registry("sampling method")


# ---------------------------------------------------------------- helpers of the rules
def reveal_counts(masked: torch.Tensor, p_reveal, tokens_per_step: int = 0) -> torch.Tensor:
    """How many positions each row reveals in a count-based rule: the number the schedule expects
    (rounded), or ``tokens_per_step`` where it is set.

    masked [N, L] bool; p_reveal a float, or [N, L] per position for state-dependent schedules.  -> [N]
    """
    if tokens_per_step:
        return masked.sum(-1).clamp_max(tokens_per_step)
    return torch.round((masked * p_reveal).double().sum(-1)).long()


def top_ranked(scores: torch.Tensor, eligible: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The ``counts[i]`` eligible positions of row i with the highest scores (ties: the leftmost).  -> bool [N, L]"""
    scores = torch.where(eligible, scores, -math.inf)
    ranks = scores.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1, stable=True)
    return eligible & (ranks < counts[:, None])


def check_rule_options(options: SamplerOptions) -> list[str]:
    """Problems with the rule part of ``options``: an unknown method, the rule's own :meth:`Rule.check`,
    and options that are off by default (0) but set for a rule that does not read them."""
    try:
        rule = RULES.get(options.method)
    except MaskdiffError as err:
        return [str(err)]
    problems = rule.check(options)
    defaults = {field.name: field.default for field in dataclasses.fields(options)}
    readers: dict[str, list[str]] = {}
    for name, other in RULES.items():
        for option in other.option_names:
            readers.setdefault(option, []).append(name)
    for option, names in readers.items():
        off = defaults.get(option)
        if option not in rule.option_names and not off and getattr(options, option) != off:
            problems.append(f"{option} applies to the {' and '.join(names)} rule{'s' if len(names) > 1 else ''}")
    return problems


# ---------------------------------------------------------------- the rules
@RULES.register("ancestral")
class Ancestral(Rule):
    """MD4's reverse process; a step that reveals nothing skips the network.

    From t to s each masked position is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t).
    Which positions are revealed does not depend on the network, so a row none of whose reveal
    draws falls below that chance is not sent to it. With a state-dependent schedule (GenMD4,
    ``alpha`` per token value) a position is revealed as v with probability
    mu(v) (alpha_v(s) - alpha_v(t)) / (1 - alpha_v(t)); a row is still skipped when none of its
    draws falls below the largest of these chances.
    """

    from_transition = True

    def candidates(self, step: StepContext) -> torch.Tensor:
        """[N, L] bool: masked positions whose draw is below the largest reveal chance; the others stay
        masked whatever the network says."""
        return step.masked & (step.u_reveal < step.p_reveal.max())

    def may_reveal(self, step: StepContext) -> torch.Tensor:
        return self.candidates(step).any(-1)

    def reveal(self, step: StepContext, prediction: Prediction) -> torch.Tensor:
        candidates = self.candidates(step)
        return candidates & (step.u_reveal < prediction.chance) if step.per_value else candidates


@RULES.register("mean")
class Mean(Ancestral):
    """MD4's two-step form of the ancestral step: the same samples, a network call every step.

    A value is drawn for every masked position first, then the reveal decisions are made. The
    transition has the same distribution as ``ancestral``, and with maskdiff's random streams
    even the same samples, but the network is called whenever anything is masked.
    """

    def may_reveal(self, step: StepContext) -> torch.Tensor:
        return Rule.may_reveal(self, step)


class RankedRule(Rule):
    """Reveal the k best-ranked masked positions of each row (the base of count-based rules).

    k is the number the schedule expects (rounded; under GenMD4 the sum of the positions'
    reveal chances), or ``tokens_per_step``. Subclasses give the ranking (:meth:`scores`).
    """

    option_names = ("tokens_per_step",)

    def __init__(self, tokens_per_step: int = 0):
        self.tokens_per_step = tokens_per_step

    @classmethod
    def check(cls, options: SamplerOptions) -> list[str]:
        if options.tokens_per_step < 0:
            return [f"tokens_per_step must be >= 0, got {options.tokens_per_step}"]
        return []

    def scores(self, step: StepContext, prediction: Prediction) -> torch.Tensor:
        """[N, L]: higher is revealed first."""
        raise NotImplementedError

    def may_reveal(self, step: StepContext) -> torch.Tensor:
        if step.per_value:  # the count depends on the predicted values
            return step.masked.any(-1)
        return reveal_counts(step.masked, step.p_reveal.item(), self.tokens_per_step) > 0

    def reveal(self, step: StepContext, prediction: Prediction) -> torch.Tensor:
        chance = prediction.chance if step.per_value else step.p_reveal.item()
        counts = reveal_counts(step.masked, chance, self.tokens_per_step)
        return top_ranked(self.scores(step, prediction), step.masked, counts)


@RULES.register("low_confidence")
class LowConfidence(RankedRule):
    """MaskGIT/LLaDA remasking: the k positions whose drawn value the model is surest of.

    Values are drawn for all masked positions and the k with the highest predicted probability
    are revealed (at temperature 0: the model's probability before the argmax).
    """

    def scores(self, step: StepContext, prediction: Prediction) -> torch.Tensor:
        return prediction.confidence


@RULES.register("random")
class RandomOrder(RankedRule):
    """k positions chosen uniformly at random.

    The ranking is the step's reveal draws, so which positions are revealed does not depend on
    the network; with ``tokens_per_step=1`` this is an exact any-order chain-rule sampler.
    """

    def scores(self, step: StepContext, prediction: Prediction) -> torch.Tensor:
        return step.u_reveal


@RULES.register("threshold")
class Threshold(Rule):
    """Every position whose drawn value is at least threshold likely, and at least one (parallel decoding).

    Reveals every masked position whose drawn value has probability >= ``threshold``, and in
    every row with a masked position at least the most confident one, so that each step moves.
    """

    option_names = ("threshold",)

    def __init__(self, threshold: float):
        self.threshold = threshold

    @classmethod
    def check(cls, options: SamplerOptions) -> list[str]:
        if not 0 < options.threshold <= 1:
            return [f"threshold must be in (0, 1], got {options.threshold}"]
        return []

    def reveal(self, step: StepContext, prediction: Prediction) -> torch.Tensor:
        most = top_ranked(prediction.confidence, step.masked, step.masked.any(-1).long())
        return step.masked & ((prediction.confidence >= self.threshold) | most)
