"""How to sample: the options every rule shares, declared once, and :class:`SamplerOptions`, which
holds them with the chosen rule's own.

``SamplerOptions(method="remdm", eta=0.2, top_p=0.9)`` takes every option by its name: the shared
ones are the fields of :class:`CommonOptions`, the rule's are the fields of its ``Options``
dataclass (:mod:`maskdiff.sampling.rules`). A name no rule declares, or an option of another rule
that is off by default (0) set to something else, is an :class:`~maskdiff.sampling.options.OptionError`
naming it. Earlier spellings keep working for one release with a ``DeprecationWarning``:
``cache=False`` is ``recompute=True``.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from maskdiff.errors import MaskdiffError
from maskdiff.sampling.cache import CACHE_MODES
from maskdiff.sampling.distributions import GRIDS
from maskdiff.sampling.options import Declared, Option, OptionError, OptionGroup, declared, literal
from maskdiff.sampling.rules import RULES, Rule, option_readers

STEPS = Option(256, "reverse-process steps (autoregressive runs take one per token and ignore it)", minimum=1, metavar="N")


@dataclass(frozen=True)
class CommonOptions(OptionGroup):
    """The options every rule reads (each field's Option is its declaration)."""

    method: str = Option("ancestral", "the reveal rule: which positions each step reveals", choices=RULES.names).field()
    grid: str = Option("cosine", "the time grid of the steps", choices=GRIDS).field()
    temperature: float = Option(1.0, "softmax temperature; 0 takes the most likely token", minimum=0).field()
    top_k: int = Option(0, "draw from the k most likely tokens only (0: all)", minimum=0, metavar="K").field()
    top_p: float = Option(1.0, "draw from the smallest set of tokens holding this much probability", above=0, maximum=1, metavar="P").field()
    block_size: int = Option(0, "semi-autoregressive blocks of this many tokens, left to right (0: off)", minimum=0, metavar="N").field()
    cfg: float = Option(0.0, "classifier-free guidance weight w towards the prompt or label: u + (w + 1)(c - u) (0: off)", metavar="W").field()
    kv_cache: str = Option(
        "none",
        "block decoding on a KV cache (needs {block_size}): prefix keeps the decoded blocks' keys/values, dual also the later masked blocks'",
        choices=CACHE_MODES,
        aliases=("--cache",),
    ).field()
    refresh: int = Option(
        0, "with {kv_cache}: a full pass over the sequence every N steps of a block (0: at block starts only)", minimum=0, metavar="N"
    ).field()
    recompute: bool = Option(
        False,
        "call the network every step on the whole sequence: no skipping of steps that reveal nothing, and autoregressive "
        "runs recompute the prefix instead of using their KV cache (the same samples, slower; for checking)",
        deprecated=("--no-cache",),
    ).field()
    min_length: int = Option(0, "no end-of-text token before this position (needs {eos_id})", minimum=0, metavar="N").field()
    eos_id: int | None = Option(
        None, "the end-of-text token id, for {min_length} and {truncate_after_eos}", minimum=0, flag="eos", internal=True
    ).field()
    truncate_after_eos: bool = Option(False, "fill every position after the first end of text with it", internal=True).field()

    def relations(self) -> list[OptionError]:
        problems = []
        if self.kv_cache != "none" and not self.block_size:
            problems.append(
                OptionError("kv_cache", f"{{kv_cache}} {self.kv_cache} caches the blocks outside the one being decoded: it needs {{block_size}}")
            )
        if self.refresh and self.kv_cache == "none":
            problems.append(OptionError("refresh", "{refresh} applies to {kv_cache} prefix or dual"))
        if self.min_length and self.eos_id is None:
            problems.append(OptionError("min_length", f"{{min_length}} {self.min_length} has no end-of-text token to keep out: need {{eos_id}}"))
        if self.truncate_after_eos and self.eos_id is None:
            problems.append(OptionError("truncate_after_eos", "{truncate_after_eos} has no end-of-text token to cut at: need {eos_id}"))
        return problems


def _unknown_method(method: str) -> None:
    try:
        RULES.get(method)
    except MaskdiffError as err:
        raise OptionError("method", literal(str(err))) from None


RENAMED = {"cache": ("recompute", lambda value: not value)}  # earlier name -> (name, value map), kept for one release


class SamplerOptions(CommonOptions):
    """How to sample: the shared options and the chosen rule's own (``method``), checked when built.

    Every option reads as an attribute: ``options.top_p``, ``options.eta`` (an option of another
    rule reads as its default). :meth:`values` gives those set, :meth:`key` a hashable identity.
    """

    rule_options: OptionGroup  # the chosen rule's options dataclass

    def __init__(self, method: str = "ancestral", **values: Any):
        values = renamed(values)
        common_names = {item.name for item in declared(CommonOptions)}
        readers = option_readers()
        for name in values:
            if name not in common_names and name not in readers:
                raise OptionError(name, f"unknown sampler option {literal(repr(name))}")
        if method not in RULES:
            _unknown_method(method)
        rule = RULES.get(method)
        own = set(rule.option_names())
        defaults = rule_defaults()
        for name, value in values.items():
            # an option that is off by default (0) but set for a rule that never reads it; one with a
            # value by default (threshold, t_on) may be given to any rule and is ignored
            if name in readers and name not in own and not defaults[name] and value != defaults[name]:
                rules = readers[name]
                raise OptionError(name, f"{{{name}}} applies to the {' and '.join(rules)} rule{'s' if len(rules) > 1 else ''}")
        super().__init__(method=method, **{k: v for k, v in values.items() if k in common_names})
        object.__setattr__(self, "rule_options", rule.Options(**{k: v for k, v in values.items() if k in own}))

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("rule_options")
        if options is not None and hasattr(options, name):
            return getattr(options, name)
        defaults = rule_defaults()
        if name in defaults:  # another rule's option: off
            return defaults[name]
        raise AttributeError(f"'SamplerOptions' object has no attribute {name!r}")

    @property
    def cache(self) -> bool:
        """The earlier name of ``not recompute``, kept for one release."""
        return not self.recompute

    def values(self) -> dict[str, Any]:
        """Every option of this sampler (the shared ones and the rule's) by name."""
        shared = {item.name: getattr(self, item.name) for item in declared(CommonOptions)}
        own = {item.name: getattr(self.rule_options, item.name) for item in declared(type(self.rule_options))}
        return {**shared, **own}

    def key(self) -> Hashable:
        """A hashable identity: samplers with equal keys sample alike (the server batches by it)."""
        return tuple(sorted(self.values().items()))

    def replace(self, **changes: Any) -> SamplerOptions:
        """These options with ``changes``."""
        return SamplerOptions(**{**self.values(), **changes})

    def rule(self) -> Rule:
        """The reveal rule named by ``method``, built with its options."""
        return RULES.get(self.method).from_options(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SamplerOptions) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.values().items())
        return f"SamplerOptions({shown})"


def renamed(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with earlier option names replaced by the current ones (a DeprecationWarning each)."""
    out = dict(values)
    for old, (new, convert) in RENAMED.items():
        if old in out:
            warnings.warn(f"sampler option {old!r} is now {new!r}", DeprecationWarning, stacklevel=3)
            out[new] = convert(out.pop(old))
    return out


def rule_defaults() -> dict[str, Any]:
    """Each rule option's declared default (what it is for a rule that does not read it)."""
    return {item.name: item.option.default for _, rule in RULES.items() for item in declared(rule.Options)}


def every_option() -> Iterator[tuple[Declared, tuple[str, ...]]]:
    """Every public option once, with the rules that read it (empty: every rule): the shared ones
    first, then the rules' in registration order. What the fronts generate their fields from."""
    for item in declared(CommonOptions):
        if not item.option.internal:
            yield item, ()
    readers = option_readers()
    seen: set[str] = set()
    for _, rule in RULES.items():
        for item in declared(rule.Options):
            if item.name not in seen and not item.option.internal:
                seen.add(item.name)
                yield item, tuple(readers[item.name])
