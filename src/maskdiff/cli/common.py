"""What every subcommand's parser shares: one-line usage errors, exit codes, --threads and --resume."""

from __future__ import annotations

import argparse

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
