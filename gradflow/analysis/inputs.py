"""Input that cannot be learned from: every example identical, features that do not vary, or
fewer distinct examples than classes. Such input makes every network look broken (no error
signal, dead units), so it is named before anything else is judged.

Thresholds:
- NEAR_CONSTANT = 1e-4: features vary across examples by at most this fraction of their
  magnitude (the root mean square of the input) — below float32's resolution for most data.
- SAMPLE = 4096: the examples looked at (the first ones; the check is about the data, not the
  network, so a sample says enough).
"""
from __future__ import annotations

import numpy as np

NEAR_CONSTANT = 1e-4
SAMPLE = 4096


def degenerate_input(x, num_classes: int | None = None) -> str | None:
    """Why the input `x` cannot be learned from, in one line; None if it can.

    Args:
      x: the examples, shape (N, ...) (array-like; a sample of the first `SAMPLE` is checked).
      num_classes: the number of classes; with it, fewer distinct examples than classes is
        named too.

    Returns:
      E.g. "all 256 examples are identical (every feature is constant)", or None.

    Example:
      >>> degenerate_input(np.zeros((8, 3)))
      'all 8 examples are identical (every feature is constant)'
      >>> degenerate_input(np.eye(4)) is None
      True
    """
    x = np.asarray(x)[:SAMPLE]
    n = len(x)
    if n < 2:
        return None
    rows = np.ascontiguousarray(x.reshape(n, -1), dtype=np.float64)
    if not np.isfinite(rows).all():
        return None  # non-finite input is refused by the loaders; nothing to say here
    distinct = len({r.tobytes() for r in rows})
    if distinct == 1:
        return f"all {n} examples are identical (every feature is constant)"
    spread = float(rows.std(axis=0).max())
    scale = float(np.sqrt(np.mean(rows ** 2)))
    if spread <= NEAR_CONSTANT * scale:
        return (f"the input is near-constant: no feature varies across the {n} examples by "
                f"more than {spread / scale:.0e} of its magnitude")
    if num_classes is not None and distinct < num_classes:
        return (f"only {distinct} distinct examples among {n}, fewer than the {num_classes} "
                f"classes")
    return None
