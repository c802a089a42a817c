"""`python -m gradflow.run`: the headline experiment.

The same deep network is built as several architectures (plain, residual, bn, residual_bn by
default) at one width, init and seed, each is trained on the same data in the same order with
every layer recorded, and the run directory gets the histories, heatmaps, a comparison grid on one
colour scale, profiles, curves, summary.json and a self-contained report.html.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

ARCH_BASES = ("plain", "residual", "bn", "residual_bn")
SEPARABLE = "_separable"  # suffix: the same arch with depthwise-separable hidden convs
ARCH_CHOICES = ARCH_BASES + tuple(a + SEPARABLE for a in ARCH_BASES)
OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 1e-3}
MODELS = ("cnn", "mlp")
BN_CALIBRATION = 1024  # training images used to re-estimate BatchNorm statistics for evaluation
FINAL_WINDOW = 0.1  # final train loss/accuracy: mean over the records in the last 10% of steps


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `python -m gradflow.run: error: <message>`, exit code 2."""

    def error(self, message):
        sys.stderr.write(f"python -m gradflow.run: error: {message} (see --help)\n")
        sys.exit(2)


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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--depth", type=_int_at_least(2), default=50,
      help="weight layers on the longest path (stem + hidden + output); residual archs need it even")
    a("--width", type=_int_at_least(1), default=16, help="channels (cnn) or units (mlp) per layer")
    a("--archs", default=",".join(ARCH_BASES),
      help=f"comma-separated architectures, any of: {', '.join(ARCH_CHOICES)}")
    a("--model", choices=MODELS, default="cnn", help="3x3-conv network or fully connected")
    a("--steps", type=_int_at_least(1), default=200, help="training steps per architecture")
    a("--batch-size", type=_int_at_least(1), default=32, help="examples per training step")
    a("--lr", type=_positive_float, default=None,
      help="learning rate (default: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    a("--optimizer", choices=OPTIMIZERS, default="momentum",
      help="sgd, sgd with momentum 0.9, or adam")
    a("--init", choices=tuple(INITS), default="lecun",
      help="kernel initializer (lecun is Flax's default, he preserves ReLU signal variance)")
    a("--activation", choices=tuple(ACTIVATIONS), default="relu", help="activation function")
    a("--dataset", choices=tuple(DATASETS), default="synthetic",
      help="training data; synthetic is generated from --seed (no download)")
    a("--seed", type=_int_at_least(0), default=0, help="seed for data, initialization and order")
    a("--log-every", type=_int_at_least(1), default=5, help="record every layer every N steps")
    a("--out", default=None, help="run directory to create (must not exist or be empty; "
      "default: runs/<timestamp>)")
    a("--quiet", action="store_true", help="no progress output on stderr")
    return p


def parse(argv=None) -> argparse.Namespace:
    """Parses and validates everything before anything is written; bad input exits with code 2."""
    from .models import hidden_blocks, MAX_DEPTH

    p = build_parser()
    args = p.parse_args(argv)
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
    if args.depth > MAX_DEPTH:
        p.error(f"argument --depth: {args.depth} is above the supported maximum of {MAX_DEPTH}")
    for arch in archs:
        try:
            hidden_blocks(_base(arch), args.depth)
        except ValueError as e:
            p.error(f"argument --depth: {e}")
    args.archs = archs
    args.lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    args.out = _out_dir(p, args.out)
    return args


def _base(arch: str) -> str:
    return arch[:-len(SEPARABLE)] if arch.endswith(SEPARABLE) else arch


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

