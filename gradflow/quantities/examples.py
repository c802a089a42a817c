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


def example_value_and_grads(graphdef, rest, loss_fn):
    """Per-example losses and gradients of a supervised model.

    Args:
      graphdef, rest: the (fixed-statistics) model without its parameters.
      loss_fn: `(outputs, labels) -> scalar`, mean-reduced over the batch.

    Returns:
      `f(params, (xs, ys)) -> (losses (c,), grads)`: example n's loss is
      `loss_fn(model(xs[n:n+1]), ys[n:n+1])`; grads has a leading axis of c examples.
    """
    def one(params, x1, y1):
        return loss_fn(nnx.merge(graphdef, params, rest, copy=True)(x1), y1)

    batched = jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 0))
    return lambda params, ex: batched(params, ex[0][:, None], ex[1][:, None])


def batch_value_and_grad(graphdef, params, rest, loss_fn, x, y):
    """Loss and mean gradient g of the batch under the same (fixed-statistics) model.

    Args:
      graphdef, params, rest: the fixed-statistics model.
      loss_fn: `(outputs, labels) -> scalar`.
      x, y: the batch.

    Returns:
      `(loss, grads)`.
    """
    return jax.value_and_grad(
        lambda p: loss_fn(nnx.merge(graphdef, p, rest, copy=True)(x), y))(params)


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
