"""Noise, curvature and gradient histograms of a user's loss function, inside the user's
jitted step (`gf.value_and_grad(fn, noise=True, curvature=True, histograms=True)`).

The quantities are those of `gf.probe` (docs/quantities.md), taken on the loss `fn` computes:

- the batch is every array argument of `fn` (positional or keyword, inside pytrees too) whose
  leading axis has the size of the first array argument's; example n is the slice [n:n+1] of
  each, and `fn` on it is example n's loss (`fn` must be mean-reduced over the batch: when the
  mean of the per-example losses is not the batch loss, the noise values are NaN and
  `noise_mean_reduced` is 0);
- per-example gradients hold every BatchNorm's statistics fixed to the batch's and turn dropout
  off (`examples.fixed_statistics`: the model in evaluation mode); the curvature is that of the
  loss as `fn` computes it, BatchNorm on batch statistics in training mode.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from ..instrument.norms import flat_arrays
from .curvature import random_direction
from .examples import batch_noise
from .histograms import row_histograms
from .noise import NOISE_FLAG, NOISE_METRICS, NOISE_SCALARS, noise_chunk
from .rows import row_segments
from .steps import CURVATURE_METRICS, CURVATURE_SCALARS, measure_curvature
from .training import CURVATURE_MAX_ITER, warm_start_method


def batch_leaves(args, kwargs) -> tuple[list[int], list]:
    """The positions and values of the batch's arrays among the leaves of `(args, kwargs)`.

    Args:
      args, kwargs: `fn`'s arguments after the model (NNX objects are leaves, not batched).

    Returns:
      `(indices, arrays)`: the flat leaf indices (as `jax.tree.flatten` with NNX objects as
      leaves orders them) of every array whose leading axis has the first array's size.

    Raises:
      ValueError: if no argument is an array with a batch axis.
    """
    leaves = jax.tree.leaves((args, kwargs), is_leaf=nnx.graph.is_graph_node)
    arrays = [i for i, a in enumerate(leaves)
              if isinstance(a, (jax.Array, np.ndarray)) and np.ndim(a) >= 1]
    if not arrays:
        raise ValueError("gf.value_and_grad(noise=True): no argument of fn is an array with a "
                         "batch axis to take per-example gradients over")
    size = np.shape(leaves[arrays[0]])[0]
    batched = [i for i in arrays if np.shape(leaves[i])[0] == size]
    return batched, [leaves[i] for i in batched]


def step_quantities(loss_with, graphdef, params, rest, layout, grads, batch, *, noise_on: bool,
                    curvature_on: bool, histograms_on: bool, chunk: int | None,
                    curvature_start=None) -> tuple[dict, dict]:
    """The requested quantities of one batch, inside a trace.

    Args:
      loss_with: `loss_with(model, batch) -> scalar`: `fn`'s loss for the model on `batch`
        (a list of arrays shaped like `batch`'s, leading axis any number of examples).
      graphdef, params, rest: the split model.
      layout: its `measure.Layout`.
      grads: the batch gradients `fn` gave (histograms are theirs).
      batch: the batch's arrays (`batch_leaves`).
      noise_on, curvature_on, histograms_on: which quantities.
      chunk: examples per vmapped chunk of per-example gradients (None: as many as fit
        256 MiB).
      curvature_start: a `CurvatureStart`: the eigenvalue iteration starts from its vector,
        as `gf.train`'s measurements do, and stores the new one there. None: Lanczos from a
        random vector, at most 100 products.

    Returns:
      `(metrics, scalars)`: per-row arrays and 0-d arrays, named as `gf.probe` names them.

    Raises:
      ValueError: for noise on a batch of one example.
    """
    metrics, scalars = {}, {}
    segments = row_segments(params, layout)
    if histograms_on:
        metrics["grad_hist"] = row_histograms(flat_arrays(grads), segments)
    if noise_on:
        size = noise_chunk(params, batch[0].shape[0], chunk)
        out = batch_noise(loss_with, graphdef, params, rest, segments, batch, size)
        scalars |= {k: out[k] for k in NOISE_SCALARS + (NOISE_FLAG,)}
        metrics |= {k: out[k] for k in NOISE_METRICS + ("example_grad_hist",)}
    if curvature_on:
        def loss(p):
            return loss_with(nnx.merge(graphdef, p, rest, copy=True), batch)
        if curvature_start is None:  # a fresh start every call, no vector kept
            v0, method, max_iter = random_direction(params), "lanczos", 100
        else:  # as gf.train's measurements
            v0, method, max_iter = (curvature_start.direction(params),
                                    warm_start_method(params), CURVATURE_MAX_ITER)
        out, vector = measure_curvature(loss, params, segments, v0, jax.random.key(0),
                                        samples=8, max_iter=max_iter, method=method,
                                        ritz_vector=curvature_start is not None
                                        and method == "lanczos")
        if curvature_start is not None:
            curvature_start.store(vector)
        scalars |= {k: out[k] for k in CURVATURE_SCALARS}
        metrics |= {k: out[k] for k in CURVATURE_METRICS}
    return metrics, scalars
