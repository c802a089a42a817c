"""Progress on stderr for `python -m gradflow.run` and the experiments, drawn with rich: which
architecture (or depth-sweep cell) of how many, the steps done, the step rate and the time left.

On a terminal a live bar sits below the lines that stay; elsewhere (pipes, CI logs, tests) the
same information comes as plain lines: one when an architecture starts and one when it ends, a
few in between, one per (arch, depth) of the sweep. Nothing at all when not `enabled`."""
from __future__ import annotations

import collections
import statistics
import time

from rich import progress as rp
from rich.console import Console
from rich.table import Column

RATE_WINDOW = 25  # steps over which the step rate is measured
PLAIN_UPDATES = 4  # progress lines per architecture when stderr is not a terminal
REFRESH_S = 0.25  # least time between two updates of the rate and time left on a terminal


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Lines:
    """Plain lines on stderr (or `stream`) through a rich Console, plus an optional live bar.

    Args:
        enabled: False prints nothing (--quiet).
        stream: a file to write to instead of stderr; without it the Console writes to whatever
            `sys.stderr` is when it writes.
    """

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled, self.stream = enabled, stream
        self.console = Console(file=stream, stderr=stream is None, highlight=False)
        self.tty = self.console.is_terminal and not self.console.is_dumb_terminal
        self._bar: rp.Progress | None = None

    def line(self, text: str):
        """Prints `text` as one line (above the live bar, if one is shown).

        Args:
            text: the line, printed as it is (no rich markup).
        """
        if self.enabled:
            self.console.print(text, markup=False, emoji=False, soft_wrap=True)

    def _show(self, description: str, total: int, info: str = ""):
        """Starts the live bar (terminal only) with one task: `description`, `total` steps."""
        if not (self.enabled and self.tty):
            return
        self._close()
        rest = Column(ratio=1, no_wrap=True, overflow="ellipsis")  # cut short if need be
        self._bar = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(bar_width=20),
                                rp.MofNCompleteColumn(),
                                rp.TextColumn("{task.fields[info]}", table_column=rest),
                                console=self.console, transient=True, expand=True,
                                refresh_per_second=1 / REFRESH_S)
        self._task = self._bar.add_task(description, total=total, info=info)
        self._bar.start()

    def _update(self, **fields):
        if self._bar is not None:
            self._bar.update(self._task, **fields)

    def _close(self):
        """Removes the live bar, if one is shown."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class Progress(Lines):
    """The training of several architectures one after the other (`start(i)`, `step` as the
    `progress` hook of `gf.train`, `finish(note)`).

    Time left for the run assumes each architecture still to come takes as long as the slowest
    so far (the current one projected to its end), compilation and evaluation included.

    Args:
        archs: the names of the architectures, in order.
        steps: the training steps of each.
        enabled, stream: as for `Lines`.
    """

    def __init__(self, archs, steps: int, enabled: bool = True, stream=None):
        super().__init__(enabled, stream)
        self.archs, self.steps = list(archs), steps
        self.t_run = time.perf_counter()
        self.took: list[float] = []  # seconds per finished architecture

    def _head(self, i: int) -> str:
        return f"[{i + 1}/{len(self.archs)}] {self.archs[i]}"

    def start(self, i: int):
        """Architecture `i` is being built and compiled: shows its line or bar.

        Args:
            i: its index in `archs`.
        """
        self.i, self.t0, self.t_last = i, time.perf_counter(), 0.0
        self.recent: collections.deque = collections.deque(maxlen=RATE_WINDOW)
        self.shown = 0  # plain progress lines printed for this architecture
        if self.tty:
            self._show(self._head(i), self.steps, "building and compiling…")
        else:
            self.line(f"{self._head(i)}: building and compiling…")

    def step(self, step: int):
        """The `progress` callback of `gf.train`: updates the bar, or prints a few lines.

        Args:
            step: the step just done, 0-based.
        """
        now = time.perf_counter()
        if step >= 2:  # steps 0 and 1 include the compilations
            self.recent.append(now)
        done = step + 1
        if self.tty:
            if now - self.t_last >= REFRESH_S or done == self.steps:
                self.t_last = now
                self._update(completed=done, info=self._rates(done, now))
        elif PLAIN_UPDATES * done // self.steps > self.shown and done < self.steps:
            self.shown = PLAIN_UPDATES * done // self.steps
            rates = self._rates(done, now)
            self.line(f"{self._head(self.i)}: step {done}/{self.steps}"
                      + (f" · {rates}" if rates else ""))

    def finish(self, note: str = "", steps: int | None = None):
        """Architecture `i` of `start(i)` is done.

        Args:
            note: its outcome ("held-out accuracy 77.2%", "diverged …", "interrupted after …").
            steps: the steps it trained, if not all.
        """
        took = time.perf_counter() - self.t0
        self.took.append(took)
        self._close()
        steps = self.steps if steps is None else steps
        self.line(f"{self._head(self.i)}: {steps} steps in {took:.1f}s"
                  + (f" — {note}" if note else ""))

    def note(self, i: int, text: str):
        """Prints a line about architecture `i` that is not trained now.

        Args:
            i: its index in `archs`.
            text: what to say (e.g. "finished before the interruption").
        """
        self.line(f"{self._head(i)}: {text}")

    def _rates(self, done: int, now: float) -> str:
        """Step rate and time left, once measured ("" before)."""
        # Steps are dispatched asynchronously: the first ones queue up faster than they run, so
        # the rate is taken over a recent window, once the queue has filled.
        if len(self.recent) < 10 or self.recent[-1] <= self.recent[0]:
            return ""
        rate = (len(self.recent) - 1) / (self.recent[-1] - self.recent[0])
        left = (self.steps - done) / rate
        per_arch = max(self.took + [now - self.t0 + left])
        total = left + (len(self.archs) - self.i - 1) * per_arch
        return (f"{rate:.1f} steps/s, {_clock(left)} left · run: {_clock(now - self.t_run)} "
                f"elapsed, ~{_clock(total)} left")


class SweepProgress(Lines):
    """Depth-sweep progress: a line per finished (arch, depth) with its median attenuation,
    and on a terminal a live bar of the cells with the current cell's training step. Time left
    counts each remaining cell as long as the finished cells of its depth took, shown once every
    depth has one.

    Args:
        cell_depths: the depth of every cell, in the sweep's order.
        n_seeds: the cells (seeds) of each (arch, depth).
        enabled, stream: as for `Lines`.
    """

    def __init__(self, cell_depths, n_seeds: int, enabled: bool = True, stream=None):
        super().__init__(enabled, stream)
        self.cell_depths = list(cell_depths)
        self.total, self.n_seeds = len(self.cell_depths), n_seeds
        self.t0 = time.perf_counter()
        self.took: list[tuple[int, float]] = []  # (depth, seconds) per finished cell
        self.group: list = []
        self.t_last = 0.0

    def __call__(self, done: int, total: int, cell):
        """The `progress` callback of `depth_sweep`: `done` of `total` cells, the last `cell`."""
        self.took.append((cell.depth, cell.time_s))
        self.group.append(cell)
        clock = f"{_clock(time.perf_counter() - self.t0)} elapsed"
        left = self._left(done)
        if done < total and left is not None:
            clock += f", ~{_clock(left)} left"
        if self._bar is None and done < total:
            self._show("depth sweep", total)
        value = "—" if cell.attenuation is None else f"{cell.attenuation:.2g}"
        eta = "" if left is None else f" (~{_clock(left)} left)"
        self._update(completed=done, refresh=True, description=f"depth sweep{eta}",
                     info=f"{cell.arch} depth {cell.depth} seed {cell.seed}: attenuation {value}")
        if len(self.group) == self.n_seeds or done == total:
            vals = [c.attenuation for c in self.group if c.attenuation is not None]
            med = f"{statistics.median(vals):.2g}" if vals else "—"
            bad = [c.status for c in self.group if c.status != "ok"]
            self.line(f"[{done}/{total}] {cell.arch} depth {cell.depth}: attenuation {med} "
                      f"(median of {len(vals)}) in {sum(c.time_s for c in self.group):.1f}s"
                      + (f" ({', '.join(bad)})" if bad else "") + f" · {clock}")
            self.group = []
        if done == total:
            self._close()

    def step(self, step: int, steps: int, arch: str, depth: int, seed: int):
        """The `on_step` callback of `depth_sweep`: training progress inside a cell, shown on
        the live bar (terminal only).

        Args:
            step: the step just done, 0-based.
            steps: the cell's training steps.
            arch, depth, seed: the cell.
        """
        now = time.perf_counter()
        if not self.tty or (now - self.t_last < REFRESH_S and step + 1 < steps):
            return
        self.t_last = now
        if self._bar is None:
            self._show("depth sweep", self.total)
        self._update(info=f"{arch} depth {depth} seed {seed}: step {step + 1}/{steps}")

    def _left(self, done: int):
        """Seconds left, once every depth has a finished cell (None before)."""
        by_depth: dict = {}
        for d, t in self.took:
            by_depth.setdefault(d, []).append(t)
        rest = self.cell_depths[done:]
        if any(d not in by_depth for d in rest):
            return None
        return sum(statistics.fmean(by_depth[d]) for d in rest)
