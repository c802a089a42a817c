"""gradflow inside your own training loop: `gf.value_and_grad`, a drop-in for
`nnx.value_and_grad` that also returns every layer's measurements, and `gf.update_ratio`.

    grad_fn = gf.value_and_grad(loss_fn)             # loss_fn(model, *args, **kwargs)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads, snap = grad_fn(model, x, y)      # grads: those of nnx.value_and_grad
        updates = optimizer.update(model, grads)
        return gf.update_ratio(snap, updates)         # a Snapshot is a pytree: jit returns it

    history = gf.History()
    for step_i, (x, y) in enumerate(batches):
        history.append(step_i, step(model, optimizer, x, y))

The function is differentiated once, with the probes of `gradflow.instrument` on a copy of the
model, so the gradients and the model's state updates (BatchNorm statistics, RNG counts) are
those of `nnx.value_and_grad`. What measuring costs per step is in benchmarks/RESULTS.md
("User loop").
"""
from __future__ import annotations

import warnings

import jax
from flax import nnx

from .snapshot import Snapshot
from .instrument.measure import Layout, discover_call, flat_arrays, measure_call, update_ratios
from .instrument.recorder import Row, path_name
from .instrument.steps import abstract
from .instrument.tap import safe_norm


def value_and_grad(fn, *, has_aux: bool = False):
    """Like `nnx.value_and_grad(fn, has_aux=...)`, plus a Snapshot of every layer.

    Args:
      fn: `fn(model, *args, **kwargs) -> loss` (or `(loss, aux)` with `has_aux`), loss a
        scalar. It may call the model or its submodules any number of times, with any
        arguments (keyword arguments such as `train=`, `rngs=` included); each call of a
        weight layer is one row. Other NNX objects among the arguments (an `nnx.Rngs`, say)
        are updated as `nnx.value_and_grad` updates them.
      has_aux: `fn` returns `(loss, aux)`.

    Returns:
      `grad_fn(model, *args, **kwargs) -> (value, grads, snapshot)`: `value` is the loss (or
      `(loss, aux)`), `grads` the gradients with respect to the model's `nnx.Param`s as an
      `nnx.State` (as `nnx.value_and_grad` returns them), and `snapshot` a `gf.Snapshot` with
      grad_norm, error_norm, act_mean, act_std, dead_frac and weight_norm per row (one row per
      call of a weight layer), the loss, and `grad_norm:<path>` for each parameter of a
      normalization layer (LayerNorm, RMSNorm, GroupNorm, BatchNorm: not rows). Works eagerly
      and inside `nnx.jit` / `jax.jit`. A model whose layers cannot be probed (run inside a
      transform) gets a warning once and the metrics computable from parameters and gradients.

    Raises:
      TypeError: if `model` is not an NNX module.
      ValueError: if the model has no parameters or `fn` returns no scalar loss.

    Example:
      >>> model = gf.models.mlp("plain", 4, width=8, in_features=3, num_classes=2,
      ...                       rngs=nnx.Rngs(0))
      >>> def loss_fn(model, x, y):
      ...     return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
      >>> loss, grads, snap = gf.value_and_grad(loss_fn)(model, x, y)
      >>> snap["error_norm"].shape, snap.layers[0]
      ((4,), 'stem/layer')
    """
    def grad_fn(model, *args, **kwargs):
        if not isinstance(model, nnx.Module):
            raise TypeError(f"gf.value_and_grad: the first argument must be an nnx.Module, got "
                            f"{type(model).__name__}")
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        if not jax.tree.leaves(params):
            raise ValueError("gf.value_and_grad: the model has no nnx.Param to differentiate")
        nodes, rebuild = _graph_nodes((args, kwargs))
        node_def, node_state = nnx.split(tuple(nodes))

        def objective(m, node_state=node_state):
            copies = nnx.merge(node_def, node_state, copy=True)
            a, k = rebuild(copies)
            out = fn(m, *a, **k)
            loss, aux = out if has_aux else (out, None)
            if jax.numpy.shape(loss) != ():
                raise ValueError(f"gf.value_and_grad: fn must return a scalar loss"
                                 f"{' first' if has_aux else ''}, got shape "
                                 f"{jax.numpy.shape(loss)}")
            return loss, (aux, nnx.state(copies))

        def call(m, node_state):
            return objective(m, node_state)[0]

        layout = discover_call(graphdef, abstract(params), abstract(rest), call, model,
                               abstract(node_state))
        loss, (aux, new_nodes), grads, new_rest, stats = measure_call(
            graphdef, layout, objective, params, rest)
        nnx.update(model, new_rest)
        if nodes:
            nnx.update(tuple(nodes), new_nodes)
        if not layout.probed:
            warnings.warn(UNPROBED, stacklevel=2)
        scalars = {"loss": loss} | _norm_layer_grads(model, grads)
        snapshot = Snapshot(layout.names, stats, scalars, _meta(layout))
        return ((loss, aux) if has_aux else loss), grads, snapshot

    return grad_fn


