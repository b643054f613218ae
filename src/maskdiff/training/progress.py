"""How a training run reports its progress: a live bar on a terminal, plain lines in a log.

A progress bar redraws itself many times a second; written to a file (``maskdiff train > log 2>&1``,
a batch job) every redraw stays, thousands of them. When its stream is not a terminal the run
writes one plain line per logged step (``train.log_every``) instead, the line a log needs.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm.auto import tqdm


class Progress:
    """The steps of a run of ``total`` steps from ``initial``: shown when ``enabled``, on ``stream`` (default stderr)."""

    def __init__(self, total: int, initial: int, enabled: bool, stream: TextIO | None = None):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.live = enabled and callable(isatty) and bool(isatty())  # a bar only where it can redraw in place
        self.lines = enabled and not self.live
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", disable=not self.live, dynamic_ncols=True, file=self.stream)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def step(self) -> None:
        """One more step done."""
        self.bar.update()

    def logged(self, step: int, values: dict[str, str]) -> None:
        """The metrics of a logged step: the bar's postfix, or one plain line."""
        if self.live:
            self.bar.set_postfix(values)
        elif self.lines:
            shown = ", ".join(f"{name} {value}" for name, value in values.items())
            print(f"train: step {step:,}/{self.total:,}: {shown}", file=self.stream, flush=True)

    def write(self, line: str) -> None:
        """A message on stdout (validation results) that does not break the bar."""
        if self.live:
            self.bar.write(line)
        else:
            print(line, flush=True)