class Progress:
    """Progress on stderr: the current architecture's steps, step rate and time left, and the
    whole run's. Rewrites one line on a terminal; elsewhere prints a line every quarter."""

    def __init__(self, archs, steps: int, enabled: bool = True, stream=None):
        self.archs, self.steps, self.enabled = list(archs), steps, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t_run = time.perf_counter()
        self.overheads: list[float] = []  # per finished arch: time not explained by its step rate

    def start(self, i: int):
        self.i, self.t0, self.t_last = i, time.perf_counter(), 0.0
        self.warm_t = self.warm_step = None  # steady-state rate starts after the compiles
        self.quarter = -1
        self._write(f"[{i + 1}/{len(self.archs)}] {self.archs[i]}: building and compiling…",
                    final=not self.tty)

    def step(self, step: int):
        now = time.perf_counter()
        if step == 2 or (self.warm_t is None and step >= 2):
            self.warm_t, self.warm_step = now, step
        done = step + 1
        q = 4 * done // self.steps
        if self.tty and now - self.t_last < 0.25 and done < self.steps:
            return
        if not self.tty and (q == self.quarter or done < self.steps and q == 0):
            return
        self.t_last, self.quarter = now, q
        rate = self._rate(now, step)
        left = (self.steps - done) / rate if rate else None
        self._write(self._line(done, rate, left, now), final=not self.tty)

    def finish(self, note: str = ""):
        now = time.perf_counter()
        took = now - self.t0
        rate = self._rate(now, self.steps - 1)
        if rate:
            self.overheads.append(max(0.0, took - self.steps / rate))
        self._write(f"[{self.i + 1}/{len(self.archs)}] {self.archs[self.i]}: {self.steps} steps in "
                    f"{took:.1f}s" + (f" — {note}" if note else ""), final=True)

    def _rate(self, now, step):
        if self.warm_t is None or step <= self.warm_step or now <= self.warm_t:
            return None
        return (step - self.warm_step) / (now - self.warm_t)

    def _line(self, done, rate, left, now):
        n = len(self.archs)
        bar = "#" * (20 * done // self.steps)
        s = (f"[{self.i + 1}/{n}] {self.archs[self.i]:<14} [{bar:<20}] {done}/{self.steps}")
        if rate:
            overhead = sum(self.overheads) / len(self.overheads) if self.overheads else 5.0
            total_left = left + (n - self.i - 1) * (self.steps / rate + overhead)
            s += (f"  {rate:.1f} steps/s  {_clock(left)} left · all archs: ~{_clock(total_left)} "
                  f"left, {_clock(now - self.t_run)} elapsed")
        return s

    def _write(self, text, final):
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


# -- one architecture ---------------------------------------------------------------------------

def _optimizer(name: str, lr: float):
    import optax
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    return optax.adam(lr)


def build_model(arch: str, args, image_shape, num_classes: int):
    """The network for `arch` under the run's settings, initialized from the run's seed."""
    from flax import nnx

    from . import models
    common = dict(width=args.width, num_classes=num_classes, init=args.init,
                  activation=args.activation, rngs=nnx.Rngs(args.seed))
    if args.model == "mlp":
        return models.mlp(_base(arch), args.depth, in_features=math.prod(image_shape), **common)
    return models.cnn(_base(arch), args.depth, in_channels=image_shape[-1],
                      conv="separable" if arch.endswith(SEPARABLE) else "standard", **common)


def count_params(model) -> int:
    import jax
    from flax import nnx
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def evaluate(model, x_test, y_test, x_calib) -> tuple[float, float]:
    """(held-out loss, accuracy) of a copy of `model` in inference mode. BatchNorm uses running
    statistics, first re-estimated in one pass over `x_calib` (training images): after a short
    run the exponential averages still remember their initial (0, 1) values."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from .losses import cross_entropy

    model = nnx.clone(model)
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    for m in bns:
        m.momentum = 0.0  # the running statistics become those of the calibration pass
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, xc, xt, yt):
        m = nnx.merge(graphdef, state)
        mods = [mod for _, mod in nnx.iter_modules(m) if isinstance(mod, nnx.BatchNorm)]
        if mods:
            for mod in mods:
                mod.use_running_average = False
            m(xc)
            for mod in mods:
                mod.use_running_average = True
        logits = m(xt)
        return cross_entropy(logits, yt), jnp.mean(jnp.argmax(logits, -1) == yt)

    loss, acc = jax.device_get(run(state, x_calib, x_test, y_test))
    return float(np.asarray(loss)), float(np.asarray(acc))


def train_arch(arch, args, ds, progress) -> dict:
    """Builds, trains and evaluates one architecture; returns its result (History included).
    A non-finite loss marks it diverged; its History is kept up to the first non-finite record."""
    import numpy as np

    from . import data
    from .train import train

    t0 = time.perf_counter()
    model = build_model(arch, args, ds.image_shape, ds.num_classes)
    params = count_params(model)
    batches = data.batches(ds.x_train, ds.y_train, args.batch_size, args.seed)
    hist = train(model, batches, steps=args.steps, optimizer=_optimizer(args.optimizer, args.lr),
                 log_every=args.log_every, progress=progress.step)
    hist.meta.update(arch=arch, depth=args.depth, width=args.width, model=args.model,
                     init=args.init, activation=args.activation, optimizer=args.optimizer,
                     lr=args.lr, batch_size=args.batch_size, seed=args.seed, dataset=ds.name)
    res = {"arch": arch, "params": params, "history": hist, "diverged_at": None,
           "held_out_loss": None, "held_out_accuracy": None}
    bad = np.flatnonzero(~np.isfinite(hist["loss"]))
    from flax import nnx
    import jax
    finite_params = all(bool(np.isfinite(np.asarray(x)).all())
                        for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    if bad.size or not finite_params:
        k = int(bad[0]) + 1 if bad.size else len(hist.steps)
        res["diverged_at"] = int(hist.steps[k - 1]) if bad.size else args.steps
        res["history"] = hist = _truncate(hist, k)
        hist.meta["diverged_at_step"] = res["diverged_at"]
    else:
        calib = ds.x_train[:BN_CALIBRATION]
        res["held_out_loss"], res["held_out_accuracy"] = evaluate(model, ds.x_test, ds.y_test,
                                                                  calib)
        if not math.isfinite(res["held_out_loss"]):
            res["held_out_loss"] = None
    res["time_s"] = time.perf_counter() - t0
    return res


def _truncate(hist, k: int):
    from .history import History
    return History(hist.layers, {m: hist[m][:k] for m in hist.metrics},
                   {s: hist[s][:k] for s in hist.scalars}, hist.meta, steps=hist.steps[:k])


# -- summary ------------------------------------------------------------------------------------

def error_ratio(hist, record: int):
    """First layer's error_norm over the last layer's at a record; None if not finite."""
    import numpy as np
    e = np.asarray(hist["error_norm"][record], dtype=np.float64)
    r = e[0] / e[-1] if e[-1] > 0 else np.nan
    return float(r) if np.isfinite(r) else None


def final_train(hist):
    """(loss, accuracy) averaged over the records in the last FINAL_WINDOW of the steps."""
    import numpy as np
    steps = hist.steps
    last = steps[-1]
    sel = steps >= last - FINAL_WINDOW * (last + 1)
    loss, acc = (float(np.mean(hist[k][sel])) for k in ("loss", "accuracy"))
    return (loss if math.isfinite(loss) else None), (acc if math.isfinite(acc) else None)


def verdict(res, best_acc, chance: float) -> str:
    r0, acc = res["error_ratio_init"], res["held_out_accuracy"]
    if res["status"] == "diverged":
        return (f"diverged: loss became non-finite by step {res['diverged_at']} "
                "(try a lower --lr, or normalization)")
    if r0 is None:
        flow = "error signal not measurable at init"
    elif r0 < 1e-2:
        flow = f"error signal vanishes: layer 1 gets {r0:.0e} of the output layer's at init"
    elif r0 > 1e2:
        flow = f"error signal explodes toward the input: layer 1 gets {r0:.0e}× the output's at init"
    else:
        flow = f"error signal reaches layer 1 (ratio {r0:.2g} at init)"
    if acc is None:
        learn = "not evaluated"
    elif acc < chance + 0.05:
        learn = f"did not learn (held-out {acc:.0%}, chance {chance:.0%})"
    elif acc >= best_acc - 0.02:
        learn = f"learns best (held-out {acc:.0%})"
    else:
        learn = f"learns (held-out {acc:.0%})"
    return f"{flow}; {learn}"


def summarize(results, args, ds, started, wall, device) -> dict:
    """summary.json's content; results without History objects, NaN as null."""
    chance = 1 / ds.num_classes
    archs = []
    for r in results:
        h = r["history"]
        status = "diverged" if r["diverged_at"] is not None else "ok"
        loss, acc = final_train(h) if len(h.steps) else (None, None)
        a = {"arch": r["arch"], "status": status, "params": r["params"], "layers": len(h.layers),
             "final_train_loss": loss, "final_train_accuracy": acc,
             "held_out_loss": r["held_out_loss"], "held_out_accuracy": r["held_out_accuracy"],
             "error_ratio_init": error_ratio(h, 0), "error_ratio_end": error_ratio(h, -1),
             "init_step": int(h.steps[0]), "end_step": int(h.steps[-1]),
             "diverged_at": r["diverged_at"], "time_s": round(r["time_s"], 2),
             "history": f"{r['arch']}_history.npz", "heatmap": f"{r['arch']}_heatmap.png"}
        archs.append(a)
    accs = [a["held_out_accuracy"] for a in archs if a["held_out_accuracy"] is not None]
    best = max(accs) if accs else 1.0
    for a in archs:
        a["verdict"] = verdict(a, best, chance)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("quiet",)}
    config["archs"] = ",".join(args.archs)
    return {
        "command": "python -m gradflow.run " + " ".join(sys.argv[1:]) if sys.argv[1:] else
                   "python -m gradflow.run",
        "started": started, "wall_time_s": round(wall, 1), "device": device, "config": config,
        "data": {"name": ds.name, "n_train": int(len(ds.x_train)), "n_test": int(len(ds.x_test)),
                 "image_shape": list(ds.image_shape), "num_classes": ds.num_classes,
                 "description": _describe(ds)},
        "eval": {"bn_calibration_images": BN_CALIBRATION,
                 "final_train_window": f"mean over records in the last {FINAL_WINDOW:.0%} of steps",
                 "error_ratio": "error_norm of layer 1 / error_norm of the last layer, one batch"},
        "archs": archs,
    }


