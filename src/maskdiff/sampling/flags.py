"""The sampler's command-line flags, generated from the option declarations
(:mod:`maskdiff.sampling.settings`, :mod:`maskdiff.sampling.rules`).

Each option is a flag named after it (``top_p`` is ``--top-p``) whose ``--help`` is its doc, the
rules that read it and its default; :func:`option_values` reads back the options a user set, and
:func:`flag_message` says an :class:`~maskdiff.sampling.options.OptionError` in flags
(``--top-p must be in (0, 1], got 1.5``). Deprecated spellings (``--no-cache``) still work and
print a one-line note naming the current flag.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from maskdiff.sampling.options import Declared, OptionError, declared, spelled
from maskdiff.sampling.settings import STEPS, CommonOptions, every_option


def help_text(item: Declared, rules: tuple[str, ...]) -> str:
    """An option's --help: the rules that read it, its doc, its default."""
    prefix = f"{' and '.join(rules)} rule{'s' if len(rules) > 1 else ''}: " if rules else ""
    default = item.option.default
    shown = "" if isinstance(default, bool) else f" (default {default})"
    return (prefix + spelled(item.option.doc, flag_of) + shown).replace("%", "%%")


class _Deprecated(argparse.Action):
    """An earlier spelling of a flag: works, and says once on stderr what replaces it."""

    def __init__(self, option_strings, dest, current: str, value: Any, **kw):
        super().__init__(option_strings, dest, nargs=0 if value is not None else None, **kw)
        self.current, self.value = current, value

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"maskdiff: warning: {option_string} is deprecated and goes in the next release; use {self.current}", file=sys.stderr)
        setattr(namespace, self.dest, self.value if self.value is not None else values)


def add_option_flags(parser: argparse.ArgumentParser | Any, steps_default: int | None = None) -> None:
    """Add ``--steps`` and a flag for every public sampler option to ``parser`` (or an argument group).

    The options' own defaults are not stored: :func:`option_values` returns only what was given,
    so an option of another rule left alone is no error."""
    steps = Declared("steps", int, STEPS)
    parser.add_argument(
        "--steps", type=int, default=STEPS.default if steps_default is None else steps_default, metavar="N", help=help_text(steps, ())
    )
    for item, rules in every_option():
        option = item.option
        common: dict[str, Any] = dict(dest=item.name, default=argparse.SUPPRESS, help=help_text(item, rules))
        if item.kind is bool:
            flag = item.flag if not option.default else "--no-" + item.flag[2:]
            parser.add_argument(flag, *option.aliases, action="store_false" if option.default else "store_true", **common)
            for old in option.deprecated:
                parser.add_argument(
                    old, action=_Deprecated, current=flag, value=not option.default, dest=item.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS
                )
            continue
        choices = option.allowed()
        parser.add_argument(item.flag, *option.aliases, type=item.kind, choices=choices, metavar=None if choices else option.metavar, **common)
        for old in option.deprecated:
            parser.add_argument(
                old,
                action=_Deprecated,
                current=item.flag,
                value=None,
                type=item.kind,
                dest=item.name,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )


def option_values(namespace: argparse.Namespace) -> dict[str, Any]:
    """The sampler options given on the command line, by name (``SamplerOptions(**values)``)."""
    return {item.name: getattr(namespace, item.name) for item, _ in every_option() if hasattr(namespace, item.name)}


def flag_of(name: str) -> str:
    """The flag that sets option ``name`` (internal options: the flag they come from, e.g. --eos)."""
    for item in declared(CommonOptions):
        if item.name == name:
            return item.flag
    return "--" + name.replace("_", "-")


def flag_message(err: OptionError) -> str:
    """The message of ``err`` with every option named by its flag."""
    return err.render(flag_of)
