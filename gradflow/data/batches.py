"""Endless, deterministic minibatches over in-memory arrays."""
from __future__ import annotations

from typing import Iterator

import numpy as np


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int = 0
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields shuffled minibatches `(x, y)` of exactly `batch_size` examples, forever.

    Each epoch is a fresh permutation drawn from `seed` (same seed, same order); an epoch's
    remainder is dropped so every batch has the same shape (one compilation).

    Args:
      x: inputs, (n, ...).
      y: targets, (n, ...).
      batch_size: examples per batch, 1 to n.
      seed: the seed of the order.

    Yields:
      `(x[idx], y[idx])` numpy batches.

    Raises:
      ValueError: if x and y differ in length or `batch_size` is not in 1..n (raised at the
        first `next`).

    Example:
      >>> it = gf.data.batches(np.zeros((100, 4)), np.arange(100), batch_size=32, seed=0)
      >>> x, y = next(it)
      >>> x.shape, y.shape
      ((32, 4), (32,))
      >>> hist = gf.train(model, it, steps=500, optimizer=optax.sgd(0.1))  # doctest: +SKIP
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} is larger than the {n} examples")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xBA7C]))
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
