"""`python -m gradflow.run`: the headline experiment.

The same deep network is built as several architectures (plain, residual, bn, residual_bn by
default) at one width, init and seed, each is trained on the same data in the same order with
every layer recorded, and the run directory gets the histories, heatmaps, a comparison grid on one
colour scale, profiles, curves, summary.json and a self-contained report.html.

Options and their checks live in `gradflow.cli.args`, the progress lines in
`gradflow.report.progress`.
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
import time

from ..report.progress import Progress, SweepProgress
from .args import parse
from .._io import WriteError
from .checks import claim_dir, command, usage_error, write_error

__all__ = ["main"]


# -- main ---------------------------------------------------------------------------------------

def _load(cfg, image_size=None):
    """Loads the data (`--image-size`: a folder's image side); a bad data file or batch size is
    a usage error (exit 2, nothing written). Ctrl-C while loading raises KeyboardInterrupt.
    Returns the Dataset."""
    from .. import data

    try:  # before anything is written: a bad data file is a usage error
        ds = data.load(cfg.dataset, cfg.data_dir, seed=cfg.seed, image_size=image_size)
    except ValueError as e:
        usage_error(f"argument --data-dir: {e}")
    if cfg.batch_size > len(ds.x_train):
        usage_error(f"argument --batch-size: {cfg.batch_size} is larger than the "
                        f"{len(ds.x_train)} training examples")
    if cfg.model == "cnn" and len(ds.image_shape) != 3:
        usage_error(f"argument --model: cnn needs images (N, height, width, channels); "
                        f"{ds.name} has examples of shape {tuple(ds.image_shape)} (use --model mlp)")
    for note in (ds.meta or {}).get("notes", ()):  # how the files were read, e.g. channels first
        print(f"note: {note}", file=sys.stderr)
    return ds


def _claim(args):
    """Claims the run directory (`checks.claim_dir`) in the process that writes (process 0 of a
    multi-process run); returns the Claim, or None in the other processes."""
    from ..distributed import is_primary

    if not is_primary():
        return None
    return claim_dir(args.out, resume=getattr(args, "resume", None) is not None)


def _nothing_written(when: str, signum: int = 2) -> int:
    """Reports a stop before the first training step (nothing is left on disk) and returns the
    exit code 128 + signum."""
    sys.stderr.write(f"gradflow: interrupted {when}, before the first training step; nothing "
                     "was written\n")
    return 128 + signum


def main(argv=None) -> int:
    """`python -m gradflow.run [options]`: a side-by-side run, a depth sweep (several depths) or
    an experiment (`--experiment NAME`).

    Args:
      argv: the options (None: this process's command line).

    Returns:
      The exit code: 0 done, 130 / 143 stopped by SIGINT / SIGTERM after saving what was
      recorded (with nothing written if stopped before the first training step), 1 a file
      that could not be written (one line on stderr). Bad input, or a run directory another
      run owns, exits with code 2 (SystemExit) before anything is written.

    Example:
      >>> main(["--depth", "20", "--archs", "plain,residual_bn", "--steps", "100",
      ...       "--out", "runs/demo"])  # doctest: +SKIP
      0
      >>> main(["--depth", "8,16,32,64", "--steps", "0"])  # a depth sweep  # doctest: +SKIP
      0
    """
    args = parse(argv)
    import matplotlib

    matplotlib.use("Agg")  # the command line only writes files; never a window
    if args.experiment:
        from .experiments import main as experiment_main
        return experiment_main(args, argv)
    if args.sweep:
        return sweep_main(args, argv)
    t_start = time.perf_counter()
    started = _dt.datetime.now().isoformat(timespec="seconds")
    from ..experiments import side_by_side as experiment

    cfg = experiment.Config(**{k: getattr(args, k) for k in (
        "depth", "width", "archs", "model", "steps", "batch_size", "lr", "optimizer", "init",
        "activation", "dataset", "data_dir", "seed", "log_every", "devices", "train_options")})
    from .interrupt import catch_signals

    try:  # outside catch_signals: Ctrl-C interrupts the load itself
        ds = _load(cfg, args.image_size)
    except KeyboardInterrupt:
        return _nothing_written("while loading the data")
    claim = None
    try:
        with catch_signals() as stop:
            if stop.requested:
                return _nothing_written("while loading the data", stop.signum)
            claim = _claim(args)
            return _run(args, argv, cfg, ds, stop, claim, started, t_start)
    except WriteError as e:
        return write_error(e)
    finally:
        if claim is not None:
            claim.release()


def _run(args, argv, cfg, ds, stop, claim, started, t_start) -> int:
    """The side-by-side run in the claimed directory, inside `catch_signals`."""
    import jax

    from ..distributed import is_primary
    from ..experiments import side_by_side as experiment
    from ..experiments import verdict
    from ..report import run_report as report
    from .live import Live
    from .resume import RUN_FILE, RunRecord

    primary = is_primary()  # in a multi-process run only process 0 reports and saves
    record = args.resume
    if record is not None and jax.process_count() > 1:
        usage_error("argument --resume: multi-process runs cannot be resumed yet")
    if record is None and primary:
        record = RunRecord.create(args.out, sys.argv[1:] if argv is None else argv, started)
    progress = Progress(cfg.archs, cfg.steps, enabled=not args.quiet and primary)
    results, trained = [], False
    run_command = command(argv) if args.resume is None else command(
        [*args.resume.argv, "--out", str(args.out)])
    device = f"{jax.default_backend()} ({os.cpu_count()} cores)"
    live = Live(args, cfg, ds, results, {"command": run_command, "started": started,
                                         "device": device}, enabled=primary)
    for i, arch in enumerate(cfg.archs):
        if stop.requested:
            break
        res = record.result(arch) if record is not None else None
        if res is not None:
            progress.note(i, "finished before the interruption, not trained again")
            results.append(res)
            continue
        progress.start(i)
        trained = True
        saver = live.saver(record, arch) if record is not None else None
        try:  # a multi-process run cannot stop at different steps: signals keep their effect
            res = experiment.train_arch(arch, cfg, ds, progress.step, saver=saver,
                                        stop=stop if jax.process_count() == 1 else None)
        except WriteError:  # a full disk or read-only directory ends the run, in one line
            raise
        except Exception as e:  # one arch failing (e.g. out of memory) must not lose the others
            res = experiment.ArchResult(arch, error=f"{type(e).__name__}: {e}".splitlines()[0])
            progress.finish(f"failed: {res.error}")
        else:
            progress.finish(_outcome(res), res.interrupted_at)
        live.finished(res)  # its loggers write the final History and close
        if record is not None and res.interrupted_at is None:
            record.finish(res)
            saver.finish()
        results.append(res)
    live.close()
    if stop.requested and not trained:  # stopped before the first step: leave nothing new
        if claim is not None and args.resume is None:
            claim.release(remove=[RUN_FILE])
        return _nothing_written("before training started", stop.signum)
    summary = verdict.summarize(results, cfg, ds)
    summary["run"] = {
        "command": run_command, "started": started, "device": device,
        "devices": cfg.devices, "processes": jax.process_count(),
        "training_s": round(time.perf_counter() - t_start, 1),
        "output": str(args.out)}
    stopped = _stopped(stop, results, cfg.archs)
    if stopped:
        summary["run"]["interrupted"] = stopped
    if args.resume is not None:
        summary["run"]["resumed"] = command(argv)
    if not primary:
        return stop.exit_code
    report.write_run(args.out, {r.arch: r.history for r in results if r.history is not None},
                     summary)
    record.close("interrupted" if stopped else "complete")
    print(report.table(summary))
    print("\n" + "\n".join(report.diagnosis_lines(summary)))
    print(f"\nwrote {args.out}/ in {time.perf_counter() - t_start:.0f}s — open "
          f"{args.out / 'report.html'}")
    if stopped:
        sys.stderr.write(_stopped_message(stopped, args.out))
    return stop.exit_code


def _outcome(res) -> str:
    """The progress note of a trained architecture."""
    if res.interrupted_at is not None:
        return f"interrupted after {res.interrupted_at} steps"
    if res.diverged_at is not None:
        return "diverged (loss or gradients became non-finite)"
    return f"held-out accuracy {res.held_out_accuracy:.1%}"


def _stopped(stop, results, archs) -> dict | None:
    """Where a signal stopped the run (None if it did not, or came after the last arch)."""
    at = next((r for r in results if r.interrupted_at is not None), None)
    if not stop.requested or (at is None and len(results) == len(archs)):
        return None
    done = [r.arch for r in results if r.interrupted_at is None]
    return {"signal": stop.name, "arch": at.arch if at else None,
            "step": at.interrupted_at if at else None,
            "finished": done, "not_started": [a for a in archs if a not in done
                                              and (at is None or a != at.arch)]}


def _stopped_message(stopped: dict, out) -> str:
    where = (f"after {stopped['step']} steps of {stopped['arch']}" if stopped["arch"]
             else "between architectures")
    return (f"\ninterrupted by {stopped['signal']} {where} ({len(stopped['finished'])} "
            f"architectures finished); everything recorded so far is in {out}/ — continue with: "
            f"python -m gradflow.run --resume {out}\n")


# -- depth sweep ----------------------------------------------------------------------------------

def sweep_main(args, argv=None) -> int:
    """`--depth` with several depths: the depth sweep (`experiments.depth_sweep`).

    Args:
      args: `cli.parse`'s options, with `sweep` True.
      argv: the command line, recorded in sweep.json (None: this process's).

    Returns:
      The exit code: 0 done, 130 / 143 stopped by SIGINT / SIGTERM (a sweep writes its files
      when it ends; stopped before, it leaves nothing), 1 a file that could not be written.
    """
    t_start = time.perf_counter()
    started = _dt.datetime.now().isoformat(timespec="seconds")
    from ..experiments import side_by_side as experiment

    cfg = experiment.Config(**{k: getattr(args, k) for k in (
        "depth", "width", "archs", "model", "batch_size", "lr", "optimizer", "init",
        "activation", "dataset", "data_dir", "seed", "log_every", "devices")},
        steps=max(args.steps, 1))
    try:
        ds = _load(cfg, args.image_size)
    except KeyboardInterrupt:
        return _nothing_written("while loading the data")
    import jax

    from .interrupt import all_or_nothing

    # a signal is acted on at the next step or cell: stopped before the end, nothing is left
    return all_or_nothing("depth sweep", lambda: _claim(args),
                          lambda stop: _sweep(args, argv, cfg, ds, started, t_start, stop),
                          install=jax.process_count() == 1)


def _sweep(args, argv, cfg, ds, started, t_start, stop) -> int:
    """The depth sweep in the claimed directory, inside `catch_signals`: `stop.check()` after
    every step and cell ends it (`Interrupted`) until its files are written."""
    import jax

    from ..distributed import is_primary
    from ..experiments import depth_sweep as sweep, verdict
    from ..report import sweep_report as sweep_output

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

    def cell_done(*a):
        progress(*a)
        stop.check()

    def step_done(*a):
        progress.step(*a)
        stop.check()

    res = sweep.depth_sweep(cfg, args.depths, seeds=seeds, steps=args.steps, ds=ds,
                            progress=cell_done, on_step=step_done)
    res.run = {"command": command(argv), "started": started,
               "device": f"{jax.default_backend()} ({os.cpu_count()} cores)",
               "devices": cfg.devices, "processes": jax.process_count(),
               "output": str(args.out)}
    if not primary:
        return 0
    sweep_output.write(args.out, res, verdict.describe(ds))  # a signal now waits for it
    print(sweep_output.table(res))
    print(f"\nwrote {args.out}/ in {time.perf_counter() - t_start:.0f}s — open "
          f"{args.out / 'report.html'}")
    return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