def _describe(ds) -> str:
    shape = "×".join(map(str, ds.image_shape))
    what = ("texture pairs: two oriented gratings per image, class = which pair" if
            ds.name == "synthetic" else ds.name)
    return (f"{ds.name} ({what}), {len(ds.x_train)} training and {len(ds.x_test)} held-out "
            f"{shape} images, {ds.num_classes} classes")


def table(summary) -> str:
    """The compact text table printed at the end."""
    head = f"{'arch':<22}{'params':>9}{'train loss':>11}{'train acc':>10}{'held-out':>10}" \
           f"{'err in/out':>12}{'(end)':>9}  verdict"
    lines = [head, "-" * len(head)]
    for a in summary["archs"]:
        f = lambda v, s: "—" if v is None else format(v, s)  # noqa: E731
        lines.append(f"{a['arch']:<22}{a['params']:>9,}{f(a['final_train_loss'], '.3f'):>11}"
                     f"{f(a['final_train_accuracy'], '.1%'):>10}"
                     f"{f(a['held_out_accuracy'], '.1%'):>10}"
                     f"{f(a['error_ratio_init'], '.1e'):>12}{f(a['error_ratio_end'], '.1e'):>9}"
                     f"  {a['verdict']}")
    lines.append("err in/out: error signal ‖∂L/∂z‖ at layer 1 / at the output layer, at init and "
                 "at the end (≪1: vanishing, ≫1: exploding)")
    return "\n".join(lines)


