"""The ``maskdiff`` command's entry point. It imports the command line inside ``main``, so that
Ctrl-C while it loads ends with one line instead of a traceback (torch itself loads later, inside
:func:`maskdiff.cli.main`, which says the same)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the ``maskdiff`` command (see :mod:`maskdiff.cli`)."""
    try:
        from maskdiff.cli import main as run_command
    except KeyboardInterrupt:
        print("maskdiff: interrupted", file=sys.stderr)
        return 130
    return run_command(argv)
