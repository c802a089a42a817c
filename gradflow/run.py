"""`python -m gradflow.run`: the headline experiment.

The same deep network is built as several architectures (plain, residual, bn, residual_bn by
default) at one width, init and seed, each is trained on the same data in the same order with
every layer recorded, and the run directory gets the histories, heatmaps, a comparison grid on one
colour scale, profiles, curves, summary.json and a self-contained report.html.
"""
from __future__ import annotations

import argparse
import collections
import datetime as _dt
import math
import os
import sys
import statistics
import time
from pathlib import Path

from .experiment import (ARCH_BASES, ARCH_CHOICES, DEFAULT_LR, MODELS, OPTIMIZERS, SEPARABLE,
                         Config, base_arch)


RATE_WINDOW = 25  # steps over which the progress line measures the step rate


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `python -m gradflow.run: error: <message>`, exit code 2."""

    def error(self, message):
        sys.stderr.write(f"python -m gradflow.run: error: {message} (see --help)\n")
        sys.exit(2)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _int_at_least(lo: int):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {lo}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {lo}")
        return v
    parse.__name__ = f"integer >= {lo}"
    return parse


def _depth_list(text):
    """One depth, or a comma-separated list of depths (a depth sweep)."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r} gives no depth (an integer >= 2, or a "
                                         "comma-separated list such as 8,16,32)")
    depths = []
    for t in parts:
        try:
            v = int(t)
        except ValueError:
            v = None
        if v is None or v < 2:
            where = f" in {text!r}" if len(parts) > 1 else ""
            raise argparse.ArgumentTypeError(f"{t!r}{where} is not an integer >= 2")
        if v in depths:
            raise argparse.ArgumentTypeError(f"{v} is given twice in {text!r}")
        depths.append(v)
    return depths


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return v


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .models import ACTIVATIONS, INITS

    p = _Parser(prog="python -m gradflow.run", description=(
        "Train the same deep network as several architectures side by side and record every "
        "layer's gradient: shows the error signal vanishing in a plain network and how residual "
        "connections and batch normalization fix it. Writes histories, heatmaps, a comparison "
        "grid, profiles, curves, summary.json and report.html to a new run directory."),
        formatter_class=_Help)
    a = p.add_argument
    from .experiments import EXPERIMENTS
    a("--experiment", choices=tuple(EXPERIMENTS), default=None, help="run one of the seed "
      "paper's patterns instead (each takes a subset of the options below, with its own "
      "defaults): " + "; ".join(f"{k}: {v.description}" for k, v in EXPERIMENTS.items()))
    a("--depth", type=_depth_list, default=Config.depth, help="weight layers on the longest "
      "path (stem + hidden layers + output layer); residual archs need an even depth. A "
      "comma-separated list (e.g. 8,16,32,64,128) runs a depth sweep instead: every arch at "
      "every depth over --seeds initializations, writing sweep.json, sweep.png and report.html")
    a("--width", type=_int_at_least(1), default=Config.width,
      help="channels (cnn) or units (mlp) of every hidden layer")
    a("--archs", default=",".join(ARCH_BASES),
      help=f"comma-separated architectures, any of: {', '.join(ARCH_CHOICES)}")
    a("--model", choices=MODELS, default=Config.model,
      help="3x3-conv network (cnn) or fully connected (mlp)")
    a("--steps", type=_int_at_least(0), default=Config.steps,
      help="training steps per architecture; 0 (depth sweeps only) measures at init only")
    a("--batch-size", type=_int_at_least(1), default=Config.batch_size,
      help="training examples per step")
    a("--lr", type=_positive_float, default=None, help="learning rate (default: " + ", ".join(
        f"{v:g} with {k}" for k, v in DEFAULT_LR.items()) + ")")
    a("--optimizer", choices=OPTIMIZERS, default=Config.optimizer,
      help="plain sgd, sgd with momentum 0.9, or adam")
    a("--init", choices=tuple(INITS), default=Config.init, help="kernel initializer: lecun is "
      "Flax's default (variance 1/fan_in), he (2/fan_in) preserves the signal through ReLU")
    a("--activation", choices=tuple(ACTIVATIONS), default=Config.activation,
      help="activation function")
    a("--dataset", choices=DATASETS, default=Config.dataset,
      help="training data: synthetic is generated from --seed (no download); the others are "
      "read from --data-dir in their standard formats (cifar10: the python pickle batches; "
      "mnist, fashion_mnist: idx files, gzipped or not; npz: a file with x and y; folder: one "
      "sub-folder of images per class) and standardized per channel")
    a("--data-dir", default=None, help="directory (for npz: the file) holding --dataset")
    a("--seed", type=_int_at_least(0), default=Config.seed,
      help="seed of the data, the initialization and the batch order")
    a("--seeds", type=_int_at_least(1), default=None, help="depth sweeps only: initializations "
      "per depth, seeds --seed, --seed+1, ... (default: 3); --experiment batchnorm: "
      "fine-tuning seeds")
    a("--log-every", type=_int_at_least(1), default=Config.log_every,
      help="record every layer's statistics every N steps (and at the last step)")
    a("--out", default=None, help="run directory to create; it must not exist or be empty "
      "(default: runs/<date>_<time>)")
    a("--devices", type=_int_at_least(1), default=None, help="data parallelism: split every "
      "batch across the first N devices, parameters replicated, statistics those of the whole "
      "batch (default: every visible device; --batch-size must be a multiple of N)")
    a("--coordinator", default=None, help="multi-process run: host:port of process 0 (default: "
      "$JAX_COORDINATOR_ADDRESS), or 'auto' to let JAX detect a TPU slice, SLURM or Open MPI "
      "job; with --num-processes and --process-id ($JAX_NUM_PROCESSES, $JAX_PROCESS_ID). Only "
      "process 0 writes files")
    a("--num-processes", type=_int_at_least(1), default=None,
      help="multi-process run: number of processes")
    a("--process-id", type=_int_at_least(0), default=None,
      help="multi-process run: this process's id, 0 .. --num-processes - 1")
    a("--quiet", action="store_true", help="no progress output on stderr")
    a("--resume", metavar="RUN_DIR", default=None, help="continue the interrupted run in RUN_DIR "
      "from its last checkpoint, with the options it was started with (other options must "
      "agree with them); finished architectures are not trained again")
    return p


