"""SIGINT and SIGTERM as a clean stop.

Inside `catch_signals()`, the first SIGINT (Ctrl-C) or SIGTERM only sets a flag; the training
loop asks it after every step (`gf.train(stop=...)`), stops at that step boundary, and the run
saves what it has and exits with the conventional code 128 + signal number (130 for SIGINT, 143
for SIGTERM). A second signal quits at once with the same code; the history on disk then holds
every record up to its last periodic flush.

A depth sweep or an experiment writes its files only when it ends: it asks `StopRequest.check`
at every step and cell, which raises `Interrupted` once a signal arrived, and `abandon` then
removes the run directory it claimed, so nothing is left.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SAVING = "stopping after the current step and saving what was recorded"


class StopRequest:
    """The `stop` hook of `gf.train`: True once a signal arrived. `signum` is the signal,
    `exit_code` 128 + signum.

    Args:
        stream: where the handler reports a signal (default: stderr).
        action: what the first signal does, as reported.

    Example:
        >>> import io
        >>> stop = StopRequest(io.StringIO())
        >>> stop(), stop.exit_code
        (False, 0)
        >>> stop.handle(signal.SIGINT)
        >>> stop(), stop.name, stop.exit_code
        (True, 'SIGINT', 130)
    """

    def __init__(self, stream=None, action: str = SAVING):
        self.signum: int | None = None
        self.stream = stream or sys.stderr
        self.action = action

    def __call__(self) -> bool:
        """Asked by the training loop after every step.

        Returns:
            True once a signal arrived.
        """
        return self.signum is not None

    def check(self) -> None:
        """Raises `Interrupted` once a signal arrived (for loops that save nothing on the way).

        Raises:
            Interrupted: naming the signal.
        """
        if self.signum is not None:
            raise Interrupted(self.signum)

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
        self.stream.write(f"gradflow: {name} received: {self.action} ({name} again quits at "
                          "once)\n")
        self.stream.flush()


@contextlib.contextmanager
def catch_signals(stream=None, action: str = SAVING, install: bool = True):
    """Installs the SIGINT/SIGTERM handlers of a fresh StopRequest for the duration of the
    block (restoring the previous ones after) and yields it. Outside the main thread, where
    Python cannot install handlers, or without `install`, signals keep their default effect.

    Args:
        stream: where the handler reports a signal (default: stderr).
        action: what the first signal does, as reported.
        install: False yields a StopRequest no signal reaches (e.g. in a multi-process run,
            whose processes cannot stop at different steps).

    Returns:
        A context manager yielding the StopRequest (pass it as `gf.train(stop=...)`).
    """
    request = StopRequest(stream, action)
    previous = {}
    try:
        for s in SIGNALS if install else ():
            previous[s] = signal.signal(s, request.handle)
    except ValueError:  # not the main thread
        pass
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Interrupted(KeyboardInterrupt):
    """A signal turned into an exception by `StopRequest.check`.

    Args:
        signum: the signal's number, kept as `signum`.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def nothing_kept(what: str) -> str:
    """The `action` of `catch_signals` for a run that writes its files only when it ends.

    Args:
        what: the run ("depth sweep", "experiment residual").

    Returns:
        The phrase the first signal reports.
    """
    return (f"stopping after the current step; nothing is kept (the {what} writes its files "
            "when it ends)")


def abandon(claim, what: str, err: KeyboardInterrupt, stream=None) -> int:
    """Ends a depth sweep or experiment stopped by a signal before it wrote its files: its run
    directory is given up (removed if the run created it) and one line says so.

    Args:
        claim: the run directory's `checks.Claim` (None in a process that writes nothing).
        what: what was stopped ("depth sweep", "experiment residual").
        err: the KeyboardInterrupt (an `Interrupted` names its signal; a bare one is SIGINT).
        stream: where to report (default: stderr).

    Returns:
        The exit code, 128 + the signal's number.
    """
    from .checks import OWNER

    signum = getattr(err, "signum", signal.SIGINT)
    name, stream = signal.Signals(signum).name, stream or sys.stderr
    left = [] if claim is None else [p.name for p in claim.path.iterdir() if p.name != OWNER]
    if left:  # stopped between two of its writes: each file is whole, they are left as they are
        claim.release()
        stream.write(f"gradflow: interrupted by {name} while the {what} wrote {claim.path}/; "
                     "its files are incomplete\n")
    else:
        if claim is not None:
            claim.release(remove=[OWNER])  # nothing else in it: the directory goes too
        stream.write(f"gradflow: interrupted by {name} before the {what} wrote its files; "
                     "nothing was written\n")
    return 128 + signum


def all_or_nothing(what: str, claim, body, install: bool = True) -> int:
    """Runs a depth sweep or experiment that writes its files only when it ends: inside
    `catch_signals` (the first signal reporting `nothing_kept(what)`), claims its run directory
    with `claim()` and returns `body(stop)`. A signal before the files are written ends it
    through `abandon`, a file that cannot be written in one line (`checks.write_error`); the
    claim is released either way.

    Args:
        what: the run ("depth sweep", "experiment residual").
        claim: returns the run directory's `checks.Claim` (None in a process that writes
            nothing).
        body: runs it, given the StopRequest (to `check()` at every step); returns the exit code.
        install: as for `catch_signals`.

    Returns:
        The exit code: `body`'s, 128 + the signal's number, or 1.
    """
    from .._io import WriteError
    from .checks import write_error

    claimed = None
    try:
        with catch_signals(action=nothing_kept(what), install=install) as stop:
            claimed = claim()
            stop.check()
            return body(stop)
    except KeyboardInterrupt as e:
        code, claimed = abandon(claimed, what, e), None
        return code
    except WriteError as e:
        return write_error(e)
    finally:
        if claimed is not None:
            claimed.release()