NORM_LAYERS = (nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm, nnx.BatchNorm)
UNPROBED = ("gradflow: some weight layers of this model run where calls cannot be probed (an "
            "nnx.vmap / jax.vmap call, a while_loop or fori_loop with dynamic bounds, weights "
            "sliced by a loop counter, ...), so rows are its kernels (one per stacked slice) with "
            "grad_norm, weight_norm and update_ratio only; error_norm and the activation "
            "statistics are NaN. Layers run by nnx.scan, jax.lax.scan, nnx.fori_loop and "
            "nnx.remat are measured per iteration; to measure such a stack, run it with nnx.scan "
            "or register its module with gf.instrument.register_scanned_stack.")


def _norm_layer_grads(model, grads) -> dict:
    """`grad_norm:<path>` of every parameter of a normalization layer (they are not rows)."""
    norms = {tuple(path) for path, m in nnx.iter_modules(model) if isinstance(m, NORM_LAYERS)}
    return {f"grad_norm:{path_name(p)}": safe_norm(a)
            for p, a in flat_arrays(grads).items() if p[:-1] in norms}


def update_ratio(snapshot: Snapshot, updates) -> Snapshot:
    """`snapshot` with `update_ratio` added: ‖update‖ / ‖W‖ per row, for the updates an
    optimizer step applied (`nnx.Optimizer.update` returns them). Works inside jit.

    Args:
      snapshot: from `gf.value_and_grad` (its weight_norm is that of the weights before the
        update).
      updates: the parameter updates, an `nnx.State` or the pytree `optimizer.update` returns.

    Returns:
      A new Snapshot with the extra per-row metric `update_ratio`.

    Example::

      loss, grads, snap = grad_fn(model, x, y)
      snap = gf.update_ratio(snap, optimizer.update(model, grads))
    """
    layout = _layout(snapshot)
    ratio = update_ratios(updates, layout, snapshot["weight_norm"])
    metrics = {k: snapshot[k] for k in snapshot.metrics} | {"update_ratio": ratio}
    return Snapshot(snapshot.layers, metrics, {k: snapshot[k] for k in snapshot.scalars},
                    snapshot.meta)


def _graph_nodes(tree):
    """The NNX graph nodes in `tree` (args and kwargs), and a function that puts replacements
    for them back in their places."""
    leaves, treedef = jax.tree.flatten(tree, is_leaf=nnx.graph.is_graph_node)
    where = [i for i, leaf in enumerate(leaves) if nnx.graph.is_graph_node(leaf)]

    def rebuild(copies):
        new = list(leaves)
        for i, c in zip(where, copies):
            new[i] = c
        return jax.tree.unflatten(treedef, new)

    return [leaves[i] for i in where], rebuild


def _meta(layout: Layout) -> dict:
    """The rows' kernels (for `update_ratio`) and whether calls were probed, JSON-ready."""
    return {"probed": layout.probed,
            "kernels": [[list(map(_json_key, r.kernel_path)), r.index] for r in layout.rows]}


def _json_key(k):
    return k if isinstance(k, (str, int)) else str(k)


def _layout(snapshot: Snapshot) -> Layout:
    kernels = snapshot.meta.get("kernels")
    if kernels is None or len(kernels) != len(snapshot.layers):
        raise ValueError("gf.update_ratio needs a Snapshot from gf.value_and_grad")
    rows = tuple(Row(name, tuple(path), index)
                 for name, (path, index) in zip(snapshot.layers, kernels))
    return Layout(rows, tuple(snapshot.layers), bool(snapshot.meta.get("probed", True)))


__all__ = ["value_and_grad", "update_ratio"]