def parse(argv=None) -> argparse.Namespace:
    """Parses and validates everything before anything is written; bad input exits with code 2."""
    from .models import hidden_blocks, MAX_DEPTH

    p = build_parser()
    args = p.parse_args(argv)
    if args.resume is not None:
        return _resume_args(p, argv)
    if args.experiment:  # the seed's patterns: their own options and defaults
        from .experiments.cli import validate
        return validate(p, args, argv)
    archs = [s.strip() for s in args.archs.split(",") if s.strip()]
    if not archs:
        p.error(f"argument --archs: no architecture given (choose from {', '.join(ARCH_CHOICES)})")
    for arch in archs:
        if arch not in ARCH_CHOICES:
            p.error(f"argument --archs: {arch!r} is not one of {', '.join(ARCH_CHOICES)}")
        if archs.count(arch) > 1:
            p.error(f"argument --archs: {arch!r} is given twice")
        if args.model == "mlp" and arch.endswith(SEPARABLE):
            p.error(f"argument --archs: {arch!r} needs --model cnn (separable convs are convs)")
    depths = args.depth if isinstance(args.depth, list) else [args.depth]
    for depth in depths:
        if depth > MAX_DEPTH:
            p.error(f"argument --depth: {depth} is above the supported maximum of {MAX_DEPTH}")
        for arch in archs:
            try:
                hidden_blocks(base_arch(arch), depth)
            except ValueError as e:
                p.error(f"argument --depth: {e}")
    args.sweep = len(depths) > 1
    args.depths = sorted(depths)
    args.depth = depths[0] if not args.sweep else min(depths)
    if args.steps == 0 and not args.sweep:
        p.error("argument --steps: 0 (measure at init only) is for depth sweeps: give --depth "
                "a comma-separated list, e.g. --depth 8,16,32,64,128")
    if args.seeds is not None and not args.sweep:
        p.error("argument --seeds: only used by a depth sweep (give --depth a comma-separated "
                "list, e.g. --depth 8,16,32,64,128)")
    if args.dataset != "synthetic" and args.data_dir is None:
        p.error(f"argument --data-dir: --dataset {args.dataset} reads files, give --data-dir")
    if args.dataset == "synthetic" and args.data_dir is not None:
        p.error("argument --data-dir: not used by --dataset synthetic (it is generated)")
    args.archs = archs
    args.lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    args.out = _out_dir(p, args.out)
    args.devices = _devices(p, args)
    return args


