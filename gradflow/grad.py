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

import inspect
import reprlib
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .instrument import LAYER_METRICS, registry
from .instrument.measure import Layout, discover_call, measure_call, update_ratios
from .instrument.recorder import Row
from .instrument.steps import abstract
from .quantities.in_step import batch_leaves, step_quantities
from .quantities.start import CurvatureStart
from .snapshot import Snapshot


def value_and_grad(fn, *, has_aux: bool = False, noise: bool = False, curvature: bool = False,
                   histograms: bool = False, noise_chunk: int | None = None):
    """Like `nnx.value_and_grad(fn, has_aux=...)`, plus a Snapshot of every layer.

    Args:
      fn: `fn(model, *args, **kwargs) -> loss` (or `(loss, aux)` with `has_aux`), loss a
        scalar. It may call the model or its submodules any number of times, with any
        arguments (keyword arguments such as `train=`, `rngs=` included); each call of a
        weight layer is one row. Other NNX objects among the arguments (an `nnx.Rngs`, say)
        are updated as `nnx.value_and_grad` updates them.
      has_aux: `fn` returns `(loss, aux)`.
      noise: also take the gradient noise quantities of the batch (as `gf.probe(...,
        noise=True)`: `mean_gsnr`, `norm_test`, `inner_test`, `ortho_test`, their `layer_<name>`
        rows, `example_grad_hist` and `noise_mean_reduced`), from per-example gradients of
        `fn`. The batch is every array argument whose leading axis has the first array
        argument's size; `fn` must be mean-reduced over it (if not, the values are NaN and
        `noise_mean_reduced` 0). Costs about one backward pass per example (chunked).
      curvature: also take `hess_max_ev` (Lanczos, rtol 1e-3, at most 100
        Hessian-vector products), `hess_max_ev_converged`, `hess_trace`, `hess_trace_se`
        (Hutchinson, 8 samples) and the rows' `layer_hess_trace(_se)`, of the loss `fn`
        computes. Each call starts from a random vector unless given a `gf.CurvatureStart`
        (`grad_fn(model, ..., curvature_start=start)`): then Lanczos starts from the last
        measurement's Ritz vector (at most 20 products; 5-10 where the top eigenvector moves
        slowly) and stores the new one there.
      histograms: also take `grad_hist`, each row's (HIST_BINS,) counts of |gradient element|
        in log bins (`gradflow.quantities.histograms`), from `grads` (nearly free).
      noise_chunk: examples per chunk of per-example gradients (default: as many as fit
        256 MiB).

    Returns:
      `grad_fn(model, *args, curvature_start=None, **kwargs) -> (value, grads, snapshot)`
      (`curvature_start` is gradflow's, never passed to `fn`): `value` is the loss (or
      `(loss, aux)`), `grads` the gradients with respect to the model's `nnx.Param`s as an
      `nnx.State` (as `nnx.value_and_grad` returns them), and `snapshot` a `gf.Snapshot` with
      grad_norm, error_norm, act_mean, act_std, dead_frac and weight_norm per row (one row per
      call of a weight layer), the loss, and `grad_norm:<path>` for each parameter of a
      normalization layer (LayerNorm, RMSNorm, GroupNorm, BatchNorm: not rows). Works eagerly
      and inside `nnx.jit` / `jax.jit`; eagerly, the rows are found by one abstract trace per
      call signature (model structure, arrays' shapes and dtypes, other arguments' values),
      kept until the probe registry changes. A model whose layers cannot be probed (run inside
      a transform) gets a warning once and the metrics computable from parameters and
      gradients.

    Raises:
      TypeError: if `model` is not an NNX module, `curvature_start` is given without
        `curvature=True` or is not a `gf.CurvatureStart`, or an argument (named by position, 1 the first
        after the model, or keyword) is unfit: each leaf of `args` and `kwargs` (pytrees; NNX
        objects whole) must be a JAX or numeric numpy array, a Python number or bool, None or
        an NNX object (`nnx.Rngs`), and Python numbers must not sit in a list (array data:
        pass `jnp.asarray`; a tuple like `(3, 3)` is fine) — so a string is refused (bind it:
        `functools.partial(fn, mode=...)`); or a tuple, list or dict argument reaches flax,
        jax, optax or numpy code whole where an array is needed (found on the first call).
      ValueError: if the model has no parameters or `fn` returns no scalar loss; with `noise`,
        for a batch of one example or no array argument.

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
    token = object()  # this grad_fn's share of the layout cache

    def grad_fn(model, *args, curvature_start=None, **kwargs):
        if not isinstance(model, nnx.Module):
            raise TypeError(f"gf.value_and_grad: the first argument must be an nnx.Module, got "
                            f"{type(model).__name__}")
        _check_start(curvature_start, curvature)
        _check_arguments(fn, args, kwargs)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        if not jax.tree.leaves(params):
            raise ValueError("gf.value_and_grad: the model has no nnx.Param to differentiate")
        nodes, rebuild, inputs = _graph_nodes((args, kwargs))
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

        key = (token, graphdef, node_def, _signature((params, rest, node_state)), inputs)
        if key not in _LAYOUTS:  # eagerly: one abstract trace per signature
            try:
                layout = discover_call(graphdef, abstract(params), abstract(rest), call, model,
                                       abstract(node_state))
            except Exception as e:
                if (misfed := _misfed(e, fn, args, kwargs)) is None:
                    raise
                raise TypeError(misfed) from None
            if len(_LAYOUTS) >= _MAX_LAYOUTS:
                _LAYOUTS.clear()
            _LAYOUTS[key] = layout
        layout = _LAYOUTS[key]
        loss, (aux, new_nodes), grads, new_rest, stats = measure_call(
            graphdef, layout, objective, params, rest)
        extra_metrics, extra_scalars = {}, {}
        if noise or curvature or histograms:
            indices, batch = batch_leaves(args, kwargs) if noise else ([], [])

            def loss_with(m, new_batch):
                a, k = rebuild(nnx.merge(node_def, node_state, copy=True),
                               dict(zip(indices, new_batch)))
                out = fn(m, *a, **k)
                return out[0] if has_aux else out

            extra_metrics, extra_scalars = step_quantities(
                loss_with, graphdef, params, rest, layout, grads, batch, noise_on=noise,
                curvature_on=curvature, histograms_on=histograms, chunk=noise_chunk,
                curvature_start=curvature_start)
        nnx.update(model, new_rest)
        if nodes:
            nnx.update(tuple(nodes), new_nodes)
        if not layout.probed:
            warnings.warn(UNPROBED, stacklevel=2)
        scalars = ({"loss": loss} | {k: v for k, v in stats.items() if k not in LAYER_METRICS}
                   | extra_scalars)
        snapshot = Snapshot(layout.names, {k: stats[k] for k in LAYER_METRICS} | extra_metrics,
                            scalars, _meta(layout))
        return ((loss, aux) if has_aux else loss), grads, snapshot

    return grad_fn


def _check_start(start, curvature: bool) -> None:
    if start is None:
        return
    if not curvature:
        raise TypeError("gf.value_and_grad: curvature_start= is for a grad_fn made with "
                        "curvature=True")
    if not isinstance(start, CurvatureStart):
        raise TypeError(f"gf.value_and_grad: curvature_start must be a gf.CurvatureStart, got "
                        f"{type(start).__name__}")


UNPROBED = ("gradflow: some weight layers of this model run where calls cannot be probed (an "
            "nnx.vmap / jax.vmap call, a while_loop or fori_loop with dynamic bounds, weights "
            "sliced by a loop counter, ...), so rows are its kernels (one per stacked slice) with "
            "grad_norm, weight_norm and update_ratio only; error_norm and the activation "
            "statistics are NaN. Layers run by nnx.scan, jax.lax.scan, nnx.fori_loop and "
            "nnx.remat are measured per iteration; to measure such a stack, run it with nnx.scan "
            "or register its module with gf.instrument.register_scanned_stack.")


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
    """The NNX graph nodes in `tree` (args and kwargs), a function that puts replacements for
    them back in their places, and the rest's signature (structure, arrays' shapes and dtypes,
    other leaves' values) for the layout cache."""
    leaves, treedef = jax.tree.flatten(tree, is_leaf=nnx.graph.is_graph_node)
    where = [i for i, leaf in enumerate(leaves) if nnx.graph.is_graph_node(leaf)]

    def rebuild(copies, replace=None):  # replace: {leaf index: new value} (a batch's arrays)
        new = list(leaves)
        for i, c in zip(where, copies):
            new[i] = c
        for i, v in (replace or {}).items():
            new[i] = v
        return jax.tree.unflatten(treedef, new)

    signature = tuple(None if nnx.graph.is_graph_node(leaf)  # its state: in the key's node_state
                      else (type(leaf), leaf) if isinstance(leaf, _NUMBERS)
                      else (jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)
    return [leaves[i] for i in where], rebuild, (treedef, signature)


def _signature(tree) -> tuple:
    return tuple((jnp.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(tree))


_LAYOUTS: dict = {}  # (grad_fn, call signature) -> Layout, as steps.layout_for caches them
_MAX_LAYOUTS = 256  # past it the cache starts over
registry.ON_REGISTER.append(_LAYOUTS.clear)  # layouts traced under an older probe registry


_NUMBERS = (bool, int, float, complex)
_LIST = "is a list of Python numbers, not an array: pass jnp.asarray(...) where the model needs one"
_LIBRARIES = ("flax", "jax", "jaxlib", "optax", "numpy", "gradflow.instrument", "gradflow.models")


def _check_arguments(fn, args, kwargs) -> None:
    """A one-line TypeError for the first argument no model input can be (rule: Raises of
    `value_and_grad`)."""
    for where, value in (*enumerate(args, 1), *kwargs.items()):
        if (found := _unfit(value, "", False)) is not None:
            raise TypeError(f"gf.value_and_grad: {_argument(fn, where)}{found[0]} {found[1]}")


def _unfit(value, at: str, in_list: bool):
    """(where, what) of the first unfit leaf of `value`, or None."""
    if value is None or nnx.graph.is_graph_node(value):
        return None
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        ok = isinstance(value, jax.Array) or value.dtype.kind in "biufc"
        return None if ok else (at, f"is a numpy array of dtype {value.dtype}, not numbers")
    if isinstance(value, _NUMBERS):
        return (at, _LIST) if in_list else None
    if isinstance(value, list) and not in_list:  # the outermost list is named
        found = next(filter(None, (_unfit(v, f"[{i}]", True) for i, v in enumerate(value))), None)
        return found and (at if found[1] is _LIST else at + found[0], found[1])
    if isinstance(value, (list, tuple, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return next(filter(None, (_unfit(v, f"{at}[{k!r}]", in_list) for k, v in items)), None)
    leaves = jax.tree.leaves(value, is_leaf=lambda x: x is not value and nnx.graph.is_graph_node(x))
    if len(leaves) == 1 and leaves[0] is value:  # not a pytree: an object of its own
        return at, (f"is a {type(value).__name__} ({reprlib.repr(value)}), not an array, "
                    f"Python number, None or NNX object")
    return next(filter(None, (_unfit(v, at, in_list) for v in leaves)), None)


def _misfed(error, fn, args, kwargs) -> str | None:
    """The one-line message for an `error` raised in library code (flax, jax, optax, numpy,
    gradflow's probes) that got a whole tuple, list or dict argument of `fn` where it needed an
    array, or None for any other error."""
    containers = [(w, v) for w, v in (*enumerate(args, 1), *kwargs.items())
                  if isinstance(v, (list, tuple, dict)) and v]
    found = None
    for frame, _ in reversed(list(traceback.walk_tb(error.__traceback__))):  # raised -> fn
        name = frame.f_globals.get("__name__", "")
        if not any(name == lib or name.startswith(lib + ".") for lib in _LIBRARIES):
            break
        found = next(((w, value, f"{name}.{frame.f_code.co_qualname}") for w, value in containers
                      for v in frame.f_locals.values() if _same_tree(v, value)), found)
    if found is None:
        return None
    message = (str(error).splitlines() or [""])[0][:120]
    return (f"gf.value_and_grad: {_argument(fn, found[0])} is a {type(found[1]).__name__}, not "
            f"an array, where {found[2]} needs one ({type(error).__name__}: {message})")


def _same_tree(a, b) -> bool:
    """`a` is `b`, or a container of the same structure rebuilt around the same leaves."""
    if a is b or type(a) is not type(b):
        return a is b
    (la, ta), (lb, tb) = (jax.tree.flatten(t, is_leaf=nnx.graph.is_graph_node) for t in (a, b))
    return ta == tb and all(x is y for x, y in zip(la, lb))


def _argument(fn, where) -> str:
    """'argument 1 (x)' (1: the first after the model) or "keyword argument 'train'"."""
    if isinstance(where, str):
        return f"keyword argument {where!r}"
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    named = where < len(params) and params[where].kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return f"argument {where}" + (f" ({params[where].name})" if named else "")


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


__all__ = ["update_ratio", "value_and_grad"]
