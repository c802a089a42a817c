"""What the experiments share: progress on stderr, class subsets of a dataset, training a given
model with every layer recorded, and inference-mode evaluation."""
from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import data
from .side_by_side import count_params, make_optimizer, truncate
from ..report.progress import Progress, _LineWriter
from ..train import train

EVAL_CHUNK = 512


@functools.lru_cache(maxsize=None)
def shared_optimizer(name: str, lr: float):
    """One optax transformation per (name, lr): the compiled train steps are cached per
    optimizer object, so runs of the same structure share one compilation."""
    return make_optimizer(name, lr)


class Log(_LineWriter):
    """Progress lines on stderr (nothing when disabled)."""

    def line(self, text: str):
        self._write(text, final=True)

    def progress(self, names, steps: int) -> Progress:
        """The run's per-job progress bar (`start(i)`, `step`, `finish(note)`) on this stream."""
        return Progress(names, steps, enabled=self.enabled, stream=self.stream)


def subset(x, y, classes, *, relabel: bool = True, limit: int | None = None, seed: int = 0):
    """The examples of `classes` (labels renumbered 0.. in that order when `relabel`), at most
    `limit` of them drawn at random from `seed`, in a random order."""
    keep = np.flatnonzero(np.isin(y, classes))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B5]))
    keep = rng.permutation(keep)[:limit]
    ys = y[keep]
    if relabel:
        index = {int(c): i for i, c in enumerate(classes)}
        ys = np.asarray([index[int(v)] for v in ys])
    return x[keep], ys.astype(np.int32)


def fit(model, name: str, x, y, *, steps: int, batch_size: int, optimizer: str, lr: float,
        log_every: int, seed: int, loss=None, progress=None) -> dict:
    """Trains `model` in place on (x, y) with `gf.train` (batches drawn from `seed`); returns
    {"name", "params", "history", "diverged_at", "train_s"}. A non-finite loss marks it diverged,
    its History kept up to the last finite record (as the run does)."""
    if batch_size > len(x):
        raise ValueError(f"batch_size={batch_size} is larger than the {len(x)} training examples "
                         f"of {name}")
    t0 = time.perf_counter()
    hist = train(model, data.batches(x, y, batch_size, seed), steps=steps,
                 optimizer=shared_optimizer(optimizer, lr), log_every=log_every, loss=loss,
                 progress=progress)
    bad = np.flatnonzero(~np.isfinite(hist["loss"]))
    diverged = int(hist.steps[bad[0]]) if bad.size else None
    if bad.size:
        hist = truncate(hist, max(1, int(bad[0])))
    hist.meta.update(arch=name, steps=steps, batch_size=batch_size, optimizer=optimizer, lr=lr,
                     seed=seed)
    return {"name": name, "params": count_params(model), "history": hist,
            "diverged_at": diverged, "train_s": time.perf_counter() - t0}


def outputs(model, x, chunk: int = EVAL_CHUNK) -> np.ndarray:
    """The model's outputs on `x` in inference mode (BatchNorm on its running statistics, as
    Keras predicts), in chunks of `chunk` (the last padded, so one compilation)."""
    model = nnx.clone(model)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.BatchNorm):
            m.use_running_average = True
    graphdef, state = nnx.split(model)
    chunk = min(chunk, len(x))
    out = []
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
        out.append(np.asarray(_forward(graphdef, state, jnp.asarray(part)))[:chunk - pad])
    return np.concatenate(out).astype(np.float64)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def accuracy(model, x, y) -> tuple[float, float]:
    """(cross-entropy, accuracy) of a classifier returning logits, in inference mode."""
    logits = outputs(model, x)
    z = logits - logits.max(-1, keepdims=True)
    loss = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y])
    return float(loss), float(np.mean(logits.argmax(-1) == y))


def binary_accuracy(model, x, y) -> tuple[float, float]:
    """(binary cross-entropy, accuracy) of a model returning probabilities of shape (n, 1)."""
    p = np.clip(outputs(model, x)[:, 0], 1e-7, 1 - 1e-7)
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(loss), float(np.mean((p > 0.5) == (y > 0.5)))


def finite_or_none(v):
    return v if v is not None and math.isfinite(v) else None


def numbers(res: dict) -> dict:
    """The JSON-ready numbers of a `fit` result (plus whatever evaluation added to it)."""
    from ..analysis.diagnose import diagnose
    from .side_by_side import error_ratio, final_train

    h = res["history"]
    ok = res["diverged_at"] is None
    loss, acc = final_train(h) if ok else (None, None)
    return {"name": res["name"], "params": res["params"], "layers": len(h.layers),
            "final_train_loss": loss, "final_train_accuracy": acc,
            "held_out_loss": res.get("held_out_loss"),
            "held_out_accuracy": res.get("held_out_accuracy"),
            "error_ratio_init": error_ratio(h, 0), "error_ratio_end": error_ratio(h, -1) if ok
            else None, "diverged_at": res["diverged_at"], "train_s": round(res["train_s"], 2),
            "diagnosis_end": [str(f) for f in diagnose(h)]}


def comparison_rows(items: list[dict]) -> tuple[tuple, list[tuple]]:
    """(head, rows) of the usual comparison table from `numbers` dicts."""
    from ..report.page import fmt

    head = ("model", "params", "train loss", "train acc", "held-out acc", "err ratio init",
            "err ratio end")
    rows = [(a["name"], f"{a['params']:,}", fmt(a["final_train_loss"], ".3f"),
             fmt(a["final_train_accuracy"], ".1%"),
             fmt(a["held_out_accuracy"], ".1%") if a["diverged_at"] is None
             else f"diverged at step {a['diverged_at']}",
             fmt(a["error_ratio_init"], ".1e"), fmt(a["error_ratio_end"], ".1e"))
            for a in items]
    return head, rows


def recalibrate(model, x) -> None:
    """Sets every BatchNorm's running statistics of `model` (in place) to the batch statistics
    of `x` (one pass), as after a long training run; modes and momenta are kept."""
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    saved = [(m.momentum, m.use_running_average) for m in bns]
    for m in bns:
        m.momentum, m.use_running_average = 0.0, False
    graphdef, state = nnx.split(model)
    nnx.update(model, _stats_pass(graphdef, state, jnp.asarray(x)))
    for m, (momentum, mode) in zip(bns, saved):
        m.momentum, m.use_running_average = momentum, mode


@functools.partial(jax.jit, static_argnums=0)
def _stats_pass(graphdef, state, x):
    m = nnx.merge(graphdef, state)
    m(x)
    return nnx.state(m)