def _devices(p, args) -> int:
    """Joins a multi-process run if one is configured, then checks --devices against the
    visible devices and the batch (the sweep's probe batch at init too); returns the count."""
    from . import distributed

    auto = args.coordinator == "auto"
    try:
        distributed.initialize(None if auto else args.coordinator, args.num_processes,
                               args.process_id, auto=auto)
    except ValueError as e:
        p.error(f"argument --coordinator: {e}")
    import jax

    available, processes = jax.device_count(), jax.process_count()
    n = available if args.devices is None else args.devices
    if n > available:
        p.error(f"argument --devices: {n} is more than the {available} visible devices")
    if n % processes:
        p.error(f"argument --devices: {n} is not a multiple of the {processes} processes")
    batches = {"--batch-size": args.batch_size}
    if args.sweep and args.steps == 0:
        from .sweep import PROBE_BATCH
        batches["the depth sweep's probe batch"] = min(args.batch_size, PROBE_BATCH[args.model])
    for what, size in batches.items():
        if size % n:
            p.error(f"argument --batch-size: {what} of {size} does not divide across {n} "
                    f"devices; give a multiple of {n}, or --devices")
    return n


def _resume_args(p, argv) -> argparse.Namespace:
    """--resume RUN_DIR: the run's own options (from its run.json), the directory as --out."""
    from .resume import RunRecord, conflicts, strip_option

    argv = list(sys.argv[1:] if argv is None else argv)
    given = strip_option(strip_option(argv, "--resume"), "--quiet", value=False)
    run_dir = p.parse_args(argv).resume
    try:
        record = RunRecord.load(run_dir)
    except ValueError as e:
        p.error(f"argument --resume: {e}")
    if record.status == "complete":
        p.error(f"argument --resume: {run_dir} is a complete run; there is nothing to resume")
    out = p.parse_args(given).out
    if out is not None and Path(out).resolve() != Path(run_dir).resolve():
        p.error(f"argument --out: conflicts with --resume {run_dir} (a resumed run writes into "
                "its own directory)")
    bad = conflicts(p, record.argv, strip_option(given, "--out"))
    if bad:
        p.error(f"argument {bad[0]}: conflicts with the options of the run being resumed "
                f"(python -m gradflow.run {' '.join(record.argv)}); give --resume alone")
    args = parse(record.argv + (["--quiet"] if "--quiet" in argv else []))
    args.out, args.resume = Path(run_dir), record
    return args


def _out_dir(p, out) -> Path:
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            p.error(f"argument --out: {out} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            p.error(f"argument --out: {out} is not empty (gradflow never overwrites a run)")
        return path
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path, k = Path("runs") / stamp, 1
    while path.exists():
        k += 1
        path = Path("runs") / f"{stamp}_{k}"
    return path


# -- progress -----------------------------------------------------------------------------------

class _LineWriter:
    """Progress on a stream: one line rewritten on a terminal, a line per update elsewhere.
    Subclasses set `enabled`, `stream` and `tty`."""

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
        self.archs, self.steps, self.enabled = list(archs), steps, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
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


# -- main ---------------------------------------------------------------------------------------

def table(summary: dict) -> str:
    """The compact text table printed at the end of a run."""
    from .report import table_rows
    head = ("arch", "params", "train loss", "train acc", "held-out", "err ratio", "(end)",
            "verdict")
    rows = [head] + table_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:])]
        lines.append("  ".join(cells + [r[-1]]))
        if k == 0:
            lines.append("-" * len(lines[0]))
    lines.append("err ratio: error signal ‖∂L/∂z‖ at layer 1 / at the output layer, at init and "
                 "at the end (≪ 1: vanishing, ≫ 1: exploding)")
    return "\n".join(lines)


