"""Graceful stops: SIGTERM or SIGINT asks the trainer to finish its step, save and exit."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """While active, SIGTERM and SIGINT set ``requested`` instead of killing the process.

    A second SIGINT (Ctrl-C twice) interrupts at once, as usual.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
