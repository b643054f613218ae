"""What every subcommand's parser shares: one-line usage errors, exit codes, --threads and --resume, and
the conversion of the parsed flags into each handler's typed inputs."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

EXIT_ERROR = 1
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (no usage block before them)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


Subcommands = argparse._SubParsersAction  # what `add_subparsers` returns: each command module adds its parsers to it


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


def inputs_of(cls: type[Inputs], args: argparse.Namespace) -> Inputs:
    """A handler's typed inputs: the dataclass ``cls`` filled from the parsed flags of the same names."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def set_handler(p: argparse.ArgumentParser, cls: type[Inputs], handler: Callable[[Inputs], int]) -> None:
    """Make ``handler`` the parser's command: :func:`maskdiff.cli.main` converts the flags into ``cls``
    once, so the handler reads typed values (``inputs`` names the class for the tests)."""
    p.set_defaults(handler=lambda args: handler(inputs_of(cls, args)), inputs=cls)
