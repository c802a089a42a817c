"""Compiled steps for one model structure: the probe, the instrumented and the bare train step.

Each is a pure function of (params, rest, [opt_state,] x, y) jitted once per (structure, input
shape, loss, optimizer) and cached, so repeated probes and training runs reuse the compilation;
losses and optimizers are keyed by what they compute (`same_code.code_key`), so a new
`optax.sgd(0.1)` in a later call reuses the steps of an earlier one.
The instrumented and the bare train step share `_update`, so their parameter updates are
computed by the same code (tested to agree bit for bit).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ..conv_layout import canonical_convs
from . import registry
from .measure import Layout, apply, discover, update_ratios, value_grads_and_stats
from .same_code import cached, code_key

_LAYOUTS: dict = {}
_STEPS: dict = {}  # (builder, structure, layout, code keys of the functions) -> compiled steps


def _cached(build, graphdef, layout, *functions):
    """`build(graphdef, layout, *functions)`, once per structure, layout and what the
    functions compute."""
    return cached(_STEPS, (build, graphdef, layout, *map(code_key, functions)),
                  lambda: build(graphdef, layout, *functions))


def layout_for(graphdef, params, rest, x, model=None) -> Layout:
    """The model's rows, traced once per (structure, input shape) and cached.

    Args:
      graphdef, params, rest: the split model.
      x: an input batch.
      model: the original object (`discover`).

    Returns:
      The Layout.
    """
    key = (graphdef, tuple(x.shape), str(x.dtype))
    if key not in _LAYOUTS:
        _LAYOUTS[key] = discover(graphdef, abstract(params), abstract(rest), abstract(x), model)
    return _LAYOUTS[key]


def abstract(tree):
    """Shapes and dtypes only.

    Args:
      tree: a pytree of arrays.

    Returns:
      The same tree with every leaf a `jax.ShapeDtypeStruct`.

    Example:
      >>> abstract({"w": jnp.ones((2, 3))})
      {'w': ShapeDtypeStruct(shape=(2, 3), dtype=float32)}
    """
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def _metrics(loss, out, y, accuracy_fn):
    acc = accuracy_fn(out, y) if accuracy_fn is not None else jnp.float32(jnp.nan)
    return {"loss": loss, "accuracy": acc.astype(jnp.float32)}


def probe_step(graphdef, layout: Layout, loss_fn, accuracy_fn):
    """The compiled probe of one model structure, cached.

    Args:
      graphdef, layout: the model's structure and rows.
      loss_fn: `loss_fn(outputs, y) -> scalar`.
      accuracy_fn: `accuracy_fn(outputs, y) -> scalar`, or None (accuracy NaN).

    Returns:
      jit(params, rest, x, y) -> LAYER_METRICS arrays, loss and accuracy. BatchNorm uses batch
      statistics; its running statistics are not returned (left unchanged). Convolutions of
      scanned stacks run in XLA:CPU's fast layout (`conv_layout.canonical_convs`).
    """
    return _cached(_probe_step, graphdef, layout, loss_fn, accuracy_fn)


def _probe_step(graphdef, layout, loss_fn, accuracy_fn):
    def fn(params, rest, x, y):
        loss, out, _, _, stats = value_grads_and_stats(graphdef, layout, loss_fn, params, rest, x,
                                                       y, batch_stats=True)
        return stats | _metrics(loss, out, y, accuracy_fn)

    return jax.jit(canonical_convs(fn, only_in_loops=True))


def _update(tx, grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return updates, optax.apply_updates(params, updates), opt_state


def train_steps(graphdef, layout: Layout, loss_fn, accuracy_fn, tx):
    """The compiled train steps of one model structure and optimizer, cached.

    Args:
      graphdef, layout, loss_fn, accuracy_fn: as for `probe_step`.
      tx: the optax transformation.

    Returns:
      (instrumented, bare) jitted steps: (params, rest, opt_state, x, y) -> (params, rest,
      opt_state, measurements). The instrumented step measures TRAIN_METRICS, loss and
      accuracy; the bare one only loss and accuracy; both update the parameters alike.
      Convolutions of scanned stacks run in XLA:CPU's fast layout, as in `probe_step`.
    """
    return _cached(_train_steps, graphdef, layout, loss_fn, accuracy_fn, tx)


def _train_steps(graphdef, layout, loss_fn, accuracy_fn, tx):
    def instrumented(params, rest, opt_state, x, y):
        loss, out, grads, new_rest, stats = value_grads_and_stats(graphdef, layout, loss_fn, params,
                                                                  rest, x, y)
        updates, new_params, opt_state = _update(tx, grads, opt_state, params)
        stats["update_ratio"] = update_ratios(updates, layout, stats["weight_norm"])
        return new_params, new_rest, opt_state, stats | _metrics(loss, out, y, accuracy_fn)

    def bare(params, rest, opt_state, x, y):
        def objective(params, rest):
            out, _, new_rest = apply(graphdef, params, rest, x, probes=False)
            return loss_fn(out, y), (out, new_rest)

        (loss, (out, new_rest)), grads = jax.value_and_grad(objective, has_aux=True)(params, rest)
        _, new_params, opt_state = _update(tx, grads, opt_state, params)
        return new_params, new_rest, opt_state, _metrics(loss, out, y, accuracy_fn)

    return (jax.jit(canonical_convs(instrumented, only_in_loops=True)),
            jax.jit(canonical_convs(bare, only_in_loops=True)))


def _clear_caches() -> None:
    """Forgets layouts and compiled steps, traced under an older probe registry."""
    _LAYOUTS.clear()
    _STEPS.clear()


registry.ON_REGISTER.append(_clear_caches)
