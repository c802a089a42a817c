"""Pure per-layer measurements for one model structure: row discovery and the functions that
turn gradients, parameters and updates into (n_rows,) arrays. Everything here runs under jit."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .probes import run_probed
from .recorder import Row, path_name

LAYER_METRICS = ("grad_norm", "error_norm", "act_mean", "act_std", "dead_frac", "weight_norm")
TRAIN_METRICS = LAYER_METRICS + ("update_ratio",)


@dataclass(frozen=True)
class Layout:
    """The rows of a model in network order, and whether forward/error probes reached them."""
    rows: tuple[Row, ...]
    names: tuple[str, ...]
    probed: bool  # False: only weight-gradient-based metrics are available

    def __len__(self):
        return len(self.rows)


def flat_arrays(state) -> dict[tuple, jax.Array]:
    out = {}
    for path, v in nnx.to_flat_state(state):
        out[tuple(path)] = v.get_value() if isinstance(v, nnx.Variable) else v
    return out


def apply(graphdef, params, rest, x, dummies=None, *, batch_stats=False, probes=True):
    """Runs a copy of the model, with probes unless `probes=False` (then the recorder is None);
    returns (output, recorder, new non-trained state)."""
    model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables in this trace
    if probes:
        out, rec = run_probed(model, x, dummies, batch_stats=batch_stats)
    else:
        out, rec = model(x), None
    _, _, new_rest = nnx.split(model, _param_filter(params), ...)
    return out, rec, new_rest


def _param_filter(params):
    paths = set(flat_arrays(params))
    return lambda path, _: tuple(path) in paths


def discover(graphdef, params, rest, x) -> Layout:
    """Traces the model abstractly once to list its weight-layer calls in order."""
    found = {}

    def fn(params, rest, x):
        out, found["rec"], _ = apply(graphdef, params, rest, x)
        return out

    jax.eval_shape(fn, params, rest, x)
    rec = found["rec"]
    if rec.rows:
        return Layout(tuple(rec.rows), tuple(rec.unique_names()), True)
    # No Linear/Conv called: fall back to every kernel-like parameter, in state order.
    rows = tuple(Row(path_name(p[:-1] if p[-1] == "kernel" else p), p)
                 for p, a in flat_arrays(params).items() if p[-1] == "kernel" or a.ndim >= 2)
    return Layout(rows, tuple(r.name for r in rows), False)


def row_norms(state, layout: Layout) -> jax.Array:
    """Frobenius norm of each row's kernel in `state` (gradients, parameters or updates)."""
    arrays = flat_arrays(state)
    offsets, pieces, index = {}, [], []
    for r in layout.rows:
        if r.kernel_path not in offsets:
            a = arrays[r.kernel_path].astype(jnp.float32)
            axes = tuple(range(1 if r.index is not None else 0, a.ndim))
            offsets[r.kernel_path] = sum(p.size for p in pieces)
            pieces.append(jnp.sqrt(jnp.sum(jnp.square(a), axis=axes)).reshape(-1))
        index.append(offsets[r.kernel_path] + (r.index or 0))
    if not pieces:
        return jnp.zeros((0,), jnp.float32)
    return jnp.concatenate(pieces)[np.asarray(index)]


def value_grads_and_stats(graphdef, layout: Layout, loss_fn, params, rest, x, y, *,
                          batch_stats=False):
    """Loss, outputs, parameter gradients, new state and the probe measurements, in one pass."""
    n = len(layout)

    def objective(params, dummies, rest):  # rest as an argument: BN may mutate it in this trace
        out, rec, new_rest = apply(graphdef, params, rest, x, dummies if layout.probed else None,
                                   batch_stats=batch_stats)
        acts = rec.act_stats() if layout.probed else jnp.full((n, 3), jnp.nan)
        return loss_fn(out, y), (out, new_rest, acts)

    (loss, (out, new_rest, acts)), (grads, sq_err) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True)(params, jnp.zeros((n,), jnp.float32), rest)
    error = jnp.sqrt(sq_err) if layout.probed else jnp.full((n,), jnp.nan)
    stats = {"grad_norm": row_norms(grads, layout), "error_norm": error,
             "act_mean": acts[:, 0], "act_std": acts[:, 1], "dead_frac": acts[:, 2],
             "weight_norm": row_norms(params, layout)}
    return loss, out, grads, new_rest, stats
