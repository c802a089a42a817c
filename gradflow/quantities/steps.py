"""Compiled steps that take the noise quantities of a supervised model on one batch, cached per
model structure."""
from __future__ import annotations

import jax

from .examples import (batch_value_and_grad, example_value_and_grads, fixed_statistics,
                       mean_reduced)
from .noise import noise

_NOISE_STEPS: dict = {}


def noise_step(graphdef, segments, loss_fn, chunk: int):
    """A jitted `step(params, rest, x, y) -> dict` of `noise.noise`'s outputs plus
    "mean_reduced" (whether `loss_fn` is the mean of the per-example losses).

    Args:
      graphdef: the model's structure.
      segments: `rows.row_segments`.
      loss_fn: `(outputs, labels) -> scalar`.
      chunk: examples per vmapped chunk (divides the batch).

    Returns:
      The compiled step (cached).
    """
    key = (graphdef, segments, loss_fn, chunk)
    if key not in _NOISE_STEPS:
        @jax.jit
        def step(params, rest, x, y):
            fixed, fixed_rest = fixed_statistics(graphdef, params, rest, lambda m: m(x))
            loss, g = batch_value_and_grad(fixed, params, fixed_rest, loss_fn, x, y)
            per_example = example_value_and_grads(fixed, fixed_rest, loss_fn)
            out = noise(lambda ex: per_example(params, ex), g, segments, (x, y), chunk=chunk)
            out["mean_reduced"] = mean_reduced(loss, out.pop("example_loss_mean"))
            return out
        if len(_NOISE_STEPS) >= 64:
            _NOISE_STEPS.clear()
        _NOISE_STEPS[key] = step
    return _NOISE_STEPS[key]