# -- outputs ------------------------------------------------------------------------------------

def write_outputs(out: Path, results, summary, ds) -> list[str]:
    """Histories, figures, summary.json and report.html; returns the file names written."""
    import matplotlib.pyplot as plt

    from . import report
    from .plot import heatmap

    written = []
    runs = {r["arch"]: r["history"] for r in results if len(r["history"].steps)}
    notes = {r["arch"]: f"diverged at step {r['diverged_at']}" for r in results
             if r["diverged_at"] is not None}
    figures = []

    def save(name, fig, title=None, caption=""):
        png = report.png_bytes(fig)
        (out / name).write_bytes(png)
        written.append(name)
        if title:
            figures.append((title, caption, png))

    for r in results:
        written.append(r["history"].save(out / f"{r['arch']}_history.npz").name)
    if runs:
        save("comparison_error_norm.png", report.comparison_grid(runs, "error_norm", notes),
             "Error signal in every layer, all architectures",
             "Each panel: layers (input at the bottom) × training steps; colour = ‖∂L/∂z‖ on one "
             "log scale shared by all panels, so a darker band is a weaker signal. Grey cells: "
             "non-finite (diverged).")
        save("comparison_grad_norm.png", report.comparison_grid(runs, "grad_norm", notes),
             "Weight-gradient norm in every layer", "‖∂L/∂W‖ per layer on one shared log scale.")
        save("profiles.png", report.profiles(runs), "Per-layer profiles at init and at the end",
             "One line per architecture; layer 1 is the input side. Log scale.")
        held = {r["arch"]: r["held_out_accuracy"] for r in results}
        save("curves.png", report.curves(runs, ds.num_classes, held), "Loss and accuracy",
             "Training loss and accuracy per recorded batch (thin) and moving average (thick).")
    for arch, h in runs.items():
        fig = heatmap(h, "error_norm")
        save(f"{arch}_heatmap.png", fig, f"{arch}: error signal heatmap",
             "Own colour scale (not comparable across architectures; see the grid above).")
        plt.close("all")
    _write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    written.append("summary.json")
    _write_text(out / "report.html", report.html_report(summary, figures))
    written.append("report.html")
    return written


def _write_text(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_safe(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def main(argv=None) -> int:
    args = parse(argv)
    t_start = time.perf_counter()
    started = _dt.datetime.now().isoformat(timespec="seconds")
    import jax

    from .data import DATASETS

    ds = DATASETS[args.dataset](seed=args.seed)
    if args.batch_size > len(ds.x_train):
        build_parser().error(f"argument --batch-size: {args.batch_size} is larger than the "
                             f"{len(ds.x_train)} training examples")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        build_parser().error(f"argument --out: cannot create {args.out} ({e.strerror})")
    device = f"{jax.default_backend()} ({jax.devices()[0].device_kind}, {os.cpu_count()} cores)"
    progress = Progress(args.archs, args.steps, enabled=not args.quiet)
    results = []
    for i, arch in enumerate(args.archs):
        progress.start(i)
        res = train_arch(arch, args, ds, progress)
        progress.finish("diverged" if res["diverged_at"] is not None else
                        f"held-out accuracy {res['held_out_accuracy']:.1%}")
        results.append(res)
    summary = summarize(results, args, ds, started, time.perf_counter() - t_start, device)
    write_outputs(args.out, results, summary, ds)
    summary["wall_time_s"] = round(time.perf_counter() - t_start, 1)
    _write_text(args.out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    print(table(summary))
    print(f"\nrun directory: {args.out}  (open {args.out / 'report.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
