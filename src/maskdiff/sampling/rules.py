"""Reveal rules: which masked positions a reverse step reveals, one small class per rule, registered by name.

Every step of the sampler (:func:`maskdiff.sampling.iterate`) asks its rule three things:

1. :meth:`Rule.may_reveal`, the skip test: which rows (samples) may reveal something in this
   step. It is asked before the network runs, so it sees the masks, the step's reveal draws and
   the schedule's reveal chance but not the prediction; the network is called only for these rows.
2. :meth:`Rule.draw`: a value for every position of the rows the network ran on, drawn from the
   prediction (after temperature, top-k and top-p) with the step's value draws.
3. :meth:`Rule.reveal`: given that prediction, which masked positions take their drawn value.

On the last step of a block the sampler reveals everything still masked itself, so a rule is
asked only about the steps before it. A rule's own options are the fields of its options
dataclass (:attr:`Rule.Options`), each declared once with its doc, default and range
(:class:`~maskdiff.sampling.options.Option`): ``SamplerOptions``, the CLI's flags and the
server's request fields are generated from them, and the rule is built from them
(``Threshold(0.8)`` or ``Threshold(threshold=0.8)``; ``rule.options.threshold``). A rule is a
subclass registered in :data:`RULES` (``@RULES.register("name")``); ``SamplerOptions(method=...)``,
``model.sample(method=...)``, the CLI's ``--method`` choices and the server read that table, so
adding a rule, or an option of a rule, touches no other file.

Shapes: N rows (samples) of L positions over V token values.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from maskdiff.registry import Registry
from maskdiff.sampling.distributions import categorical
from maskdiff.sampling.options import Option, OptionError, OptionGroup, declared

# the flat options of a sampler: a maskdiff.sampling.SamplerOptions, which itself asks RULES for the
# method's name (so this module does not import it: the settings depend on the rules, not the reverse)
SamplerOptions = Any


@dataclass
class StepContext:
    """What a rule knows about a reverse step before the network is called."""

    masked: torch.Tensor  # [N, L] bool: masked positions that this step may reveal (those of the current block)
    u_reveal: torch.Tensor  # [N, L] U[0, 1) draws for the reveal decisions (drawn every step, used or not)
    p_reveal: torch.Tensor  # chance that a masked position is revealed by this step: 0-d, or [V] per token value
    last: bool = False  # the block's last step (the sampler then reveals everything still masked)
    z: torch.Tensor | None = None  # [N, L] the state before the step (remasking rules read the revealed values)
    remaskable: torch.Tensor | None = None  # [N, L] bool: revealed positions of the current block that are not given
    p_remask: torch.Tensor | None = None  # chance that a revealed position is masked again: 0-d, [V] per value, or None (never)

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


@dataclass
class NoOptions(OptionGroup):
    """The options of a rule that has none of its own."""


class Rule:
    """A reveal rule: its skip test (:meth:`may_reveal`), its value draw (:meth:`draw`), its reveal
    decision (:meth:`reveal`) and its options (:attr:`Options`, a dataclass of declared fields).

    The first line of a subclass's docstring is its one-line summary (the CLI lists it).
    """

    Options: ClassVar[type[OptionGroup]] = NoOptions  # this rule's options: fields declared with maskdiff.sampling.options.Option
    from_transition: ClassVar[bool] = False  # draw values from the reverse transition mu(v) p_reveal[v], not mu(v)

    def __init__(self, *args: Any, **values: Any):
        """The rule with its options (positional in the order of :attr:`Options`' fields, or by name)."""
        self.options = self.Options(*args, **values)

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and hasattr(options, name):  # rule.threshold reads rule.options.threshold
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of this rule's own options."""
        return tuple(item.name for item in declared(cls.Options))

    @classmethod
    def check(cls, options: SamplerOptions) -> list[str]:
        """What is wrong with this rule's own options in the flat ``options`` (one message; none: [])."""
        try:
            cls.options_from(options)
        except OptionError as err:
            return [str(err)]
        return []

    @classmethod
    def options_from(cls, options: SamplerOptions) -> OptionGroup:
        """This rule's options, read from flat ``options`` (a SamplerOptions or anything with the fields)."""
        return cls.Options(**{name: getattr(options, name) for name in cls.option_names()})

    @classmethod
    def from_options(cls, options: SamplerOptions) -> Rule:
        """The rule with its options taken from ``options``."""
        rule = cls.__new__(cls)
        rule.options = cls.options_from(options)
        return rule

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring, without its final full stop."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].rstrip(".") if doc else ""

    def transition(self, alpha_t: torch.Tensor, alpha_s: torch.Tensor, t: float, s: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step from t to s (grid times): the chance that a masked position is revealed, and the
        chance that a revealed one is masked again (None: never).

        ``alpha_t``, ``alpha_s``: the schedule there, 0-d or [V] per token value. By default MD4's
        reverse process, (alpha_s - alpha_t) / (1 - alpha_t), and no remasking.
        """
        return (alpha_s - alpha_t) / (1 - alpha_t), None

    def warp(self, times: torch.Tensor, schedule: Any, device=None) -> torch.Tensor:
        """The diffusion times [steps+1] of a block's time grid ``times`` (default: the grid itself);
        ``schedule`` is the model's (its ``alpha`` on ``device``)."""
        return times

    def remask(self, step: StepContext) -> torch.Tensor | None:
        """[N, L] bool: revealed positions masked again by this step, decided before the network runs
        (None: none, the default)."""
        return None

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


# ---------------------------------------------------------------- the rules' options, each declared once
MAX_TOKENS_PER_STEP = Option(0, "reveal at most N positions per step (0: no cap)", minimum=0, metavar="N")


@dataclass
class RankedOptions(OptionGroup):
    tokens_per_step: int = Option(0, "reveal this many positions per step (0: as many as the schedule expects)", minimum=0, metavar="N").field()


@dataclass
class ConfidenceOptions(OptionGroup):
    max_tokens_per_step: int = MAX_TOKENS_PER_STEP.field()


@dataclass
class ThresholdOptions(OptionGroup):
    threshold: float = Option(0.9, "reveal every position whose drawn value is at least this likely", above=0, maximum=1, metavar="P").field()
    max_tokens_per_step: int = MAX_TOKENS_PER_STEP.field()


@dataclass
class FactorOptions(OptionGroup):
    factor: float = Option(1.0, "reveal the n most confident positions while (n + 1)(1 - p_n) < F", above=0, metavar="F").field()
    max_tokens_per_step: int = MAX_TOKENS_PER_STEP.field()


REMASK_MODES = ("cap", "rescale", "loop")
REMASK_SCHEDULES = REMASK_MODES  # the earlier name, kept for one release


@dataclass
class RemaskingOptions(OptionGroup):
    eta: float = Option(0.0, "remasking strength (0: the ancestral sampler)", minimum=0, maximum=1).field()
    remask: str = Option("cap", "how the remasking chance sigma is chosen", choices=REMASK_MODES).field()
    t_on: float = Option(0.55, "loop mode: alpha is held constant for grid times in [{t_off}, {t_on}]", above=0, below=1).field()
    t_off: float = Option(0.05, "loop mode: the end of that window", above=0, below=1).field()
    alpha_on: float = Option(0.9, "loop mode: the alpha held in the window (reached at {t_on})", above=0, below=1).field()

    def relations(self) -> list[OptionError]:
        if not self.t_off < self.t_on:
            return [OptionError("t_off", f"need 0 < {{t_off}} < {{t_on}} < 1, got {{t_off}}={self.t_off} and {{t_on}}={self.t_on}")]
        return []


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


def option_readers() -> dict[str, list[str]]:
    """Each rule option's name -> the registered rules that read it."""
    readers: dict[str, list[str]] = {}
    for name, rule in RULES.items():
        for option in rule.option_names():
            readers.setdefault(option, []).append(name)
    return readers


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

    Options = RankedOptions
    options: RankedOptions

    def scores(self, step: StepContext, prediction: Prediction) -> torch.Tensor:
        """[N, L]: higher is revealed first."""
        raise NotImplementedError

    def may_reveal(self, step: StepContext) -> torch.Tensor:
        if step.per_value:  # the count depends on the predicted values
            return step.masked.any(-1)
        return reveal_counts(step.masked, step.p_reveal.item(), self.options.tokens_per_step) > 0

    def reveal(self, step: StepContext, prediction: Prediction) -> torch.Tensor:
        chance = prediction.chance if step.per_value else step.p_reveal.item()
        counts = reveal_counts(step.masked, chance, self.options.tokens_per_step)
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


class ConfidenceRule(Rule):
    """Parallel decoding by confidence: a rule reveals the positions its test admits, at least the
    most confident one per row, and at most ``max_tokens_per_step`` (0: no cap)."""

    Options: ClassVar[type[OptionGroup]] = ConfidenceOptions
    options: ConfidenceOptions | ThresholdOptions | FactorOptions

    def counts(self, step: StepContext, confidence: torch.Tensor) -> torch.Tensor:
        """[N]: how many of the most confident masked positions each row reveals, before the cap and the floor of one."""
        raise NotImplementedError

    def reveal(self, step: StepContext, prediction: Prediction) -> torch.Tensor:
        counts = self.counts(step, prediction.confidence).clamp_min(step.masked.any(-1).long())
        if self.options.max_tokens_per_step:
            counts = counts.clamp_max(self.options.max_tokens_per_step)
        return top_ranked(prediction.confidence, step.masked, counts)


@RULES.register("threshold")
class Threshold(ConfidenceRule):
    """Every position whose drawn value is at least threshold likely, and at least one (parallel decoding).

    Reveals every masked position whose drawn value has probability >= ``threshold``, and in
    every row with a masked position at least the most confident one, so that each step moves;
    at most ``max_tokens_per_step`` (the most confident ones) when that is set.
    """

    Options = ThresholdOptions
    options: ThresholdOptions

    def counts(self, step: StepContext, confidence: torch.Tensor) -> torch.Tensor:
        return (step.masked & (confidence >= self.options.threshold)).sum(-1)


@RULES.register("factor")
class Factor(ConfidenceRule):
    """The n most confident positions while (n + 1)(1 - p_n) < factor, and at least one (Fast-dLLM).

    With the masked positions' confidences sorted p_1 >= p_2 >= ..., a row reveals the n most
    confident for the largest n such that (n + 1)(1 - p_k) < ``factor`` for every k <= n
    (the left side grows with k), and at least one; at most ``max_tokens_per_step``.
    """

    Options = FactorOptions
    options: FactorOptions

    def counts(self, step: StepContext, confidence: torch.Tensor) -> torch.Tensor:
        ranked = torch.where(step.masked, confidence, -math.inf).sort(dim=-1, descending=True).values  # p_1 >= p_2 >= ...
        n = torch.arange(1, ranked.shape[-1] + 1, device=ranked.device, dtype=ranked.dtype)
        admitted = ((n + 1) * (1 - ranked) < self.options.factor) & (ranked > -math.inf)
        return admitted.long().cumprod(-1).sum(-1)  # the leading run: stop at the first n that fails


@RULES.register("remdm")
class Remasking(Ancestral):
    """ReMDM: the ancestral step, and revealed tokens may be masked again, so more steps buy better samples.

    From t to s a revealed position (not a given one) of the current block is masked again with
    probability sigma, and a masked one is revealed with (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t),
    which keeps the marginals of the forward process; sigma <= (1 - alpha_s) / alpha_t keeps that a
    probability. ``remask`` (the mode) picks sigma: ``cap``, min(eta, (1 - alpha_s)/alpha_t); ``rescale``,
    eta * min(1, (1 - alpha_s)/alpha_t); ``loop``, three phases of the time grid: plain ancestral
    steps from t = 1 to ``t_on`` that reach alpha = ``alpha_on``, then alpha held there for grid
    times in [t_off, t_on] with the cap's sigma (as many reveals as remasks, in expectation),
    then plain ancestral steps to t = 0 (per-value schedules hold the time at which the mean of
    alpha over the values is alpha_on). The block's last step never remasks, so no mask is left.
    With ``eta`` = 0 this is the ``ancestral`` rule exactly (same draws, same samples); the remask
    decision uses the reveal draw of the revealed position, which the ancestral step leaves
    unused. State-dependent schedules (GenMD4) get sigma per token value.
    """

    Options = RemaskingOptions
    options: RemaskingOptions

    @property
    def mode(self) -> str:
        """How sigma is chosen: cap, rescale or loop (the ``remask`` option)."""
        return self.options.remask

    @property
    def schedule(self) -> str:
        """The earlier name of :attr:`mode`, kept for one release (``schedule`` elsewhere is alpha(t))."""
        warnings.warn("Remasking.schedule is now Remasking.mode", DeprecationWarning, stacklevel=2)
        return self.mode

    def in_loop(self, t: float) -> bool:
        """Whether the step from grid time t lies in the loop's window, where alpha is held."""
        return self.mode == "loop" and self.options.eta > 0 and self.options.t_off < t <= self.options.t_on

    def warp(self, times: torch.Tensor, schedule: Any, device=None) -> torch.Tensor:
        if self.mode != "loop" or self.options.eta == 0:
            return times
        held = hold_time(schedule, self.options.alpha_on, device)
        before = held + (times - self.options.t_on) * (1 - held) / (1 - self.options.t_on)  # [t_on, 1] -> [held, 1]
        after = times * (held / self.options.t_off)  # [0, t_off] -> [0, held]
        return torch.where(times > self.options.t_on, before, torch.where(times < self.options.t_off, after, torch.full_like(times, held)))

    def transition(self, alpha_t: torch.Tensor, alpha_s: torch.Tensor, t: float, s: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.options.eta == 0 or (self.mode == "loop" and not self.in_loop(t)):
            return super().transition(alpha_t, alpha_s, t, s)
        bound = ((1 - alpha_s) / alpha_t).clamp(0, 1)  # the largest sigma that keeps the reveal chance <= 1
        sigma = bound * self.options.eta if self.mode == "rescale" else bound.clamp_max(self.options.eta)
        return (alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t), sigma

    def remask(self, step: StepContext) -> torch.Tensor | None:
        if step.p_remask is None or step.last or step.remaskable is None or step.z is None:
            return None
        chance = step.p_remask[step.z.clamp_max(step.p_remask.numel() - 1)] if step.p_remask.ndim > 0 else step.p_remask
        return step.remaskable & (step.u_reveal < chance)


def hold_time(schedule: Any, alpha: float, device=None, iterations: int = 60) -> float:
    """The diffusion time at which ``schedule``'s alpha (its mean over token values for per-value
    schedules) equals ``alpha``, by bisection (alpha decreases in t)."""
    low, high = 0.0, 1.0
    for _ in range(iterations):
        middle = (low + high) / 2
        value = float(schedule.alpha(torch.tensor([middle], dtype=torch.float64, device=device)).double().mean())
        low, high = (middle, high) if value > alpha else (low, middle)
    return (low + high) / 2
