"""The command line of `python -m gradflow.run`: options, their checks (one-line errors, exit 2,
nothing written) and `--resume`."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ..experiments.side_by_side import DEFAULT_LR, MODELS, OPTIMIZERS, Config
from ..models.options import ARCH_CHOICES, ARCHS, SEPARABLE, base_arch
from .checks import Parser, archs_list, out_dir
from .experiments import validate

QUANTITIES_EVERY = 10  # --every's default
QUANTITY_FLAGS = {"noise": "noise_every", "curvature": "curvature_every"}  # flag -> gf.train's


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
    """The parser of `python -m gradflow.run`, every option with its help and default.

    Returns:
      A `checks.Parser` (one-line errors, exit code 2); `parse` adds the checks across options.
    """
    from ..data import DATASETS
    from ..models import ACTIVATIONS, INITS

    p = Parser(prog="python -m gradflow.run", description=(
        "Train the same deep network as several architectures side by side and record every "
        "layer's gradient: shows the error signal vanishing in a plain network and how residual "
        "connections and batch normalization fix it. Writes histories, heatmaps, a comparison "
        "grid, profiles, curves, summary.json and report.html to a new run directory."),
        formatter_class=_Help)
    a = p.add_argument
    from ..experiments import EXPERIMENTS
    a("--experiment", choices=tuple(EXPERIMENTS), default=None, help="run one of the seed "
      "paper's patterns instead (each takes a subset of the options below, with its own "
      "defaults): " + "; ".join(f"{k}: {v.description}" for k, v in EXPERIMENTS.items()))
    a("--depth", type=_depth_list, default=Config.depth, help="weight layers on the longest "
      "path (stem + hidden layers + output layer); residual archs need an even depth. A "
      "comma-separated list (e.g. 8,16,32,64,128) runs a depth sweep instead: every arch at "
      "every depth over --seeds initializations, writing sweep.json, sweep.png and report.html")
    a("--width", type=_int_at_least(1), default=Config.width,
      help="channels (cnn) or units (mlp) of every hidden layer")
    a("--archs", default=",".join(ARCHS),
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
    a("--image-size", type=_int_at_least(1), default=None, metavar="S", help="--dataset "
      "folder: every image is resized to S×S pixels as it is read (default: 32)")
    a("--seed", type=_int_at_least(0), default=Config.seed,
      help="seed of the data, the initialization and the batch order")
    a("--seeds", type=_int_at_least(1), default=None, help="depth sweeps: initializations "
      "per depth, seeds --seed, --seed+1, ... (default: 3); --experiment residual, separable, "
      "batchnorm: training runs per variant, reported as mean and spread (default: 3)")
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
    a("--noise", action="store_true", help="also take the gradient noise quantities (mean "
      "GSNR, norm, inner-product and orthogonality tests, whole network and per layer, and "
      "per-layer histograms of per-example gradients) every --every steps; one device only")
    a("--curvature", action="store_true", help="also take the curvature (largest Hessian "
      "eigenvalue, compared with the edge of stability 2/lr, and the Hessian trace, whole "
      "network and per layer) every --every steps; one device only")
    a("--every", type=_int_at_least(1), default=None, metavar="K", help="the interval in "
      f"steps of --noise and --curvature: steps 0, K, 2K, ... (default: {QUANTITIES_EVERY})")
    a("--tensorboard", metavar="DIR", default=None, help="also write each architecture's "
      "measurements into DIR/<arch>/ as TensorBoard event files while it trains (per-layer "
      "scalars, gradient histograms; heatmaps at its end); view with tensorboard --logdir DIR. "
      "Needs pip install 'gradflow-diagnostics[tensorboard]'")
    a("--wandb", metavar="PROJECT", nargs="?", const="gradflow", default=None, help="also log "
      "each architecture as a Weights & Biases run in PROJECT (default: gradflow), grouped by "
      "the run directory's name; offline (files under the run directory's wandb/, upload "
      "with wandb sync) unless WANDB_MODE or WANDB_API_KEY is set. Needs pip install "
      "'gradflow-diagnostics[wandb]'")
    a("--quiet", action="store_true", help="no progress output on stderr")
    a("--resume", metavar="RUN_DIR", default=None, help="continue the interrupted run in RUN_DIR "
      "from its last checkpoint, with the options it was started with (other options must "
      "agree with them); finished architectures are not trained again")
    return p


def parse(argv=None) -> argparse.Namespace:
    """Parses and validates the command line before anything is written.

    Bad input is a one-line usage error: the process exits with code 2. Nothing is written;
    for a run or sweep, a configured multi-process run is joined to count the devices.

    Args:
      argv: the options (None: this process's command line).

    Returns:
      The options as a Namespace, `out` a Path. For a run or sweep, `--depth` gives `depth`,
      `depths` (sorted) and `sweep` (several depths), `lr` defaults per optimizer and
      `devices` is a count (1 with --noise or --curvature unless given), `train_options` the
      keyword arguments of `gf.train` the quantity flags ask for (e.g. {"noise_every": 10}).
      With `--experiment`, `options` holds the experiment's options;
      with `--resume`, `resume` is the run's RunRecord and the options are the run's own.

    Example:
      >>> import tempfile
      >>> args = parse(["--depth", "20", "--archs", "plain,residual_bn",
      ...               "--out", tempfile.mkdtemp()])
      >>> args.archs, args.depths, args.sweep, args.lr
      (['plain', 'residual_bn'], [20], False, 0.01)
    """
    from ..models import hidden_blocks, MAX_DEPTH

    p = build_parser()
    args = p.parse_args(argv)
    if args.resume is not None:
        return _resume_args(p, argv)
    _trackers(p, args, argv)
    if args.experiment:  # the seed's patterns: their own options and defaults
        args.options = validate(p, args, argv)
        args.out = out_dir(p, args.out)
        return args
    archs = archs_list(p, args.archs, ARCH_CHOICES)
    for arch in archs:
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
    if args.image_size is not None and args.dataset != "folder":
        p.error(f"argument --image-size: only used by --dataset folder, not {args.dataset}")
    args.archs = archs
    args.lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    args.train_options = _train_options(p, args)
    args.out = out_dir(p, args.out)
    args.devices = _devices(p, args)
    return args


def _trackers(p, args, argv) -> None:
    """Checks --tensorboard and --wandb: a side-by-side run only, their package installed, the
    TensorBoard directory writable (nothing is written here); makes that directory absolute."""
    from ..integrations._base import require

    given = [(flag, v) for flag, v in (("--tensorboard", args.tensorboard),
                                       ("--wandb", args.wandb)) if v is not None]
    for flag, _ in given:
        depths = args.depth if isinstance(args.depth, list) else [args.depth]
        if args.experiment or len(depths) > 1:
            p.error(f"argument {flag}: for a side-by-side run at one depth, not "
                    + ("--experiment" if args.experiment else "a depth sweep"))
        module, who, extra = {"--tensorboard": ("tensorboardX", "TensorBoardWriter", "tensorboard"),
                              "--wandb": ("wandb", "WandbLogger", "wandb")}[flag]
        try:
            require(module, who, extra)
        except ImportError as e:
            p.error(f"argument {flag}: {e}")
    if args.tensorboard is not None:
        path = Path(args.tensorboard).expanduser().absolute()
        if path.exists() and not path.is_dir():
            p.error(f"argument --tensorboard: {args.tensorboard} is not a directory")
        parent = path
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            p.error(f"argument --tensorboard: {args.tensorboard} cannot be written ({parent} "
                    f"is not a writable directory)")
        args.tensorboard = str(path)


def _train_options(p, args) -> dict:
    """The keyword arguments of `gf.train` the quantity flags ask for, e.g. {"noise_every": 10};
    a flag this gf.train does not take, --every alone, a depth sweep or several devices is a
    usage error. With a quantity flag and no --devices, the run uses one device."""
    import inspect

    from ..train import train

    wanted = [flag for flag in QUANTITY_FLAGS if getattr(args, flag)]
    if not wanted:
        if args.every is not None:
            p.error("argument --every: the interval of --noise and --curvature; give one of them")
        return {}
    if args.sweep:
        p.error(f"argument --{wanted[0]}: for a run at one depth, not a depth sweep")
    if args.devices is not None and args.devices > 1:
        p.error(f"argument --{wanted[0]}: runs on one device; give --devices 1, not "
                f"--devices {args.devices}")
    args.devices = 1 if args.devices is None else args.devices
    accepted = inspect.signature(train).parameters
    every = QUANTITIES_EVERY if args.every is None else args.every
    for flag in wanted:
        if QUANTITY_FLAGS[flag] not in accepted:
            p.error(f"argument --{flag}: this version of gf.train does not take "
                    f"{QUANTITY_FLAGS[flag]}")
    return {QUANTITY_FLAGS[flag]: every for flag in wanted}


def _devices(p, args) -> int:
    """Joins a multi-process run if one is configured, then checks --devices against the
    visible devices and the batch (the sweep's probe batch at init too); returns the count."""
    from .. import distributed

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
        from ..experiments.depth_sweep import PROBE_BATCH
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
