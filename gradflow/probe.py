"""`gf.probe`: every layer's gradient and statistics on one batch, without changing the model."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from . import distributed, losses
from .history import Snapshot
from .instrument.steps import layout_for, probe_step


def as_batch(batch, mesh=None):
    """(x, y) -> device arrays, sharded along the `data` axis of `mesh` if given; ValueError if
    `batch` is not a pair or does not divide across the mesh's devices."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("batch must be a pair (x, y) of arrays")
    if mesh is not None:
        return distributed.place_batch(batch[0], batch[1], mesh)
    return jnp.asarray(batch[0]), jnp.asarray(batch[1])


def split_model(model, wrt=nnx.Param):
    """(graphdef, trained params, everything else) of an NNX model."""
    if not isinstance(model, nnx.Module):
        raise ValueError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    return nnx.split(model, wrt, ...)


def probe(model, batch, loss=None, *, devices=None, mesh=None) -> Snapshot:
    """Per-layer grad_norm, error_norm, act_mean, act_std, dead_frac and weight_norm for one batch.

    `batch` is (x, y); `loss` is a name ("cross_entropy" (default, integer labels), "mse",
    "binary_cross_entropy") or a callable (outputs, y) -> scalar. BatchNorm uses batch statistics
    as in training; no parameter or running statistic of `model` changes.

    Data parallel over `devices` (None: every visible device; a count; a list) or a `mesh`
    with a `data` axis (`gradflow.distributed`): the batch is split across them and every
    statistic is that of the whole batch. In a multi-process run `batch` is this process's share.
    """
    loss_fn, acc_fn = losses.resolve(loss)
    mesh = distributed.resolve(devices, mesh)
    x, y = as_batch(batch, mesh)
    graphdef, params, rest = split_model(model)
    layout = layout_for(graphdef, params, rest, x, model)
    step = probe_step(graphdef, layout, loss_fn, acc_fn)
    if mesh is not None:
        step = distributed.sharded(step, mesh, 2)
        params, rest = distributed.replicate((params, rest), mesh)
    out = jax.device_get(step(params, rest, x, y))
    scalars = {k: out.pop(k) for k in ("loss", "accuracy")}
    return Snapshot(layout.names, out, scalars, {"probed": layout.probed})
