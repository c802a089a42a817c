"""Progress lines on stderr for `python -m gradflow.run`: per-architecture training and the
depth sweep's cells, with step rates and time left."""
from __future__ import annotations

import collections
import statistics
import sys
import time

RATE_WINDOW = 25  # steps over which the progress line measures the step rate


class _LineWriter:
    """Progress on a stream (default stderr): one line rewritten on a terminal, a line per update
    elsewhere, nothing when not `enabled`."""

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def _write(self, text, final):
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


class Progress(_LineWriter):
    """Progress on stderr: the current architecture's steps, step rate and time left, and the
    whole run's. Rewrites one line on a terminal; elsewhere prints a line every quarter.

    Time left for the run assumes each architecture still to come takes as long as the slowest
    so far (the current one projected to its end), compilation and evaluation included."""

    def __init__(self, archs, steps: int, enabled: bool = True, stream=None):
        super().__init__(enabled, stream)
        self.archs, self.steps = list(archs), steps
        self.t_run = time.perf_counter()
        self.took: list[float] = []  # seconds per finished architecture

    def start(self, i: int):
        self.i, self.t0, self.t_last = i, time.perf_counter(), 0.0
        self.recent: collections.deque = collections.deque(maxlen=RATE_WINDOW)
        self.quarter = 0
        self._write(f"[{i + 1}/{len(self.archs)}] {self.archs[i]}: building and compiling…",
                    final=not self.tty)

    def step(self, step: int):
        """The `progress` callback of `gradflow.train`: step `step` (0-based) is done."""
        now = time.perf_counter()
        if step >= 2:  # steps 0 and 1 include the compilations
            self.recent.append(now)
        done = step + 1
        if self.tty:
            if now - self.t_last < 0.25 and done < self.steps:
                return
        else:
            q = 4 * done // self.steps
            if q == self.quarter:
                return
            self.quarter = q
        self.t_last = now
        self._write(self._line(done, now), final=not self.tty)

    def finish(self, note: str = "", steps: int | None = None):
        took = time.perf_counter() - self.t0
        self.took.append(took)
        steps = self.steps if steps is None else steps
        self._write(f"[{self.i + 1}/{len(self.archs)}] {self.archs[self.i]}: {steps} steps in "
                    f"{took:.1f}s" + (f" — {note}" if note else ""), final=True)

    def note(self, i: int, text: str):
        """A line about architecture `i` that is not trained now."""
        self._write(f"[{i + 1}/{len(self.archs)}] {self.archs[i]}: {text}", final=True)

    def _line(self, done, now):
        n = len(self.archs)
        bar = "#" * (20 * done // self.steps)
        s = f"[{self.i + 1}/{n}] {self.archs[self.i]:<14} [{bar:<20}] {done}/{self.steps}"
        # Steps are dispatched asynchronously: the first ones queue up faster than they run, so
        # the rate is taken over a recent window, once the queue has filled.
        if len(self.recent) >= 10 and self.recent[-1] > self.recent[0]:
            rate = (len(self.recent) - 1) / (self.recent[-1] - self.recent[0])
            left = (self.steps - done) / rate
            per_arch = max(self.took + [now - self.t0 + left])
            total = left + (n - self.i - 1) * per_arch
            s += (f"  {rate:.1f} steps/s, {_clock(left)} left · run: {_clock(now - self.t_run)} "
                  f"elapsed, ~{_clock(total)} left")
        return s


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class SweepProgress(_LineWriter):
    """Depth-sweep progress on stderr: on a terminal one line rewritten after every cell (and
    every training step); elsewhere a line per finished (arch, depth). Time left counts each
    remaining cell as long as the finished cells of its depth took, shown once every depth has
    one."""

    def __init__(self, cell_depths, n_seeds: int, enabled: bool = True, stream=None):
        self.cell_depths = list(cell_depths)  # the depth of every cell, in the sweep's order
        self.total, self.n_seeds = len(self.cell_depths), n_seeds
        super().__init__(enabled, stream)
        self.t0 = time.perf_counter()
        self.took: list[tuple[int, float]] = []  # (depth, seconds) per finished cell
        self.group: list = []
        self.t_last = 0.0

    def __call__(self, done: int, total: int, cell):
        self.took.append((cell.depth, cell.time_s))
        self.group.append(cell)
        now = time.perf_counter()
        clock = f"{_clock(now - self.t0)} elapsed"
        left = self._left(done)
        if done < total and left is not None:
            clock += f", ~{_clock(left)} left"
        value = "—" if cell.attenuation is None else f"{cell.attenuation:.2g}"
        if self.tty:
            self._write(f"[{done}/{total}] {cell.arch} depth {cell.depth} seed {cell.seed}: "
                        f"attenuation {value} · {clock}", final=done == total)
        elif len(self.group) == self.n_seeds or done == total:
            vals = [c.attenuation for c in self.group if c.attenuation is not None]
            med = f"{statistics.median(vals):.2g}" if vals else "—"
            bad = [c.status for c in self.group if c.status != "ok"]
            self._write(f"[{done}/{total}] {cell.arch} depth {cell.depth}: attenuation {med} "
                        f"(median of {len(vals)}) in {sum(c.time_s for c in self.group):.1f}s"
                        + (f" ({', '.join(bad)})" if bad else "") + f" · {clock}", final=True)
        if len(self.group) == self.n_seeds:
            self.group = []

    def step(self, step: int, steps: int, arch: str, depth: int, seed: int):
        """Training progress inside a cell (terminal only)."""
        now = time.perf_counter()
        if not self.tty or (now - self.t_last < 0.25 and step + 1 < steps):
            return
        self.t_last = now
        self._write(f"[{len(self.took) + 1}/{self.total}] {arch} depth {depth} seed {seed}: "
                    f"step {step + 1}/{steps} · {_clock(now - self.t0)} elapsed", final=False)

    def _left(self, done: int):
        """Seconds left, once every depth has a finished cell (None before)."""
        by_depth: dict = {}
        for d, t in self.took:
            by_depth.setdefault(d, []).append(t)
        rest = self.cell_depths[done:]
        if any(d not in by_depth for d in rest):
            return None
        return sum(statistics.fmean(by_depth[d]) for d in rest)
