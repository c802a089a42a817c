"""SIGINT and SIGTERM as a clean stop.

Inside `catch_signals()`, the first SIGINT (Ctrl-C) or SIGTERM only sets a flag; the training
loop asks it after every step (`gf.train(stop=...)`), stops at that step boundary, and the run
saves what it has and exits with the conventional code 128 + signal number (130 for SIGINT, 143
for SIGTERM). A second signal quits at once with the same code; the history on disk then holds
every record up to its last periodic flush.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The `stop` hook of `gf.train`: True once a signal arrived. `signum` is the signal,
    `exit_code` 128 + signum.

    Args:
        stream: where the handler reports a signal (default: stderr).

    Example:
        >>> import io
        >>> stop = StopRequest(io.StringIO())
        >>> stop(), stop.exit_code
        (False, 0)
        >>> stop.handle(signal.SIGINT)
        >>> stop(), stop.name, stop.exit_code
        (True, 'SIGINT', 130)
    """

    def __init__(self, stream=None):
        self.signum: int | None = None
        self.stream = stream or sys.stderr

    def __call__(self) -> bool:
        """Asked by the training loop after every step.

        Returns:
            True once a signal arrived.
        """
        return self.signum is not None

    @property
    def requested(self) -> bool:
        """True once a signal arrived."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal's name ("SIGINT", "SIGTERM"), or "" before one arrived."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, or 0 before one arrived."""
        return 128 + self.signum if self.signum is not None else 0

    def handle(self, signum, frame=None):
        """The signal handler: the first signal requests a stop, the second quits at once.

        Args:
            signum: the signal's number.
            frame: the interrupted frame (unused).
        """
        name = signal.Signals(signum).name
        if self.signum is not None:
            self.stream.write(f"gradflow: second {name}: quitting now; the histories on disk "
                              "hold every record up to their last flush\n")
            self.stream.flush()
            os._exit(128 + signum)
        self.signum = signum
        self.stream.write(f"gradflow: {name} received: stopping after the current step and "
                          f"saving what was recorded ({name} again quits at once)\n")
        self.stream.flush()


@contextlib.contextmanager
def catch_signals(stream=None):
    """Installs the SIGINT/SIGTERM handlers of a fresh StopRequest for the duration of the
    block (restoring the previous ones after) and yields it. Outside the main thread, where
    Python cannot install handlers, signals keep their default effect.

    Args:
        stream: where the handler reports a signal (default: stderr).

    Returns:
        A context manager yielding the StopRequest (pass it as `gf.train(stop=...)`).
    """
    request = StopRequest(stream)
    previous = {}
    try:
        for s in SIGNALS:
            previous[s] = signal.signal(s, request.handle)
    except ValueError:  # not the main thread
        pass
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
