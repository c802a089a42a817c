"""Inference over a whole dataset: BatchNorm statistics re-estimated from training images, then
outputs in fixed-size chunks (one compilation for any dataset size), loss and accuracy.

    loss, acc = evaluate(model, ds.x_test, ds.y_test, x_calib=ds.x_train[:1024])
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import distributed

EVAL_CHUNK = 1024  # examples per inference call


def _batchnorms(model) -> list:
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]


def recalibrate(model, x, mesh=None) -> None:
    """Sets the running statistics of every BatchNorm of `model` (in place) to the batch
    statistics of `x` in one pass, as after a long training run; modes and momenta are kept.

    A short run leaves the exponential averages remembering their initial (0, 1) values; this
    gives inference-mode evaluation the statistics the network actually trained with.

    Args:
      model: an NNX model (unchanged if it has no BatchNorm).
      x: training inputs, one batch.
      mesh: a data mesh (`gradflow.distributed`): `x` is the global batch, cut to a multiple of
        the devices and split across them.
    """
    bns = _batchnorms(model)
    if not bns:
        return
    saved = [(m.momentum, m.use_running_average) for m in bns]
    for m in bns:
        m.momentum, m.use_running_average = 0.0, False  # running stats := these batch stats
    if mesh is not None:
        x = x[:len(x) - len(x) % mesh.shape[distributed.DATA_AXIS]]
    graphdef, state = nnx.split(model)
    stats_pass = _stats_pass if mesh is None else distributed.gathered(_stats_pass, mesh)
    nnx.update(model, stats_pass(graphdef, state, _rows(x, mesh)))
    for m, (momentum, mode) in zip(bns, saved):
        m.momentum, m.use_running_average = momentum, mode


def predict(model, x, *, chunk: int = EVAL_CHUNK, mesh=None) -> np.ndarray:
    """The outputs of `model` on `x` in inference mode (BatchNorm on its running statistics).

    Args:
      model: an NNX model (not modified).
      x: inputs, any number of examples.
      chunk: examples per call; the last chunk is padded, so any size compiles once.
      mesh: a data mesh: every process passes the whole of `x`; chunks are split across the
        devices.

    Returns:
      The outputs as float64 numpy, one row per example.

    Example:
      >>> model = nnx.Linear(4, 8, rngs=nnx.Rngs(0))
      >>> predict(model, np.ones((5, 4)), chunk=2).shape  # chunks of 2, the last one padded
      (5, 8)
    """
    model = nnx.clone(model)
    for m in _batchnorms(model):
        m.use_running_average = True
    graphdef, state = nnx.split(model)
    chunk = min(chunk, len(x))
    forward = _forward
    if mesh is not None:
        k = mesh.shape[distributed.DATA_AXIS]
        chunk, forward = -(-chunk // k) * k, distributed.gathered(_forward, mesh)
    out = []
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
        out.append(np.asarray(forward(graphdef, state, _rows(part, mesh)))[:chunk - pad])
    return np.concatenate(out).astype(np.float64)


def evaluate(model, x, y, x_calib=None, *, chunk: int = EVAL_CHUNK,
             mesh=None) -> tuple[float, float]:
    """Cross-entropy and accuracy of a classifier (logits out) on (x, y) in inference mode.

    Args:
      model: an NNX model (not modified: a copy is recalibrated).
      x, y: inputs and integer labels.
      x_calib: training images whose batch statistics replace the BatchNorm running statistics
        first (`recalibrate`); None keeps them.
      chunk, mesh: as in `predict`.

    Returns:
      (mean cross-entropy, accuracy).

    Example:
      >>> model = nnx.Linear(4, 8, rngs=nnx.Rngs(0))
      >>> loss, acc = evaluate(model, np.ones((5, 4)), np.zeros(5, int))
      >>> loss > 0, acc in (0.0, 1.0)  # the five inputs are equal
      (True, True)
      >>> evaluate(model, ds.x_test, ds.y_test, x_calib=ds.x_train[:1024])  # doctest: +SKIP
    """
    if x_calib is not None and _batchnorms(model):
        model = nnx.clone(model)
        recalibrate(model, x_calib, mesh)
    logits = predict(model, x, chunk=chunk, mesh=mesh)
    y = np.asarray(y)
    z = logits - logits.max(-1, keepdims=True)
    loss = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y])
    return float(loss), float(np.mean(logits.argmax(-1) == y))


def binary_evaluate(model, x, y, *, chunk: int = EVAL_CHUNK) -> tuple[float, float]:
    """Binary cross-entropy and accuracy (threshold 0.5) on (x, y) in inference mode.

    Args:
      model: an NNX model returning probabilities of shape (n, 1) (not modified).
      x, y: inputs and 0/1 labels.
      chunk: as in `predict`.

    Returns:
      (mean binary cross-entropy, accuracy).
    """
    p = np.clip(predict(model, x, chunk=chunk)[:, 0], 1e-7, 1 - 1e-7)
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(loss), float(np.mean((p > 0.5) == (y > 0.5)))


def _rows(a, mesh):
    return jnp.asarray(a) if mesh is None else distributed.place_global(a, mesh)


@functools.partial(jax.jit, static_argnums=0)
def _stats_pass(graphdef, state, x):
    m = nnx.merge(graphdef, state)
    m(x)
    return nnx.state(m)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)
