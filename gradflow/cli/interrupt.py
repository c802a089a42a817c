"""SIGINT and SIGTERM as a clean stop.

Inside `catch_signals()`, the first SIGINT (Ctrl-C) or SIGTERM only sets a flag; the training
loop asks it after every step (`gf.train(stop=...)`), stops at that step boundary, and the run
saves what it has and exits with the conventional code 128 + signal number (130 for SIGINT, 143
for SIGTERM). A second signal quits at once with the same code; the history on disk then holds
every record up to its last periodic flush.

For tests, the environment variable GRADFLOW_STOP_AFTER_STEPS=k acts as a SIGINT arriving after
the k-th training step of the process (counted over all architectures), deterministically.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

STOP_AFTER_ENV = "GRADFLOW_STOP_AFTER_STEPS"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The `stop` hook of `gf.train`: True once a signal arrived (or the test step count is
    reached). `signum` is the signal, `exit_code` 128 + signum."""

    def __init__(self, stop_after: int | None = None, stream=None):
        self.signum: int | None = None
        self.stop_after, self.steps = stop_after, 0
        self.stream = stream or sys.stderr

    def __call__(self) -> bool:
        self.steps += 1
        if self.stop_after is not None and self.steps >= self.stop_after and self.signum is None:
            self.signum = signal.SIGINT
        return self.signum is not None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum is not None else 0

    def handle(self, signum, frame=None):
        """The signal handler: the first signal requests a stop, the second quits at once."""
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


def _stop_after_from_env() -> int | None:
    text = os.environ.get(STOP_AFTER_ENV)
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{STOP_AFTER_ENV}={text!r} must be an integer >= 1")
    return value


@contextlib.contextmanager
def catch_signals(stream=None):
    """Installs the SIGINT/SIGTERM handlers of a fresh StopRequest for the duration of the
    block (restoring the previous ones after) and yields it. Outside the main thread, where
    Python cannot install handlers, signals keep their default effect."""
    request = StopRequest(_stop_after_from_env(), stream)
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
