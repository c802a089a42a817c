"""The quantities beyond norms that `gf.probe` adds on request: gradient noise, gradient
histograms and distance from initialization, as Snapshot metrics (per row) and scalars."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ..instrument.norms import flat_arrays
from .curvature import random_direction
from .examples import training_loss
from .histograms import row_histograms
from .noise import NOISE_FLAG, NOISE_METRICS, NOISE_SCALARS, noise_chunk, whole_segments
from .rows import row_segments, row_sum
from .steps import CURVATURE_METRICS, CURVATURE_SCALARS, curvature_step, noise_step


def measure_extras(graphdef, params, rest, layout, loss_fn, x, y, *, noise=False,
                   curvature=False, histograms=False, init=None, chunk=None
                   ) -> tuple[dict, dict]:
    """Per-row metrics and scalars of the requested quantities on one batch (eager).

    Args:
      graphdef, params, rest: the split model.
      layout: its `measure.Layout`.
      loss_fn: `(outputs, labels) -> scalar`, mean-reduced.
      x, y: the batch.
      noise: add `mean_gsnr`, `norm_test`, `inner_test`, `ortho_test` (scalars), their
        `layer_<name>` rows and `example_grad_hist` (`noise.noise`).
      curvature: add `hess_max_ev` (Lanczos to rtol 1e-3, at most 100 products),
        `hess_max_ev_converged`, `hess_trace` and `hess_trace_se`
        (Hutchinson, 8 samples; exact up to 64 parameters) and per-row `layer_hess_trace`,
        `layer_hess_trace_se` (`curvature_step`).
      histograms: add `grad_hist`, the (n_rows, HIST_BINS) counts of |gradient element|.
      init: parameters at initialization (an `nnx.State` like `params`, or a model of the same
        structure): add `init_distance` (scalar) and `layer_init_distance`, ‖θ − θ₀‖ / ‖θ₀‖.
      chunk: examples per vmapped chunk of per-example gradients (default: as many as fit
        256 MiB; it is rounded down to a divisor of the batch).

    Returns:
      `(metrics, scalars)` dicts of numpy arrays.

    Raises:
      ValueError: for noise on a batch of one example, or with a loss that is not the mean of
        its per-example losses.
    """
    metrics, scalars = {}, {}
    segments = row_segments(params, layout)
    if noise:
        size = noise_chunk(params, x.shape[0], chunk)
        out = jax.device_get(noise_step(graphdef, segments, loss_fn, size)(params, rest, x, y))
        if not out.pop(NOISE_FLAG):
            raise ValueError("noise quantities need a mean-reduced loss: the batch loss is not "
                             "the mean of the per-example losses")
        scalars |= {k: out[k] for k in NOISE_SCALARS}
        metrics |= {k: out[k] for k in NOISE_METRICS + ("example_grad_hist",)}
    if curvature:
        step = curvature_step(graphdef, segments, loss_fn, samples=8, unroll=False,
                              max_iter=100, method="lanczos")  # one fresh measurement
        out, _ = jax.device_get(step(params, rest, x, y, random_direction(params),
                                     jax.random.key(0)))
        scalars |= {k: out[k] for k in CURVATURE_SCALARS}
        metrics |= {k: out[k] for k in CURVATURE_METRICS}
    if histograms:
        metrics["grad_hist"] = jax.device_get(
            _hist_step(graphdef, segments, loss_fn)(params, rest, x, y))
    if init is not None:
        init_params = nnx.state(init, nnx.Param) if isinstance(init, nnx.Module) else init
        layer, whole = jax.device_get(_distance(params, init_params, segments))
        metrics["layer_init_distance"], scalars["init_distance"] = layer, whole
    return metrics, scalars


@functools.lru_cache(maxsize=32)
def _hist_step(graphdef, segments, loss_fn):
    """jit(params, rest, x, y) -> (n_rows, HIST_BINS) counts of the batch gradient's elements,
    BatchNorm in training mode as in `gf.probe`."""
    @jax.jit
    def step(params, rest, x, y):
        grads = jax.grad(training_loss(graphdef, rest, loss_fn, x, y))(params)
        return row_histograms(flat_arrays(grads), segments)
    return step


@functools.partial(jax.jit, static_argnums=2)
def _distance(params, init_params, segments):
    """(per-row, whole-network) ‖θ − θ₀‖ / ‖θ₀‖."""
    now, then = flat_arrays(params), flat_arrays(init_params)
    if set(now) != set(then):
        raise ValueError("init must have the model's parameters (the same structure)")
    diff = {p: now[p] - then[p] for p in now}
    moved = row_sum(jnp.square, diff, segments)
    size = row_sum(jnp.square, then, segments)
    every = whole_segments(now, segments)
    whole = (jnp.sqrt(jnp.sum(row_sum(jnp.square, diff, every)))
             / jnp.sqrt(jnp.sum(row_sum(jnp.square, then, every))))
    return jnp.sqrt(moved) / jnp.sqrt(size), whole
