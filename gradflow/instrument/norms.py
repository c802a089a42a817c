"""Per-row norms of kernels (gradients, weights, updates) for a model's Layout, under jit.

Small kernels are reduced together (one matrix per slice size) so a model with many small layers
pays for a few reductions rather than two per kernel; every norm stays exact below 1e-19
(`tap.square_sums`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .tap import _TINY, error_norm_from, square_sums


def flat_arrays(state) -> dict[tuple, jax.Array]:
    """The arrays of an `nnx.State`, by path.

    Args:
      state: an `nnx.State` (parameters, gradients, updates, ...).

    Returns:
      {path tuple: array}.
    """
    out = {}
    for path, v in nnx.to_flat_state(state):
        out[tuple(path)] = v.get_value() if isinstance(v, nnx.Variable) else v
    return out


def row_norms(state, layout) -> jax.Array:
    """Frobenius norm of each row's kernel, exact for entries down to float32's smallest
    normal (see `safe_norm`).

    Kernels of up to `BATCHED_SIZE` entries whose rows have equal size are concatenated and
    reduced together, so a model with many small layers pays for a few reductions rather than
    two per kernel; larger kernels (a copy would cost more than it saves) and kernels sharded
    over a mesh axis are reduced in place.

    Args:
      state: gradients, parameters or updates, as an `nnx.State`.
      layout: the model's `measure.Layout`.

    Returns:
      An (n_rows,) array; a scanned kernel's rows are its slices.
    """
    arrays = flat_arrays(state)
    groups: dict = {}  # slice size, or kernel path -> [(kernel path, kernel, leading axis)]
    for r in layout.rows:
        a, lead = arrays[r.kernel_path], r.index is not None
        size = a[0].size if lead else a.size
        key = size if a.size <= BATCHED_SIZE and _unsharded(a) else r.kernel_path
        members = groups.setdefault(key, [])
        if all(path != r.kernel_path for path, _, _ in members):
            members.append((r.kernel_path, a, lead))
    if not groups:
        return jnp.zeros((0,), jnp.float32)
    start, offsets, operands = 0, {}, []
    for key, members in groups.items():
        for path, a, lead in members:
            offsets[path] = start
            start += a.shape[0] if lead else 1
        if isinstance(key, int):  # small kernels: one (k, size) matrix, reduced along axis 1
            operands.append((jnp.concatenate([a.reshape(a.shape[0] if lead else 1, -1)
                                              for _, a, lead in members]), (1,)))
        else:  # in place, whatever its sharding
            (_, a, lead), = members
            operands.append((a, tuple(range(int(lead), a.ndim))))
    norms = jnp.concatenate(underflow_safe_norms(operands))
    return norms[np.asarray([offsets[r.kernel_path] + (r.index or 0) for r in layout.rows])]


def underflow_safe_norms(operands) -> list[jax.Array]:
    """Norms of several arrays, each over some axes, with one pass over each in the common case.

    The plain float32 sums of squares are taken first; only when one of them is below the level
    where underflow may have dropped terms (`tap._TINY`: a vanishing or zero gradient) does one
    `lax.cond` take the 2^80-rescaled sums of every operand as well (`tap.square_sums`), so
    healthy layers cost one read of each kernel and tiny ones stay exact.

    Args:
      operands: [(array, axes reduced)].

    Returns:
      One flat float32 array of norms per operand.
    """
    arrays = [a.astype(jnp.float32) for a, _ in operands]
    plain = [jnp.sum(jnp.square(a), axis=axes).reshape(-1)
             for a, (_, axes) in zip(arrays, operands)]

    def rescaled(arrays):
        return [error_norm_from(jnp.stack([p, square_sums(a, axes)[..., 1].reshape(-1)], -1))
                for p, a, (_, axes) in zip(plain, arrays, operands)]

    tiny = jnp.any(jnp.stack([jnp.min(p) for p in plain]) <= _TINY)
    return jax.lax.cond(tiny, rescaled, lambda _: [jnp.sqrt(p) for p in plain], arrays)


def _unsharded(a) -> bool:
    """False for an array laid out over a mesh axis in JAX's explicit sharding mode, which
    cannot be reshaped without saying how (its norm is taken in place)."""
    spec = getattr(getattr(jax.typeof(a), "sharding", None), "spec", None)
    return not spec or all(s is None for s in spec)


BATCHED_SIZE = 1 << 16  # kernels up to this many entries are reduced together (`row_norms`)


def update_ratios(updates, layout, weight_norm) -> jax.Array:
    """‖update‖ / ‖W‖ per row: how much an optimizer step changed each layer's weights.

    Args:
      updates: the parameter updates (an `nnx.State` or the pytree an optimizer returns).
      layout: the model's `measure.Layout`.
      weight_norm: the (n_rows,) norms of the weights before the update.

    Returns:
      An (n_rows,) array.
    """
    return row_norms(updates, layout) / weight_norm
