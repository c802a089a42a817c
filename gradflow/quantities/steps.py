"""Compiled steps that take the noise quantities of a supervised model on one batch, cached per
model structure."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from ..instrument.same_code import cached, code_key
from . import curvature
from .examples import batch_noise, training_loss

_NOISE_STEPS: dict = {}


def noise_step(graphdef, segments, loss_fn, chunk: int):
    """A jitted `step(params, rest, x, y) -> dict` of `noise.noise`'s outputs plus
    `noise.NOISE_FLAG` (`examples.batch_noise`).

    Args:
      graphdef: the model's structure.
      segments: `rows.row_segments`.
      loss_fn: `(outputs, labels) -> scalar`.
      chunk: examples per vmapped chunk (divides the batch).

    Returns:
      The compiled step (cached).
    """
    def build():
        @jax.jit
        def step(params, rest, x, y):
            return batch_noise(lambda m, b: loss_fn(m(b[0]), b[1]), graphdef, params, rest,
                               segments, [x, y], chunk)
        return step

    return cached(_NOISE_STEPS, (graphdef, segments, code_key(loss_fn), chunk), build)


def measure_curvature(loss, params, segments, v0, key, *, samples: int, max_iter: int,
                      unroll: bool = False, rtol: float = 1e-3, method: str = "power",
                      ritz_vector: bool = False):
    """The curvature record of `loss` at `params` (inside a trace): the largest-magnitude
    eigenvalue from `v0` (power iteration or Lanczos), the Hutchinson trace and each row's
    block trace.

    Args:
      loss: params -> scalar.
      params: the point (an `nnx.State`).
      segments: `rows.row_segments`.
      v0: the eigenvalue iteration's start.
      key: a PRNG key (split for the iteration and the trace).
      samples, max_iter, unroll, rtol, method, ritz_vector: as in `curvature_step`.

    Returns:
      `(record, eigenvector)`: `CURVATURE_SCALARS` (0-d) and `CURVATURE_METRICS` ((n_rows,));
      the eigenvector is None with Lanczos unless `ritz_vector`.
    """
    k1, k2 = jax.random.split(key)
    eig = curvature.max_eigenvalue(loss, params, v0=v0, rtol=rtol, max_iter=max_iter, key=k1,
                                   unroll=unroll, method=method, ritz_vector=ritz_vector)
    tr = curvature.trace(loss, params, samples=samples, key=k2, segments=segments,
                         chunk=1 if unroll else 8, unroll=unroll)
    out = {"hess_max_ev": eig.value, "hess_max_ev_converged": eig.converged.astype(jnp.float32),
           "hess_trace": tr.value, "hess_trace_se": tr.stderr,
           "layer_hess_trace": tr.rows, "layer_hess_trace_se": tr.rows_stderr}
    return out, eig.vector


_CURVATURE_STEPS: dict = {}
CURVATURE_SCALARS = ("hess_max_ev", "hess_max_ev_converged", "hess_trace", "hess_trace_se")
CURVATURE_METRICS = ("layer_hess_trace", "layer_hess_trace_se")


def curvature_step(graphdef, segments, loss_fn, *, samples: int, max_iter: int, unroll: bool,
                   rtol: float = 1e-3, method: str = "power", ritz_vector: bool = False):
    """A jitted `step(params, rest, x, y, v0, key) -> (dict, eigenvector)`: the largest-magnitude
    Hessian eigenvalue (power iteration or Lanczos from `v0`), the Hutchinson trace with its standard
    error, and each row's block trace, of the training loss (BatchNorm on batch statistics,
    as `gf.probe` measures).

    Args:
      graphdef: the model's structure.
      segments: `rows.row_segments`.
      loss_fn: `(outputs, labels) -> scalar`.
      samples: Hutchinson samples.
      max_iter: Hessian-vector products of the eigenvalue iteration at most (with `unroll`,
        all of them are computed).
      unroll: straight-line iterations (see `curvature.max_eigenvalue`).
      rtol: the eigenvalue iteration's relative tolerance.
      method: "power" (returns the eigenvector, to warm-start the next call) or "lanczos"
        (fewer products; no eigenvector unless `ritz_vector`), `curvature.max_eigenvalue`.
      ritz_vector: with "lanczos", keep the Lanczos vectors and return the Ritz vector.

    Returns:
      The compiled step (cached). Its dict holds `CURVATURE_SCALARS` (0-d) and
      `CURVATURE_METRICS` ((n_rows,)).
    """
    def build():
        @jax.jit
        def step(params, rest, x, y, v0, key):
            return measure_curvature(training_loss(graphdef, rest, loss_fn, x, y), params,
                                     segments, v0, key, samples=samples, max_iter=max_iter,
                                     unroll=unroll, rtol=rtol, method=method,
                                     ritz_vector=ritz_vector)
        return step

    return cached(_CURVATURE_STEPS, (graphdef, segments, code_key(loss_fn), samples, max_iter,
                                     unroll, rtol, method, ritz_vector), build)
