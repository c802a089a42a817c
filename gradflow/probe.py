"""`gf.probe`: every layer's gradient and statistics on one batch, without changing the model."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from . import distributed, losses
from .instrument import LAYER_METRICS
from .instrument.steps import layout_for, probe_step
from .quantities.extras import measure_extras
from .snapshot import Snapshot


def as_batch(batch, mesh=None):
    """A batch `(x, y)` as device arrays, sharded along the `data` axis of `mesh` if given.

    Args:
      batch: a pair (tuple or list) `(x, y)` of arrays with a leading batch axis.
      mesh: a `jax.sharding.Mesh` with a `data` axis, or None (one device, no sharding).

    Returns:
      `(x, y)` as jax arrays.

    Raises:
      ValueError: if `batch` is not a pair, or its rows do not divide across the mesh's devices.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("batch must be a pair (x, y) of arrays")
    if mesh is not None:
        return distributed.place_batch(batch[0], batch[1], mesh)
    return jnp.asarray(batch[0]), jnp.asarray(batch[1])


def split_model(model, wrt=nnx.Param):
    """Splits an NNX model into its structure, its trained parameters and everything else.

    Args:
      model: a `flax.nnx.Module`.
      wrt: the `nnx` filter of the trained variables; default `nnx.Param`.

    Returns:
      `(graphdef, params, rest)`, as `nnx.split(model, wrt, ...)` returns them.

    Raises:
      ValueError: if `model` is not a `flax.nnx.Module`.
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    return nnx.split(model, wrt, ...)


def probe(model, batch, loss=None, *, noise=False, curvature=False, histograms=False,
          init=None, noise_chunk=None, devices=None, mesh=None) -> Snapshot:
    """Measures every layer of `model` on one batch, without changing the model.

    BatchNorm uses batch statistics as in training; no parameter or running statistic of `model`
    changes.

    Args:
      model: a `flax.nnx.Module`.
      batch: a pair `(x, y)` of arrays with a leading batch axis; in a multi-process run, this
        process's share of the global batch.
      loss: "cross_entropy" (the default; integer labels), "mse", "binary_cross_entropy", or a
        callable `(outputs, y) -> scalar`.
      noise: also measure gradient noise from per-example gradients: scalars `mean_gsnr`,
        `norm_test`, `inner_test`, `ortho_test` (whole network), per-row `layer_mean_gsnr`,
        `layer_norm_test`, `layer_inner_test`, `layer_ortho_test`, and `example_grad_hist`
        (n_layers, bins) counts of per-example gradient elements (docs/quantities.md). BatchNorm
        statistics are held fixed at the batch's for these (`gradflow.quantities.examples`).
      curvature: also measure the loss's curvature from Hessian-vector products: scalars
        `hess_max_ev` (the Hessian eigenvalue of largest magnitude; compare with 2/lr, the edge
        of stability), `hess_max_ev_converged`, `hess_trace`, `hess_trace_se` (Hutchinson's
        estimate and its standard error), per-row `layer_hess_trace`, `layer_hess_trace_se`
        (docs/quantities.md).
      histograms: also count |gradient element| per row in fixed log-spaced bins: `grad_hist`,
        (n_layers, bins) (`gradflow.quantities.histograms`).
      init: the model (or its `nnx.Param` state) at initialization: adds `init_distance` and
        per-row `layer_init_distance`, ‖θ − θ₀‖ / ‖θ₀‖.
      noise_chunk: examples per vmapped chunk of per-example gradients (default: as many as
        fit 256 MiB).
      devices: data parallelism over None (every visible device), a count, or a list of jax
        devices; the batch is split across them and every statistic is that of the whole batch.
      mesh: instead of `devices`, a `jax.sharding.Mesh` with a `data` axis
        (`gf.distributed.data_mesh`).

    Returns:
      A Snapshot with (n_layers,) arrays `grad_norm`, `error_norm`, `act_mean`, `act_std`,
      `dead_frac` and `weight_norm`, and scalars `loss`, `accuracy` (NaN for "mse" and
      callables) and `grad_norm:<path>` for each parameter of a normalization layer (LayerNorm,
      RMSNorm, GroupNorm, BatchNorm: not rows), as `gf.value_and_grad` gives them.
      `meta["probed"]` is False where the model's layer calls cannot be probed; `error_norm`
      and the activation statistics are then NaN.

    Raises:
      ValueError: if `model` is not an NNX module, `batch` is not a pair, its rows do not divide
        across the devices, or both `devices` and `mesh` are given; with `noise`, if the batch
        has one example or the loss is not mean-reduced.

    Example:
      >>> model = gf.models.cnn("plain", 20, rngs=nnx.Rngs(0))
      >>> x, y = jnp.ones((8, 16, 16, 3)), jnp.arange(8) % 10
      >>> snap = gf.probe(model, (x, y))
      >>> snap["error_norm"].shape, snap.layers[0]
      ((20,), 'stem/layer')
    """
    loss_fn, acc_fn = losses.resolve(loss)
    mesh = distributed.resolve(devices, mesh)
    x, y = as_batch(batch, mesh)
    graphdef, params, rest = split_model(model)
    layout = layout_for(graphdef, params, rest, x, model)
    losses.check_labels(loss, batch[1], layout.output)
    step = probe_step(graphdef, layout, loss_fn, acc_fn)
    if mesh is not None:
        step = distributed.sharded(step, mesh, 2)
        params, rest = distributed.replicate((params, rest), mesh)
    out = jax.device_get(step(params, rest, x, y))
    metrics = {k: out.pop(k) for k in LAYER_METRICS}
    scalars = {k: out.pop(k) for k in ("loss", "accuracy")} | out  # out: norm layers' grad norms
    if noise or curvature or histograms or init is not None:
        if mesh is not None:
            raise ValueError("noise, curvature, histograms and init run on one device: pass "
                             "devices=1")
        more, more_scalars = measure_extras(graphdef, params, rest, layout, loss_fn, x, y,
                                            noise=noise, curvature=curvature,
                                            histograms=histograms, init=init, chunk=noise_chunk)
        metrics, scalars = metrics | more, scalars | more_scalars
    return Snapshot(layout.names, metrics, scalars, {"probed": layout.probed})
