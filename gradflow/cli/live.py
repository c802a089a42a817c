"""What a side-by-side run shows while it trains: each architecture's History sent to
TensorBoard (`--tensorboard DIR`, into `DIR/<arch>/`) and W&B (`--wandb`, one run per
architecture) at every flush, and report.html with its figures refreshed, marked as running,
at most every LIVE_S seconds and so that refreshing costs at most LIVE_SHARE of the run's time.
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from .._io import WriteError
from ..checkpoint import ArchSaver
from ..history import History

LIVE_S = 10.0  # least seconds between two refreshes of the running report
LIVE_SHARE = 0.03  # at most this share of the wall time goes to refreshing it


class WatchedSaver(ArchSaver):
    """An `ArchSaver` that also hands each flushed History to `on_flush(arch, history, state)`.

    Args:
      run_dir, arch, clock: as `ArchSaver`'s.
      on_flush: called after each flush with the History so far and the TrainState.
    """

    def __init__(self, run_dir, arch: str, clock: dict, on_flush):
        super().__init__(run_dir, arch, clock)
        self.on_flush = on_flush

    def flush(self, state) -> Path:
        path = super().flush(state)
        hist = History.from_records(state.layers, state.at, list(self._host),
                                    {**self.meta, "partial": True})
        self.on_flush(self.arch, hist, state)
        return path


def wandb_mode() -> str | None:
    """W&B's mode for `--wandb`: the user's (`WANDB_MODE`, or online with `WANDB_API_KEY`),
    else "offline" (files only, uploaded later with `wandb sync`)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    return "offline"


class Live:
    """The loggers and the running report of one side-by-side run.

    Args:
      args: the parsed options (`tensorboard`, `wandb`, `out`).
      cfg: the run's Config.
      ds: the Dataset.
      results: the run's list of finished ArchResults (read at each refresh).
      run: the run's command, start and device, as summary.json's "run" has them.
      enabled: False in the processes that do not write files (all but process 0 of a
        multi-process run): nothing is logged or refreshed there.
    """

    def __init__(self, args, cfg, ds, results: list, run: dict, enabled: bool = True):
        self.args, self.cfg, self.ds, self.results, self.run = args, cfg, ds, results, run
        self.enabled = enabled
        self.loggers: dict[str, list] = {}
        self.started = self.last_refresh = time.monotonic()
        self.cost = 0.0
        self.refreshes = 0

    def saver(self, record, arch: str) -> ArchSaver:
        """The checkpointing hooks of `arch`, with its flushes watched when `enabled`."""
        if not self.enabled:
            return record.saver(arch)
        return WatchedSaver(record.directory, arch, record.clock, self.flushed)

    def _loggers(self, arch: str, meta: dict) -> list:
        if arch not in self.loggers:
            from ..integrations import TensorBoardWriter, WandbLogger

            out, made = Path(self.args.out), []
            if self.args.tensorboard:
                made.append(TensorBoardWriter(Path(self.args.tensorboard) / arch))
            if self.args.wandb:
                made.append(WandbLogger(project=self.args.wandb, name=f"{out.name}/{arch}",
                                        group=out.name, dir=str(out), config=meta,
                                        mode=wandb_mode()))
            self.loggers[arch] = made
        return self.loggers[arch]

    def flushed(self, arch: str, hist: History, state) -> None:
        """A flush of `arch`'s training: the loggers write the new records; the report is
        refreshed when due."""
        for logger in self._loggers(arch, hist.meta):
            logger.write(hist)
        now = time.monotonic()
        if now - self.last_refresh >= max(LIVE_S, self.cost / LIVE_SHARE):
            params = sum(int(np.size(p)) for p in jax.tree.leaves(state.params))
            try:
                self.refresh(arch, hist, state.step, params)
            except WriteError:  # a full disk ends the run, as any other write does
                raise
            except Exception as e:  # the running page must never stop the training
                sys.stderr.write(f"gradflow: report.html is not refreshed while training "
                                 f"({type(e).__name__}: {e}".splitlines()[0] + ")\n")
                self.cost = float("inf")
            else:
                self.last_refresh = time.monotonic()
                self.cost = self.last_refresh - now

    def refresh(self, arch: str, hist: History, step: int, params: int | None = None) -> None:
        """Writes report.html and its figures for the finished architectures and `arch` so far,
        with a banner saying that the run is at `step` of `arch`."""
        from ..experiments import verdict
        from ..experiments.side_by_side import ArchResult
        from ..report import run_report

        current = ArchResult(arch, params=params, history=hist, interrupted_at=step)
        results = [*self.results, current]
        summary = verdict.summarize(results, self.cfg, self.ds)
        for a in summary["archs"]:
            if a["arch"] == arch:
                a["status"], a["verdict"] = "training", f"training: step {step} of {self.cfg.steps}"
        summary["run"] = {**self.run, "training_s": time.monotonic() - self.started}
        i = list(self.cfg.archs).index(arch) + 1
        banner = (f"running — {arch} ({i} of {len(self.cfg.archs)} architectures) at step "
                  f"{step} of {self.cfg.steps}, refreshed "
                  f"{_dt.datetime.now().strftime('%H:%M:%S')}")
        run_report.write_run(self.args.out, {r.arch: r.history for r in results
                                             if r.history is not None}, summary, live=banner)
        self.refreshes += 1

    def finished(self, res) -> None:
        """`res`'s training ended: its loggers write its final History and close (heatmaps)."""
        if not self.enabled:
            return
        if res.history is not None and (self.args.tensorboard or self.args.wandb):
            self._loggers(res.arch, res.history.meta)
        for logger in self.loggers.pop(res.arch, []):
            if res.history is not None:
                logger.write(res.history)
            logger.close()

    def close(self) -> None:
        """Closes the loggers still open (a run stopped in the middle of an architecture)."""
        for arch in list(self.loggers):
            for logger in self.loggers.pop(arch):
                logger.close()