def _command(argv) -> str:
    return " ".join(["python -m gradflow.run", *(sys.argv[1:] if argv is None else argv)])


def _prepare(cfg, args):
    """Loads the data and creates the run directory; a bad data file, batch size or directory is
    a usage error (exit 2, nothing written). Returns the Dataset."""
    from . import data

    try:  # before anything is written: a bad data file is a usage error
        ds = data.load(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    except ValueError as e:
        _Parser().error(f"argument --data-dir: {e}")
    if cfg.batch_size > len(ds.x_train):
        _Parser().error(f"argument --batch-size: {cfg.batch_size} is larger than the "
                        f"{len(ds.x_train)} training examples")
    if cfg.model == "cnn" and len(ds.image_shape) != 3:
        _Parser().error(f"argument --model: cnn needs images (N, height, width, channels); "
                        f"{ds.name} has examples of shape {tuple(ds.image_shape)} (use --model mlp)")
    from .distributed import is_primary
    try:
        if is_primary():  # in a multi-process run only process 0 writes
            args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _Parser().error(f"argument --out: cannot create {args.out} ({e.strerror})")
    return ds


def main(argv=None) -> int:
    args = parse(argv)
    if args.experiment:
        from .experiments.cli import main as experiment_main
        return experiment_main(args, argv)
    if args.sweep:
        return sweep_main(args, argv)
    t_start = time.perf_counter()
    started = _dt.datetime.now().isoformat(timespec="seconds")
    import jax

    from . import experiment, report
    from .distributed import is_primary

    cfg = experiment.Config(**{k: getattr(args, k) for k in (
        "depth", "width", "archs", "model", "steps", "batch_size", "lr", "optimizer", "init",
        "activation", "dataset", "data_dir", "seed", "log_every", "devices")})
    from .interrupt import catch_signals
    from .resume import RunRecord

    with catch_signals() as stop:
        ds = _prepare(cfg, args)
        primary = is_primary()  # in a multi-process run only process 0 reports and saves
        record = args.resume
        if record is not None and jax.process_count() > 1:
            _Parser().error("argument --resume: multi-process runs cannot be resumed yet")
        if record is None and primary:
            record = RunRecord.create(args.out, sys.argv[1:] if argv is None else argv, started)
        progress = Progress(cfg.archs, cfg.steps, enabled=not args.quiet and primary)
        results = []
        for i, arch in enumerate(cfg.archs):
            if stop.requested:
                break
            res = record.result(arch) if record is not None else None
            if res is not None:
                progress.note(i, "finished before the interruption, not trained again")
                results.append(res)
                continue
            progress.start(i)
            saver = record.saver(arch) if record is not None else None
            try:  # a multi-process run cannot stop at different steps: signals keep their effect
                res = experiment.train_arch(arch, cfg, ds, progress.step, saver=saver,
                                            stop=stop if jax.process_count() == 1 else None)
            except Exception as e:  # one arch failing (e.g. out of memory) must not lose the others
                res = {"arch": arch, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
                progress.finish(f"failed: {res['error']}")
            else:
                progress.finish(_outcome(res), res.get("interrupted_at"))
            if record is not None and res.get("interrupted_at") is None:
                record.finish(res)
                saver.finish()
            results.append(res)
        summary = experiment.summarize(results, cfg, ds)
        summary["run"] = {
            "command": _command(argv) if args.resume is None else _command(
                [*args.resume.argv, "--out", str(args.out)]),
            "started": started, "device": f"{jax.default_backend()} ({os.cpu_count()} cores)",
            "devices": cfg.devices, "processes": jax.process_count(),
            "training_s": round(time.perf_counter() - t_start, 1),
            "output": str(args.out)}
        stopped = _stopped(stop, results, cfg.archs)
        if stopped:
            summary["run"]["interrupted"] = stopped
        if args.resume is not None:
            summary["run"]["resumed"] = _command(argv)
        if not primary:
            return stop.exit_code
        report.write_run(args.out, results, summary, ds.num_classes, cfg.steps)
        record.close("interrupted" if stopped else "complete")
        print(table(summary))
        from .report import diagnosis_lines
        print("\n" + "\n".join(diagnosis_lines(summary)))
        print(f"\nwrote {args.out}/ in {time.perf_counter() - t_start:.0f}s — open "
              f"{args.out / 'report.html'}")
        if stopped:
            sys.stderr.write(_stopped_message(stopped, args.out))
        return stop.exit_code


def _outcome(res) -> str:
    """The progress note of a trained architecture."""
    if res.get("interrupted_at") is not None:
        return f"interrupted after {res['interrupted_at']} steps"
    if res["diverged_at"] is not None:
        return "diverged (loss or gradients became non-finite)"
    return f"held-out accuracy {res['held_out_accuracy']:.1%}"


def _stopped(stop, results, archs) -> dict | None:
    """Where a signal stopped the run (None if it did not, or came after the last arch)."""
    at = next((r for r in results if r.get("interrupted_at") is not None), None)
    if not stop.requested or (at is None and len(results) == len(archs)):
        return None
    done = [r["arch"] for r in results if r.get("interrupted_at") is None]
    return {"signal": stop.name, "arch": at["arch"] if at else None,
            "step": at["interrupted_at"] if at else None,
            "finished": done, "not_started": [a for a in archs if a not in done
                                              and (at is None or a != at["arch"])]}


def _stopped_message(stopped: dict, out) -> str:
    where = (f"after {stopped['step']} steps of {stopped['arch']}" if stopped["arch"]
             else "between architectures")
    return (f"\ninterrupted by {stopped['signal']} {where} ({len(stopped['finished'])} "
            f"architectures finished); everything recorded so far is in {out}/ — continue with: "
            f"python -m gradflow.run --resume {out}\n")


# -- depth sweep ----------------------------------------------------------------------------------

class SweepProgress(_LineWriter):
    """Depth-sweep progress on stderr: on a terminal one line rewritten after every cell (and
    every training step); elsewhere a line per finished (arch, depth). Time left counts each
    remaining cell as long as the finished cells of its depth took, shown once every depth has
    one."""

    def __init__(self, cell_depths, n_seeds: int, enabled: bool = True, stream=None):
        self.cell_depths = list(cell_depths)  # the depth of every cell, in the sweep's order
        self.total, self.n_seeds, self.enabled = len(self.cell_depths), n_seeds, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
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



def sweep_main(args, argv=None) -> int:
    """`--depth` with several depths: the depth sweep (gradflow.sweep)."""
    t_start = time.perf_counter()
    started = _dt.datetime.now().isoformat(timespec="seconds")
    import jax

    from . import experiment, sweep
    from .distributed import is_primary

    cfg = experiment.Config(**{k: getattr(args, k) for k in (
        "depth", "width", "archs", "model", "batch_size", "lr", "optimizer", "init",
        "activation", "dataset", "data_dir", "seed", "log_every", "devices")},
        steps=max(args.steps, 1))
    ds = _prepare(cfg, args)
    n_seeds = args.seeds or sweep.SEED_COUNT
    seeds = list(range(cfg.seed, cfg.seed + n_seeds))
    primary = is_primary()  # in a multi-process run only process 0 reports
    progress = SweepProgress([d for _ in cfg.archs for d in args.depths for _ in seeds],
                             n_seeds, enabled=not args.quiet and primary)
    if not args.quiet and primary:
        what = (f"at init (one probe batch of {sweep.probe_batch_size(cfg)})" if args.steps == 0
                else f"training {args.steps} steps each")
        sys.stderr.write(f"depth sweep: {len(cfg.archs)} archs × {len(args.depths)} depths × "
                         f"{n_seeds} seeds, {what}\n")
    res = sweep.depth_sweep(cfg, args.depths, seeds=seeds, steps=args.steps, ds=ds,
                            progress=progress, on_step=progress.step)
    res.run = {"command": _command(argv), "started": started,
               "device": f"{jax.default_backend()} ({os.cpu_count()} cores)",
               "devices": cfg.devices, "processes": jax.process_count(),
               "output": str(args.out)}
    if not primary:
        return 0
    sweep.write(args.out, res, experiment.describe(ds))
    print(sweep.table(res))
    print(f"\nwrote {args.out}/ in {time.perf_counter() - t_start:.0f}s — open "
          f"{args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
