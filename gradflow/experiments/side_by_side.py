"""The side-by-side experiment behind `python -m gradflow.run`, usable from Python.

    cfg = Config(depth=50, archs=("plain", "residual_bn"))
    ds = data.synthetic(cfg.seed)
    results = [train_arch(arch, cfg, ds) for arch in cfg.archs]
    summary = summarize(results, cfg, ds)

Every architecture is built at the same width, init and seed and trained on the same batches in
the same order; what differs between them is the architecture alone.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .. import data, distributed, models
from ..analysis import divergence, theory
from ..analysis.diagnose import Finding, diagnose
from ..history import History
from ..train import train

ARCH_BASES = models.ARCHS
SEPARABLE = "_separable"  # suffix: the same arch with depthwise-separable hidden convs
ARCH_CHOICES = ARCH_BASES + tuple(a + SEPARABLE for a in ARCH_BASES)
OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.05, "momentum": 0.01, "adam": 1e-3}
MODELS = ("cnn", "mlp")
EVAL_CHUNK = 1024  # held-out images per inference call
BN_CALIBRATION = 1024  # training images used to re-estimate BatchNorm statistics for evaluation
FINAL_WINDOW = 0.1  # final train loss/accuracy: mean over the records in the last 10% of steps


@dataclass
class Config:
    """One experiment's settings; `lr=None` takes the optimizer's default from DEFAULT_LR;
    `devices`: data-parallel devices (None: every visible one), as in `gf.train`."""
    depth: int = 50
    width: int = 16
    archs: tuple = ARCH_BASES
    model: str = "cnn"
    steps: int = 150
    batch_size: int = 32
    lr: float | None = None
    optimizer: str = "momentum"
    init: str = "lecun"
    activation: str = "relu"
    dataset: str = "synthetic"
    data_dir: str | None = None
    seed: int = 0
    log_every: int = 5
    devices: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.archs = tuple(self.archs)
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]


def base_arch(arch: str) -> str:
    """'residual_bn_separable' -> 'residual_bn'."""
    return arch[:-len(SEPARABLE)] if arch.endswith(SEPARABLE) else arch


@functools.lru_cache(maxsize=64)
def make_optimizer(name: str, lr: float):
    """sgd, sgd with momentum 0.9 (the default), or adam, as an optax transformation. The same
    object for the same (name, lr): the compiled train steps are cached per optimizer, so runs
    in one process (a resumed run, the tests) reuse their compilation."""
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    if name == "adam":
        return optax.adam(lr)
    raise ValueError(f"optimizer={name!r} is not one of {', '.join(map(repr, OPTIMIZERS))}")


def build_model(arch: str, cfg: Config, image_shape, num_classes: int, *, stack: str = "auto",
                rngs: nnx.Rngs | None = None):
    """The network for `arch` under `cfg`, its hidden blocks stacked as `stack` says,
    initialized from `rngs` (default: nnx.Rngs(cfg.seed))."""
    common = dict(width=cfg.width, num_classes=num_classes, init=cfg.init,
                  activation=cfg.activation, stack=stack,
                  rngs=nnx.Rngs(cfg.seed) if rngs is None else rngs)
    if cfg.model == "mlp":
        return models.mlp(base_arch(arch), cfg.depth, in_features=math.prod(image_shape), **common)
    return models.cnn(base_arch(arch), cfg.depth, in_channels=image_shape[-1],
                      conv="separable" if arch.endswith(SEPARABLE) else "standard", **common)


def count_params(model) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def evaluate(model, x, y, x_calib, chunk: int = EVAL_CHUNK, mesh=None) -> tuple[float, float]:
    """(loss, accuracy) of a copy of `model` on (x, y) in inference mode: BatchNorm uses running
    statistics, first re-estimated in one pass over `x_calib` (training images) because after a
    short run the exponential averages still remember their initial (0, 1) values. `x` goes
    through in chunks of `chunk` (the last one padded), so any split size compiles once.
    With a `mesh` (`gradflow.distributed`), every process passes the whole of `x`, `y` and
    `x_calib`; chunks are split across the devices, and `x_calib` is cut to a multiple of them."""
    model = nnx.clone(model)
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    if bns:
        for m in bns:
            m.momentum, m.use_running_average = 0.0, False  # running stats := calibration stats
        graphdef, state = nnx.split(model)
        if mesh is not None:
            x_calib = x_calib[:len(x_calib) - len(x_calib) % mesh.shape[distributed.DATA_AXIS]]
        calibrated = _calibrated if mesh is None else distributed.gathered(_calibrated, mesh)
        model = nnx.merge(graphdef, calibrated(graphdef, state, _rows(x_calib, mesh)))
        for _, m in nnx.iter_modules(model):
            if isinstance(m, nnx.BatchNorm):
                m.use_running_average = True
    graphdef, state = nnx.split(model)
    n = len(x)
    chunk = min(chunk, n)
    logits_fn = _logits
    if mesh is not None:
        k = mesh.shape[distributed.DATA_AXIS]
        chunk, logits_fn = -(-chunk // k) * k, distributed.gathered(_logits, mesh)
    logits = []
    for start in range(0, n, chunk):
        part = x[start:start + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
        logits.append(np.asarray(logits_fn(graphdef, state, _rows(part, mesh)))[:chunk - pad])
    logits = np.concatenate(logits).astype(np.float64)
    y = np.asarray(y)
    z = logits - logits.max(-1, keepdims=True)
    loss = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(n), y])
    return float(loss), float(np.mean(logits.argmax(-1) == y))


def _rows(a, mesh):
    return jnp.asarray(a) if mesh is None else distributed.place_global(a, mesh)


@functools.partial(jax.jit, static_argnums=0)
def _calibrated(graphdef, state, x):
    m = nnx.merge(graphdef, state)
    m(x)
    return nnx.state(m)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def train_arch(arch: str, cfg: Config, ds, progress=None, *, saver=None, stop=None) -> dict:
    """Builds, trains and evaluates one architecture. Returns a dict with its History; a
    non-finite loss or gradient marks it diverged (`diverged_at`, `nonfinite` says where), its
    History kept up to the last finite record. `saver` (a `checkpoint.ArchSaver`) flushes and
    checkpoints the training and resumes it from its checkpoint; `stop` is `gf.train`'s stop
    hook: a stop sets `interrupted_at` (the steps done) and skips the evaluation."""
    t0 = time.perf_counter()
    model = build_model(arch, cfg, ds.image_shape, ds.num_classes)
    res = {"arch": arch, "params": count_params(model), "diverged_at": None,
           "held_out_loss": None, "held_out_accuracy": None}
    mesh = distributed.resolve(cfg.devices)
    batches = data.batches(ds.x_train, ds.y_train, cfg.batch_size, cfg.seed)
    if mesh is not None:  # several processes: each feeds its own rows of every batch
        batches = distributed.process_shares(batches, mesh)
    meta = dict(arch=arch, depth=cfg.depth, width=cfg.width, model=cfg.model, init=cfg.init,
                activation=cfg.activation, optimizer=cfg.optimizer, lr=cfg.lr,
                batch_size=cfg.batch_size, seed=cfg.seed, dataset=ds.name,
                devices=1 if mesh is None else mesh.size)
    hooks = saver.hooks(meta) if saver is not None else {}
    hist = train(model, batches, steps=cfg.steps, optimizer=make_optimizer(cfg.optimizer, cfg.lr),
                 log_every=cfg.log_every, progress=progress, mesh=mesh, stop=stop, **hooks)
    res["train_s"] = time.perf_counter() - t0
    hist.meta.update(meta)
    where = divergence.locate(hist)
    params_ok = all(bool(np.isfinite(np.asarray(p)).all())
                    for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    if hist.meta.get("stopped_at_step") is not None:
        res["interrupted_at"] = hist.meta["stopped_at_step"]
    elif where is not None or not params_ok:
        # The first non-finite record's per-layer values are NaN-propagation debris (zeros, NaN)
        # below the layer where it appeared: keep the records before it, which show how it got
        # there, and where it appeared.
        res["diverged_at"] = where["step"] if where else cfg.steps
        hist = truncate(hist, max(1, where["record"]) if where else len(hist.steps))
        hist.meta["diverged_at_step"] = res["diverged_at"]
        if where:
            res["nonfinite"] = {k: where[k] for k in ("backward_layer", "forward_layer")}
            hist.meta["nonfinite_layer_backward"] = where["backward_layer"]
            hist.meta["nonfinite_layer_forward"] = where["forward_layer"]
    else:
        loss, acc = evaluate(model, ds.x_test, ds.y_test, ds.x_train[:BN_CALIBRATION], mesh=mesh)
        res["held_out_loss"] = loss if math.isfinite(loss) else None
        res["held_out_accuracy"] = acc
    res["history"] = hist
    res["time_s"] = time.perf_counter() - t0
    return res


def truncate(hist: History, k: int) -> History:
    """The first `k` records of `hist`."""
    return History(hist.layers, {m: hist[m][:k] for m in hist.metrics},
                   {s: hist[s][:k] for s in hist.scalars}, hist.meta, steps=hist.steps[:k])


# -- summary ------------------------------------------------------------------------------------

def error_ratio(hist: History, record: int):
    """error_norm of the first layer over the last layer's at a record (<1: vanishing toward the
    input); None where undefined."""
    e = np.asarray(hist["error_norm"][record], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = e[0] / e[-1]
    return float(r) if np.isfinite(r) else None


def final_train(hist: History):
    """(loss, accuracy) averaged over the records in the last FINAL_WINDOW of the steps."""
    last = hist.steps[-1]
    sel = hist.steps >= last - FINAL_WINDOW * (last + 1)
    out = [float(np.mean(hist[k][sel])) for k in ("loss", "accuracy")]
    return tuple(v if math.isfinite(v) else None for v in out)


def verdict(a: dict, best_acc: float, num_classes: int) -> str:
    """One line: how the error signal flows (from the error ratio) and whether the arch learned."""
    chance, chance_loss = 1 / num_classes, math.log(num_classes)
    if a["status"] == "failed":
        return f"failed: {a['error']}"
    if a["status"] == "interrupted":
        return f"interrupted after {a['interrupted_at']} steps (resume with --resume)"
    if a["status"] == "diverged":
        why = "loss became non-finite"
        if a["initial_loss"] is not None and a["initial_loss"] > 2 * chance_loss:
            why = (f"initial loss {a['initial_loss']:.3g} ≫ chance {chance_loss:.2f}: "
                   "the forward signal explodes")
        where = a.get("nonfinite_layer")
        at = f", first non-finite at layer '{where}' (backward order)" if where else ""
        return f"diverged by step {a['diverged_at']}{at} ({why})"
    r0, r1, acc = a["error_ratio_init"], a["error_ratio_end"], a["held_out_accuracy"]
    if r0 is None:
        flow = "error signal not measured"
    elif r0 < 1e-2:
        flow = f"vanishing error signal ({r0:.0e} at layer 1)"
    elif r0 > 1e2:
        flow = f"error signal explodes toward the input ({r0:.0e}×)"
    else:
        flow = "error signal reaches every layer"
    if r1 == 0:
        flow += ", none at all by the end (dead units)"
    if acc is None:
        learn = "not evaluated"
    elif acc < chance + 0.05:
        learn = "did not learn"
    elif acc >= best_acc - 0.02:
        learn = "learns best"
    else:
        learn = "learns"
    return f"{flow}; {learn}"


def arch_summary(res: dict) -> dict:
    """The JSON-ready numbers of one architecture's result (verdict added by `summarize`). A result
    without a History ({"arch", "error"}: training raised) gives status "failed"."""
    if res.get("history") is None:
        return {"arch": res["arch"], "status": "failed", "error": res.get("error", "unknown"),
                **{k: None for k in _NUMBERS}}
    h = res["history"]
    interrupted = res.get("interrupted_at")
    ended = res["diverged_at"] is None and interrupted is None
    loss, acc = final_train(h) if ended else (None, None)
    first_loss = float(h["loss"][0])
    status = ("diverged" if res["diverged_at"] is not None
              else "interrupted" if interrupted is not None else "ok")
    nonfinite = res.get("nonfinite") or {}
    return {
        "arch": res["arch"], "status": status,
        "params": res["params"], "layers": len(h.layers),
        "final_train_loss": loss, "final_train_accuracy": acc,
        "held_out_loss": res["held_out_loss"], "held_out_accuracy": res["held_out_accuracy"],
        "error_ratio_init": error_ratio(h, 0),
        "error_ratio_end": error_ratio(h, -1) if ended else None,
        "init_step": int(h.steps[0]), "end_step": int(h.steps[-1]),
        "initial_loss": first_loss if math.isfinite(first_loss) else None,
        "diverged_at": res["diverged_at"], "nonfinite_layer": nonfinite.get("backward_layer"),
        "nonfinite_forward_layer": nonfinite.get("forward_layer"),
        "interrupted_at": interrupted, "records": len(h.steps),
        "train_s": round(res["train_s"], 2), "time_s": round(res["time_s"], 2),
        "history": f"{res['arch']}_history.npz", "heatmap": f"{res['arch']}_heatmap.png",
        **slopes(h), "diagnosis_init": [str(f) for f in diagnose(h.snapshot(0))],
        "diagnosis_end": _end_findings(h, res["diverged_at"], nonfinite),
    }


def _end_findings(h: History, diverged_at, nonfinite: dict | None = None) -> list[str]:
    """gf.diagnose at the last record; a diverged arch's History stops before the non-finite
    record, so its divergence (and where it appeared) is stated first."""
    found = [str(f) for f in diagnose(h)]
    if diverged_at is None:
        return found
    where = divergence.describe(nonfinite or {})
    layer = (nonfinite or {}).get("backward_layer")
    div = Finding("divergence", (layer,) if layer else (),
                  f"loss or gradients became non-finite by step {diverged_at}"
                  + (f"; {where}" if where else ""),
                  "lower the learning rate; add normalization or gradient clipping")
    return [str(div)] + [f for f in found if not f.startswith(("healthy", "divergence"))]


def slopes(h: History) -> dict:
    """Measured and mean-field-predicted change of log10 ||dL/dz|| per layer toward the input,
    over the hidden layers at init (None where the theory does not apply)."""
    m = h.meta
    measured = theory.slope_toward_input(h["error_norm"][0][1:-1])
    pred = theory.predicted_profile("error_norm", len(h.layers), arch=base_arch(m["arch"]),
                                    init=m["init"], activation=m["activation"])
    predicted = theory.slope_toward_input(pred[1:-1]) if pred is not None else math.nan
    return {"error_slope_init": measured if math.isfinite(measured) else None,
            "error_slope_theory": predicted if math.isfinite(predicted) else None}


_NUMBERS = ("params", "final_train_loss", "final_train_accuracy", "held_out_loss",
            "held_out_accuracy", "error_ratio_init", "error_ratio_end", "initial_loss",
            "diverged_at", "nonfinite_layer", "interrupted_at")


def summarize(results: list[dict], cfg: Config, ds) -> dict:
    """summary.json's content (no History objects; NaN as null)."""
    archs = [arch_summary(r) for r in results]
    accs = [a["held_out_accuracy"] for a in archs if a["held_out_accuracy"] is not None]
    for a in archs:
        a["verdict"] = verdict(a, max(accs, default=1.0), ds.num_classes)
    config = {k: v for k, v in vars(cfg).items() if k != "extra"}
    config["archs"] = ",".join(cfg.archs)
    return {
        "config": config,
        "data": {"name": ds.name, "n_train": int(len(ds.x_train)), "n_test": int(len(ds.x_test)),
                 "image_shape": list(ds.image_shape), "num_classes": ds.num_classes,
                 "description": describe(ds)},
        "definitions": {
            "error_ratio": "error_norm (‖∂L/∂z‖) of layer 1 divided by that of the last layer, "
                           "on one training batch; init = first record, end = last record",
            "final_train": f"mean loss/accuracy of the recorded training batches in the last "
                           f"{FINAL_WINDOW:.0%} of the steps",
            "held_out": f"loss/accuracy on the held-out split in inference mode; BatchNorm "
                        f"running statistics re-estimated on {BN_CALIBRATION} training images",
            "error_slope": "least-squares change of log10 ‖∂L/∂z‖ per layer toward the input over "
                           "the hidden layers at init (negative: vanishing); theory: the "
                           "mean-field prediction (gradflow.theory; plain and BN-ReLU only)",
            "diagnosis": "gradflow.diagnose findings at init and at the end of training",
        },
        "archs": archs,
    }


def describe(ds) -> str:
    shape = "×".join(map(str, ds.image_shape))
    what = ("two oriented gratings per image, the class is which pair" if ds.name == "synthetic"
            else ds.name)
    return (f"{ds.name} ({what}): {len(ds.x_train)} training and {len(ds.x_test)} held-out "
            f"{shape} images, {ds.num_classes} classes")
