"""Pure per-layer measurements for one model structure: row discovery and the functions that
turn gradients, parameters and updates into (n_rows,) arrays. Everything here runs under jit."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .probes import run_probed, use_batch_statistics
from .registry import WEIGHT_LAYERS
from .recorder import Row, UnreachableLayer, path_name
from .norms import (flat_arrays, row_norms, underflow_safe_norms,  # noqa: F401 (re-exported)
                    update_ratios)
from .tap import error_norm_from

LAYER_METRICS = ("grad_norm", "error_norm", "act_mean", "act_std", "dead_frac", "weight_norm")
TRAIN_METRICS = LAYER_METRICS + ("update_ratio",)


@dataclass(frozen=True)
class Layout:
    """The rows of a model in network order, and whether forward/error probes reached them.

    Attributes:
      rows: one Row per weight-layer call (or kernel, where calls cannot be probed).
      names: the rows' display names, unique (`Recorder.unique_names`).
      probed: False where only weight-gradient-based metrics are available.
      output: the shapes and dtypes of what the traced call returned (not compared).
    """
    rows: tuple[Row, ...]
    names: tuple[str, ...]
    probed: bool  # False: only weight-gradient-based metrics are available
    output: Any = field(default=None, compare=False)

    def __len__(self):
        return len(self.rows)


def apply(graphdef, params, rest, x, dummies=None, *, batch_stats=False, probes=True):
    """Runs a fresh copy of the model on `x` (inside a trace): `apply_call` of `model(x)`."""
    return apply_call(graphdef, params, rest, lambda model: model(x), dummies,
                      batch_stats=batch_stats, probes=probes)


def apply_call(graphdef, params, rest, call, dummies=None, *, batch_stats=False, probes=True):
    """Runs `call` on a fresh copy of the model (inside a trace).

    Args:
      graphdef, params, rest: the split model (`nnx.split(model, wrt, ...)`).
      call: `call(model) -> output`; it may call the model or its submodules any number of
        times, with any arguments (each weight-layer call is a row).
      dummies: the (n_rows, 2) error-tap inputs, or None while discovering rows.
      batch_stats: run BatchNorm on batch statistics (`use_batch_statistics`).
      probes: install the probes; False runs the model as it is.

    Returns:
      (output, recorder, new non-trained state); the recorder is None without probes.
    """
    model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables in this trace
    if batch_stats:
        use_batch_statistics(model)
    if probes:
        out, rec = run_probed(model, call, dummies)
    else:
        out, rec = call(model), None
    _, _, new_rest = nnx.split(model, _param_filter(params), ...)
    return out, rec, new_rest


def _param_filter(params):
    paths = set(flat_arrays(params))
    return lambda path, _: tuple(path) in paths


def discover(graphdef, params, rest, x, model=None) -> Layout:
    """Traces the model abstractly once on an input `x` (array or shape) to list its
    weight-layer calls in order: `discover_call` of `model(x)`."""
    def call(model, x):
        return model(x)

    return discover_call(graphdef, params, rest, call, model, x)


def discover_call(graphdef, params, rest, call, model=None, *inputs) -> Layout:
    """Traces `call` abstractly once to list the weight-layer calls it makes, in order.

    Args:
      graphdef, params, rest: the split model (arrays or shapes).
      call: `call(model, *inputs) -> output`.
      model: the original object: its attribute order is used when calls cannot be probed.
      *inputs: arrays or shapes passed to `call` (traced abstractly).

    Returns:
      The Layout; `probed` is False where calls cannot be probed (one row per kernel then).
    """
    found = {}

    def fn(params, rest, inputs):
        out, found["rec"], _ = apply_call(graphdef, params, rest,
                                          lambda m: call(m, *inputs))
        return out

    try:
        output = jax.eval_shape(fn, params, rest, inputs)
        rec = found["rec"]
        if rec.rows:
            return Layout(tuple(rec.rows), tuple(rec.unique_names()), True, output)
    except UnreachableLayer:
        output = jax.eval_shape(lambda p, r, i: apply_call(graphdef, p, r, lambda m: call(m, *i),
                                                           probes=False)[0], params, rest, inputs)
    rows = _parameter_rows(model if model is not None else nnx.merge(graphdef, params, rest))
    return Layout(rows, tuple(r.name for r in rows), False, output)


def _parameter_rows(model) -> tuple[Row, ...]:
    """Rows for models whose layer calls cannot be probed, in the order the modules were
    assigned (usually network order).

    A weight layer's weight (`registry.WEIGHT_KINDS`: a `kernel`, an Embed's `embedding`) is one
    row named after the layer, or one row per slice `<layer>/<i>` when it has one more leading
    axis than the layer's own rank (layers stacked by nnx.vmap for nnx.scan). Any other
    parameter named `kernel` is a row named after its module, and any other parameter of rank
    >= 2 outside weight layers a row named after its own path.

    Args:
      model: an NNX model.

    Returns:
      The rows; a stacked weight's rows carry their slice `index`.
    """
    from .registry import weight_kind
    expected, layers, order = {}, set(), _definition_order(model)
    module_rank = {}
    for path, m in nnx.iter_modules(model):
        module_rank[tuple(path)] = order.get(id(m), len(order))
        if isinstance(m, WEIGHT_LAYERS):
            kind = weight_kind(m)
            layers.add(tuple(path))
            expected[tuple(path) + (kind.param,)] = kind.ndim(m)
    rows = []
    params = flat_arrays(nnx.state(model, nnx.Param))
    for p in sorted(params, key=lambda p: module_rank.get(p[:-1], len(order))):
        a = params[p]
        if p in expected and a.ndim == expected[p] + 1:
            base = path_name(p[:-1])
            rows += [Row(f"{base}/{i}", p, i) for i in range(a.shape[0])]
        elif p in expected or p[-1] == "kernel":
            rows.append(Row(path_name(p[:-1]), p))
        elif a.ndim >= 2 and p[:-1] not in layers:
            rows.append(Row(path_name(p), p))
    return tuple(rows)


def _definition_order(model) -> dict[int, int]:
    """id(module) -> rank in a depth-first walk of attributes in assignment order."""
    order: dict[int, int] = {}

    def walk(m):
        if id(m) in order:
            return
        order[id(m)] = len(order)
        for value in vars(m).values():
            if isinstance(value, nnx.Module):
                walk(value)

    walk(model)
    return order


def value_grads_and_stats(graphdef, layout: Layout, loss_fn, params, rest, x, y, *,
                          batch_stats=False):
    """Loss, outputs, parameter gradients, new state and the probe measurements of
    `loss_fn(model(x), y)`: `measure_call` with the outputs as auxiliary value."""
    def objective(model):
        out = model(x)
        return loss_fn(out, y), out

    return measure_call(graphdef, layout, objective, params, rest, batch_stats=batch_stats)


def measure_call(graphdef, layout: Layout, objective, params, rest, *, batch_stats=False):
    """Loss, auxiliary value, parameter gradients, new state and the probe measurements of
    `objective` on a fresh copy of the model, in one forward and one backward pass.

    Args:
      graphdef, layout: the model's structure and rows (`discover_call` of the same calls).
      objective: `objective(model) -> (loss, aux)`, loss a scalar.
      params, rest: the trained variables and the rest of the state.
      batch_stats: run BatchNorm on batch statistics (`use_batch_statistics`).

    Returns:
      (loss, aux, grads, new rest, stats): stats maps each of LAYER_METRICS to an (n_rows,)
      array (NaN for probe metrics where the layout is not probed), and `grad_norm:<path>` to
      the 0-d gradient norm of each parameter of a normalization layer (LayerNorm, RMSNorm,
      GroupNorm, BatchNorm), which is no row.
    """
    n, norm_layers = len(layout), set()

    def observed(model):  # the normalization layers' paths, read off the traced copy
        kinds = (nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm, nnx.BatchNorm)
        norm_layers.update(tuple(p) for p, m in nnx.iter_modules(model) if isinstance(m, kinds))
        return objective(model)

    def differentiated(params, dummies, rest):  # rest an argument: BN may mutate it here
        (loss, aux), rec, new_rest = apply_call(graphdef, params, rest, observed, dummies,
                                                batch_stats=batch_stats, probes=layout.probed)
        acts = rec.act_stats() if layout.probed else jnp.full((n, 3), jnp.nan)
        return loss, (aux, new_rest, acts)

    (loss, (out, new_rest, acts)), (grads, sums) = jax.value_and_grad(
        differentiated, argnums=(0, 1), has_aux=True)(params, jnp.zeros((n, 2), jnp.float32),
                                                      rest)
    error = error_norm_from(sums) if layout.probed else jnp.full((n,), jnp.nan)
    stats = {"grad_norm": row_norms(grads, layout), "error_norm": error,
             "act_mean": acts[:, 0], "act_std": acts[:, 1], "dead_frac": acts[:, 2],
             "weight_norm": row_norms(params, layout)}
    norm_grads = {p: g for p, g in flat_arrays(grads).items() if p[:-1] in norm_layers}
    if norm_grads:
        norms = underflow_safe_norms([(g, None) for g in norm_grads.values()])
        stats |= {f"grad_norm:{path_name(p)}": v[0] for p, v in zip(norm_grads, norms)}
    return loss, out, grads, new_rest, stats
