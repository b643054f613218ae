"""Sampler options declared once: each is a dataclass field whose :class:`Option` carries its doc,
default, choices and range.

The rules' own options (:mod:`maskdiff.sampling.rules`) and the options every rule shares
(:mod:`maskdiff.sampling.settings`) are declared this way, and everything else is generated
from the declarations: the checks and their messages (:func:`check_fields`), the ``maskdiff
sample`` flags and their ``--help`` (:mod:`maskdiff.sampling.flags`), the server's request fields
and ``GET /api/info`` (:mod:`maskdiff.serve.requests`). A new option is one field in one file.

A problem with an option is an :class:`OptionError` that names the option as data (``.field``),
so each front can say it in its own words: ``--top-p must be in (0, 1]`` on the command line,
``param: "top_p"`` over HTTP, ``top_p must be in (0, 1]`` in Python.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from maskdiff.errors import MaskdiffError

OPTION = "maskdiff.option"  # the metadata key of a declared field


class OptionError(MaskdiffError):
    """A sampler option the sampler refuses; ``field`` is its name (its flag: ``--`` and dashes).

    The message is a template in which ``{name}`` stands for option ``name``; :meth:`render`
    writes it with each front's spelling of the names (``str(err)`` uses the Python names).
    """

    def __init__(self, field: str, template: str):
        self.field, self.template = field, template
        super().__init__(self.render(lambda name: name))

    def render(self, spell: Callable[[str], str]) -> str:
        """The message with every option named by ``spell(name)`` (e.g. a flag)."""
        return spelled(self.template, spell)


def spelled(template: str, spell: Callable[[str], str] = lambda name: name) -> str:
    """``template`` with every ``{name}`` written as ``spell(name)`` (messages and docs name options this way)."""
    return template.format_map(_Spelled(spell))


class _Spelled(dict):
    def __init__(self, spell: Callable[[str], str]):
        super().__init__()
        self.spell = spell

    def __missing__(self, key: str) -> str:
        return self.spell(key)


def literal(value: Any) -> str:
    """A value for a message template (braces doubled, so they are not read as option names)."""
    return str(value).replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class Option:
    """The declaration of one option: what a front needs to offer it and check it.

    Bounds: ``minimum``/``maximum`` are inclusive, ``above``/``below`` exclusive. ``choices``
    may be a function (the registered rules are read when asked). ``flag`` is the option's name
    for the user where it differs from the field's (``eos_id`` is set by ``--eos``); ``internal``
    options are set by a front from other input, never a flag or request field of their own.
    ``doc`` names other options as ``{name}`` (each front spells them its way, :func:`spelled`).
    ``aliases`` are other flag spellings that keep working; ``deprecated`` ones also print a
    one-line note that names the current flag (they go after one release).
    """

    default: Any
    doc: str
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    metavar: str | None = None
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    deprecated: tuple[str, ...] = ()
    internal: bool = False

    def field(self) -> Any:
        """The dataclass field of this declaration."""
        return dataclasses.field(default=self.default, metadata={OPTION: self})

    def allowed(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    def range_text(self) -> str | None:
        """The allowed range in words: "in (0, 1]", ">= 0", ... (None: any number)."""
        low = self.minimum if self.minimum is not None else self.above
        high = self.maximum if self.maximum is not None else self.below
        if low is not None and high is not None:
            return f"in {'[' if self.minimum is not None else '('}{_num(low)}, {_num(high)}{']' if self.maximum is not None else ')'}"
        if low is not None:
            return f"{'>=' if self.minimum is not None else '>'} {_num(low)}"
        if high is not None:
            return f"{'<=' if self.maximum is not None else '<'} {_num(high)}"
        return None

    def check(self, name: str, kind: type, value: Any) -> OptionError | None:
        """What is wrong with ``value`` for this option (of Python type ``kind``), or None."""
        if not _is(kind, value):
            return OptionError(name, f"{{{name}}} must be {_kind_name(kind)}, got {literal(repr(value))}")
        if value is None or isinstance(value, bool):
            return None
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            return OptionError(name, f"unknown {{{name}}} {literal(repr(value))}; choose one of {literal(', '.join(allowed))}")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                return OptionError(name, f"{{{name}}} must be a finite number, got {value}")
            low_ok = (self.minimum is None or value >= self.minimum) and (self.above is None or value > self.above)
            high_ok = (self.maximum is None or value <= self.maximum) and (self.below is None or value < self.below)
            if not (low_ok and high_ok):
                return OptionError(name, f"{{{name}}} must be {self.range_text()}, got {value}")
        return None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _is(kind: Any, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return value is None or any(_is(k, value) for k in typing.get_args(kind) if k is not type(None))


def _kind_name(kind: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if kind in names:
        return names[kind]
    return " or ".join(["null" if k is type(None) else names[k] for k in typing.get_args(kind)])


@dataclass(frozen=True)
class Declared:
    """One declared option of a dataclass: its name, Python type and declaration."""

    name: str
    kind: Any  # bool, int, float, str or an Optional of one
    option: Option

    @property
    def flag(self) -> str:
        """The command-line flag: ``--`` and the name with dashes."""
        return "--" + (self.option.flag or self.name).replace("_", "-")


def declared(cls: type) -> Iterator[Declared]:
    """The declared options of an options dataclass (or of an instance's class), in field order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if OPTION in f.metadata:
            yield Declared(f.name, hints[f.name], f.metadata[OPTION])


def check_fields(options: Any) -> list[OptionError]:
    """The problems of every declared field of the options dataclass ``options``, one per field."""
    problems = []
    for item in declared(type(options)):
        problem = item.option.check(item.name, item.kind, getattr(options, item.name))
        if problem is not None:
            problems.append(problem)
    return problems


def raise_all(problems: list[OptionError]) -> None:
    """Raise the problems as one error (its field: the first one's; its message: all of them)."""
    if problems:
        raise OptionError(problems[0].field, "; ".join(p.template for p in problems))


class OptionGroup:
    """The base of an options dataclass: its fields are checked when it is built, then its
    :meth:`relations` (problems between fields); every problem found is reported."""

    def __post_init__(self) -> None:
        problems = check_fields(self)
        raise_all(problems or self.relations())

    def relations(self) -> list[OptionError]:
        """Problems between fields, with fields that are each valid (none by default)."""
        return []
