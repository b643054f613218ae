"""What every subcommand's parser shares: one-line usage errors, exit codes, subcommands whose flags
are added on first use, --threads and --resume, and the conversion of the parsed flags into each
handler's typed inputs."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

EXIT_ERROR = 1
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (no usage block before them)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[Parser]
else:
    _SubParsers = argparse._SubParsersAction


class Commands(_SubParsers):
    """Subcommands whose parsers get their flags on first use (``add_subparsers(action=Commands)``).

    Parsing ``maskdiff train ...`` fills only train's parser, so ``maskdiff --help``, a usage error
    and each command's own flags import nothing that another command's flags need (the sampler's
    rules, and with them torch). :meth:`fill_all` gives the whole tree at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fills: dict[str, Callable[[Parser], None]] = {}

    def add_command(self, name: str, help: str, fill: Callable[[Parser], None]) -> None:
        """Add command ``name`` (listed with ``help``); ``fill(parser)`` adds its description and flags when it is used."""
        self.add_parser(name, help=help)
        self.fills[name] = fill

    def parser_of(self, name: str) -> Parser:
        """The parser of command ``name``, with its flags."""
        parser = self.choices[name]
        fill = self.fills.pop(name, None)
        if fill is not None:
            fill(parser)
        return parser

    def fill_all(self) -> None:
        """Every command's flags, nested commands' included."""
        for name in list(self.choices):
            for action in self.parser_of(name)._actions:
                if isinstance(action, Commands):
                    action.fill_all()

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        if values and values[0] in self.choices:  # an unknown name is argparse's "invalid choice"
            self.parser_of(values[0])
        super().__call__(parser, namespace, values, option_string)


def add_commands(parser: argparse.ArgumentParser, dest: str, metavar: str) -> Commands:
    """The required subcommands of ``parser``, filled on first use."""
    commands = parser.add_subparsers(dest=dest, required=True, parser_class=Parser, metavar=metavar, action=Commands)
    assert isinstance(commands, Commands)
    return commands


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: auto, all cores, or 1 while other processes keep the cores busy)")


def add_resume(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        choices=("yes", "auto"),
        help=f"continue {what} in --out from its newest intact checkpoint; '--resume auto' starts it if it has none",
    )


# ------------------------------------------------------------------ typed handler inputs
Inputs = TypeVar("Inputs", bound="DataclassInstance")


def inputs_of(cls: type[Inputs], args: argparse.Namespace, **given: Any) -> Inputs:
    """A handler's typed inputs: the dataclass ``cls`` filled from the parsed flags of the same
    names (and the fields in ``given``, values made from several flags)."""
    return cls(**{field.name: given[field.name] if field.name in given else getattr(args, field.name) for field in dataclasses.fields(cls)})


def set_handler(
    p: argparse.ArgumentParser,
    cls: type[Inputs],
    handler: Callable[[Inputs], int],
    convert: Callable[[argparse.Namespace], Inputs] | None = None,
) -> None:
    """Make ``handler`` the parser's command: :func:`maskdiff.cli.main` converts the flags into ``cls``
    once (by name, or with ``convert``), so the handler reads typed values; ``inputs`` names the
    class for the tests."""
    read = convert or (lambda args: inputs_of(cls, args))
    p.set_defaults(handler=lambda args: handler(read(args)), inputs=cls)
