"""Which parameters belong to which row: the per-layer restriction of whole-network quantities.

A row (`instrument.recorder.Row`) is one weight-layer call, named by its kernel. Its parameters
are the `nnx.Param` arrays of the module that owns the kernel (kernel and bias), sliced at the
row's index where the module is a scanned stack. Parameters of no row (normalization layers'
scale and offset, branch scales) count in whole-network quantities only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..instrument.norms import flat_arrays

Segment = tuple  # ((leaf path, index along the stacked axis or None), ...)


def row_segments(params, layout) -> tuple[Segment, ...]:
    """Each row's parameter leaves.

    Args:
      params: the model's parameters (an `nnx.State`).
      layout: the model's `measure.Layout`.

    Returns:
      One tuple per row, of `(path, index)` pairs: `path` keys `flat_arrays(params)`, `index`
      is the row's position along a scanned stack's leading axis (None: the whole leaf).
    """
    paths = tuple(flat_arrays(params))
    return tuple(tuple((p, r.index) for p in paths if p[:-1] == r.kernel_path[:-1])
                 for r in layout.rows)


def row_sum(fn, flat: dict, segments, *extra: dict) -> jax.Array:
    """Σ over each row's parameters of `fn(leaf, *extra leaves)`, summed to a scalar per leaf.

    Args:
      fn: maps one row's slice of a leaf (and the same slice of each `extra` tree) to an array
        that is summed.
      flat: {path: array}, as `flat_arrays` gives it (gradients, parameters, a direction).
      segments: `row_segments`.
      *extra: more {path: array} dicts with the same paths.

    Returns:
      An (n_rows,) float32 array.

    Example:
      >>> flat = {("a", "kernel"): jnp.ones((2, 3)), ("a", "bias"): jnp.ones(3)}
      >>> row_sum(jnp.square, flat, (((("a", "kernel"), None), (("a", "bias"), None)),))
      Array([9.], dtype=float32)
    """
    def part(path, index):
        args = [d[path] if index is None else d[path][index] for d in (flat, *extra)]
        return jnp.sum(fn(*args).astype(jnp.float32))

    if not segments:
        return jnp.zeros((0,), jnp.float32)
    return jnp.stack([sum((part(p, i) for p, i in seg), jnp.float32(0)) for seg in segments])


def row_sizes(flat: dict, segments) -> tuple[int, ...]:
    """Number of parameters in each row.

    Args:
      flat: {path: array} of the parameters.
      segments: `row_segments`.

    Returns:
      One int per row.
    """
    return tuple(sum(flat[p].size if i is None else flat[p][i].size for p, i in seg)
                 for seg in segments)
