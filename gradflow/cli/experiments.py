"""`python -m gradflow.run --experiment NAME`: option checking and dispatch.

Each experiment uses a subset of the run's options with its own defaults (EXPERIMENTS[name].options);
an option it does not use, given on the command line, is a one-line usage error (exit 2).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time

from ..experiments import EXPERIMENTS

ALWAYS = ("experiment", "out", "quiet")  # options every experiment takes


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def given_options(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The destinations of the options present on the command line `argv` (abbreviations and
    `--opt=value` included), found by re-parsing with every default suppressed."""
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


def validate(parser, args, argv) -> argparse.Namespace:
    """Checks the options against the experiment's and fills `args.options` (name -> value) with
    the given values or the experiment's defaults; `args.out` becomes the run directory."""
    from ..experiments.side_by_side import ARCH_BASES, DEFAULT_LR
    from ..models import hidden_blocks
    from .args import _out_dir

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
        archs = [s.strip() for s in args.archs.split(",") if s.strip()]
        if not archs:
            parser.error(f"argument --archs: no architecture given (choose from "
                         f"{', '.join(ARCH_BASES)})")
        for arch in archs:
            if arch not in ARCH_BASES:
                parser.error(f"argument --archs: {arch!r} is not one of {', '.join(ARCH_BASES)}"
                             + (" (--experiment separable pairs every arch with its separable "
                                "version itself)" if name == "separable" else ""))
            if archs.count(arch) > 1:
                parser.error(f"argument --archs: {arch!r} is given twice")
        opts["archs"] = tuple(archs)
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
    args.options = opts
    args.out = _out_dir(parser, args.out)
    return args


def main(args, argv=None) -> int:
    """Runs the experiment `args.experiment` into the new directory `args.out`."""
    from ..run import _command
    from .args import _Parser

    t0 = time.perf_counter()
    started = _dt.datetime.now().isoformat(timespec="seconds")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _Parser().error(f"argument --out: cannot create {args.out} ({e.strerror})")
    from ..experiments.common import Log
    import jax

    meta = {"experiment": args.experiment, "command": _command(argv), "started": started,
            "device": f"{jax.default_backend()} ({os.cpu_count()} cores)",
            "options": {k: list(v) if isinstance(v, tuple) else v
                        for k, v in args.options.items()}}
    text = EXPERIMENTS[args.experiment].run(args.out, log=Log(enabled=not args.quiet),
                                            meta=meta, **args.options)
    print(text)
    print(f"\nwrote {args.out}/ in {time.perf_counter() - t0:.0f}s — open "
          f"{args.out / 'report.html'}")
    return 0
