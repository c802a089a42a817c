"""Per-example losses and gradients of an NNX model, with a definition that holds for
BatchNorm networks too.

In training mode a BatchNorm layer normalizes each example with statistics of the whole batch,
so an example's gradient depends on every other example. gradflow defines the per-example
gradient of such a network as the gradient of that example's loss with the batch's mean and
variance held fixed: each BatchNorm normalizes with the statistics of the whole batch, taken as
constants (the model in evaluation mode, its running statistics set to the batch's). Dropout is
off. The mean gradient g used with them is the gradient of the batch loss under the same
definition; for networks without BatchNorm or dropout it is the training gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ..instrument.probes import use_batch_statistics


def fixed_statistics(graphdef, params, rest, call):
    """The model with every BatchNorm's statistics fixed to those of one batch (inside a trace).

    A copy of the model runs `call` with its BatchNorms on batch statistics (frozen ones
    excepted, as in `gf.probe`) and momentum 0, so each layer's running statistics become the
    batch's exactly; the copy then switches to evaluation mode.

    Args:
      graphdef, params, rest: the split model (`probe.split_model`).
      call: `call(model)` runs the model on the batch (e.g. `lambda m: m(x)`).

    Returns:
      `(graphdef, rest)` of the fixed-statistics model; it takes the same `params`.
    """
    model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables in this trace
    use_batch_statistics(model)  # as gf.probe measures: batch statistics, frozen BN excepted
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            module.momentum = 0.0
    call(model)
    model.eval()
    fixed_graphdef, _, fixed_rest = nnx.split(model, nnx.Param, ...)
    return fixed_graphdef, fixed_rest


def batch_noise(loss_with, graphdef, params, rest, segments, batch, chunk: int) -> dict:
    """The noise quantities of one batch under the fixed-statistics definition (inside a trace).

    Args:
      loss_with: `loss_with(model, batch) -> scalar`: the loss of the model on `batch` (a list
        of arrays shaped like `batch`'s, leading axis any number of examples), mean-reduced.
      graphdef, params, rest: the split model.
      segments: `rows.row_segments`.
      batch: a list of arrays with a leading batch axis B; example n is the slice [n:n+1] of
        each.
      chunk: examples per vmapped chunk (divides B).

    Returns:
      `noise.noise`'s outputs (without "example_loss_mean") and `noise.NOISE_FLAG`: 1.0 if the
      batch loss is the mean of the per-example losses, else 0.0, and then every quantity is
      NaN and every per-example count -1 (no number whose definition does not hold).
    """
    from .noise import NOISE_FLAG, noise
    fixed, fixed_rest = fixed_statistics(graphdef, params, rest, lambda m: loss_with(m, batch))

    def loss_of(p, examples):
        return loss_with(nnx.merge(fixed, p, fixed_rest, copy=True), examples)

    loss, g = jax.value_and_grad(loss_of)(params, batch)
    one = jax.value_and_grad(lambda p, ex: loss_of(p, [a[None] for a in ex]))
    per_example = jax.vmap(one, in_axes=(None, 0))
    out = noise(lambda ex: per_example(params, ex), g, segments, batch, chunk=chunk)
    ok = mean_reduced(loss, out.pop("example_loss_mean"))
    out = {k: jnp.where(ok, v, -1 if k == "example_grad_hist" else jnp.nan)
           for k, v in out.items()}
    return out | {NOISE_FLAG: ok.astype(jnp.float32)}


def mean_reduced(batch_loss, example_loss_mean, rtol: float = 1e-3) -> jax.Array:
    """Whether the batch loss equals the mean of the per-example losses (a mean-reduced loss).

    Args:
      batch_loss: the loss of the whole batch.
      example_loss_mean: the mean of the per-example losses.
      rtol: relative tolerance.

    Returns:
      A boolean 0-d array.
    """
    return jnp.abs(batch_loss - example_loss_mean) <= rtol * jnp.maximum(
        jnp.abs(batch_loss), 1e-12)


def training_loss(graphdef, rest, loss_fn, x, y):
    """The batch loss as a function of the parameters, BatchNorm on batch statistics (frozen
    ones excepted), as `gf.probe` measures; for use inside a trace.

    Args:
      graphdef, rest: the split model without its parameters.
      loss_fn: `(outputs, labels) -> scalar`.
      x, y: the batch.

    Returns:
      `loss(params) -> scalar`.
    """
    def loss(params):
        model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables in this trace
        use_batch_statistics(model)
        return loss_fn(model(x), y)
    return loss
