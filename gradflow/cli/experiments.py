"""`python -m gradflow.run --experiment NAME`: option checking and dispatch.

Each experiment uses a subset of the run's options with its own defaults
(EXPERIMENTS[name].options); an option it does not use, given on the command line, is a one-line
usage error (exit 2).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time

from ..experiments import EXPERIMENTS
from ..experiments.common import Log
from .checks import archs_list, claim_dir, command

ALWAYS = ("experiment", "out", "quiet")  # options every experiment takes


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def given_options(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The options present on a command line, found by re-parsing with every default suppressed.

    Args:
      parser: the run's parser (`args.build_parser`).
      argv: the command line (None: this process's).

    Returns:
      The destinations of the options given (`--opt=value` included).

    Example:
      >>> from gradflow.cli.args import build_parser
      >>> sorted(given_options(build_parser(), ["--experiment", "residual", "--depth", "20",
      ...                                       "--lr=0.1"]))
      ['depth', 'experiment', 'lr']
    """
    defaults = {}
    for action in parser._actions:  # argparse has no public way to suppress defaults
        defaults[action] = action.default
        action.default = argparse.SUPPRESS
    try:
        ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    finally:
        for action, value in defaults.items():
            action.default = value
    return set(vars(ns))


def validate(parser, args, argv) -> dict:
    """Checks the options given on the command line against the experiment's.

    Args:
      parser: the run's parser (for its one-line errors and to find the given options).
      args: the parsed options; `args.experiment` names the experiment.
      argv: the command line (None: this process's).

    Returns:
      name -> value for every option the experiment takes: the given value or its default.
    """
    from ..experiments.side_by_side import DEFAULT_LR
    from ..models import ARCHS, hidden_blocks

    name = args.experiment
    exp = EXPERIMENTS[name]
    given = given_options(parser, argv)
    accepted = sorted(set(exp.options) | set(ALWAYS))
    for dest in sorted(given - set(accepted)):
        parser.error(f"argument {_flag(dest)}: not used by --experiment {name} (it takes "
                     + ", ".join(_flag(d) for d in accepted if d != "experiment") + ")")
    opts = {k: (getattr(args, k) if k in given else v) for k, v in exp.options.items()}
    if "lr" in opts and "lr" not in given and "optimizer" in given:
        opts["lr"] = DEFAULT_LR[opts["optimizer"]]
    if "archs" in given:
        hint = (" (--experiment separable pairs every arch with its separable version itself)"
                if name == "separable" else "")
        opts["archs"] = tuple(archs_list(parser, args.archs, ARCHS, hint))
    if "depth" in given:
        if isinstance(args.depth, list) and len(args.depth) > 1:
            parser.error(f"argument --depth: --experiment {name} takes one depth, not a list")
        opts["depth"] = args.depth[0] if isinstance(args.depth, list) else args.depth
    if "depth" in opts:
        for arch in opts.get("archs", ("bn",)):
            try:
                hidden_blocks(arch, opts["depth"])
            except ValueError as e:
                parser.error(f"argument --depth: {e}")
    if opts.get("steps", 1) < 1:
        parser.error(f"argument --steps: --experiment {name} trains, give at least 1 step")
    return opts


def main(args, argv=None) -> int:
    """Runs the experiment `args.experiment` into the new directory `args.out` and prints its
    text summary.

    Args:
      args: `cli.parse`'s options (`experiment`, `out`, `quiet`, `options`).
      argv: the command line, recorded in the page (None: this process's).

    Returns:
      The exit code: 0 done, 130 / 143 stopped by SIGINT / SIGTERM (an experiment writes its
      files when it ends; stopped before, it leaves nothing), 1 a file that could not be
      written.
    """
    from .interrupt import all_or_nothing

    t0 = time.perf_counter()
    started = _dt.datetime.now().isoformat(timespec="seconds")

    def run(stop) -> int:  # a signal is acted on at the next progress event: nothing is left
        import jax

        meta = {"experiment": args.experiment, "command": command(argv), "started": started,
                "device": f"{jax.default_backend()} ({os.cpu_count()} cores)",
                "options": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in args.options.items()}}
        text = EXPERIMENTS[args.experiment].run(
            args.out, log=StoppingLog(stop, enabled=not args.quiet), meta=meta, **args.options)
        print(text)
        print(f"\nwrote {args.out}/ in {time.perf_counter() - t0:.0f}s — open "
              f"{args.out / 'report.html'}")
        return stop.exit_code  # a signal while the files were written waited for them

    return all_or_nothing(f"experiment {args.experiment}", lambda: claim_dir(args.out), run)


class StoppingLog(Log):
    """The experiments' progress lines, ending the experiment (`Interrupted`) at the next line,
    start, step or finish once a signal arrived.

    Args:
      stop: the `interrupt.StopRequest` of the run.
      enabled: whether lines are shown.
    """

    def __init__(self, stop, enabled: bool = True):
        super().__init__(enabled=enabled)
        self.stop = stop

    def line(self, text: str):
        """Ends the experiment if a signal arrived, else shows `text`.

        Args:
          text: the line.
        """
        self.stop.check()
        super().line(text)

    def progress(self, names, steps: int):
        """`Log.progress`, whose start, step and finish end the experiment once a signal arrived.

        Args:
          names: one name per job, in order.
          steps: the training steps of each.

        Returns:
          The Progress.
        """
        p = super().progress(names, steps)
        for name in ("start", "step", "finish"):
            setattr(p, name, self._checked(getattr(p, name)))
        return p

    def _checked(self, fn):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.stop.check()
            return out
        return call
