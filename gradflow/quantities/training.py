"""The quantities beyond norms inside `gf.train`: which steps take them, and the record fields
they add (NaN, or -1 for histogram counts, in records where they were not taken)."""
from __future__ import annotations

import jax
import numpy as np

from .histograms import HIST_BINS
from .noise import NOISE_FLAG, NOISE_METRICS, NOISE_SCALARS, noise_chunk
from .rows import row_segments
from . import curvature
from .steps import CURVATURE_METRICS, CURVATURE_SCALARS, curvature_step, noise_step

CURVATURE_MAX_ITER = 20  # products per measurement at most; each stops at rtol 1e-3
CURVATURE_SAMPLES = 2  # Hutchinson samples per measurement
RITZ_BUDGET = 256 << 20  # bytes of Lanczos vectors kept; beyond, power iteration


def warm_start_method(params) -> str:
    """"lanczos" where `CURVATURE_MAX_ITER` Lanczos vectors of `params`' size fit
    `RITZ_BUDGET`, else "power" (both return the vector the next measurement starts from).

    Args:
      params: the parameters (arrays or shapes).

    Returns:
      The `curvature.max_eigenvalue` method of warm-started measurements.
    """
    size = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(params))
    return "lanczos" if CURVATURE_MAX_ITER * size <= RITZ_BUDGET else "power"


class Extras:
    """Noise quantities every `noise_every` steps and curvature every `curvature_every` steps
    of a training run.

    Args:
      graphdef, params: the model's structure and parameters.
      layout: its `measure.Layout`.
      loss_fn: `(outputs, labels) -> scalar`, mean-reduced.
      batch: the batch size.
      noise_every: take the noise quantities at steps 0, k, 2k, ... (None: never).
      chunk: examples per chunk of per-example gradients (None: as many as fit 256 MiB).
      curvature_every: take the curvature at steps 0, k, 2k, ... (None: never): Lanczos
        (power iteration where `CURVATURE_MAX_ITER` Lanczos vectors would exceed
        `RITZ_BUDGET`) starts from the previous measurement's Ritz vector (the first one from
        a random vector) and stops at rtol 1e-3 or after `CURVATURE_MAX_ITER` products; the
        trace takes `CURVATURE_SAMPLES` Hutchinson samples.

    Attributes:
      curvature_start: where the next curvature measurement starts (a pytree like `params`;
        None without `curvature_every`). `gf.train` checkpoints it, so a resumed run measures
        exactly as an uninterrupted one.

    Raises:
      ValueError: for noise on batches of one example.
    """

    def __init__(self, graphdef, params, layout, loss_fn, batch: int, *, noise_every=None,
                 chunk=None, curvature_every=None):
        self.noise_every, self.curvature_every = noise_every, curvature_every
        n, nan = len(layout.rows), np.float32(np.nan)
        self._blank = {  # the fields of records that did not take them (host arrays, made once)
            "noise": {k: nan for k in NOISE_SCALARS + (NOISE_FLAG,)}
            | {k: np.full(n, nan) for k in NOISE_METRICS}
            | {"example_grad_hist": np.full((n, HIST_BINS), -1, np.int32)},
            "curvature": {k: nan for k in CURVATURE_SCALARS}
            | {k: np.full(n, nan) for k in CURVATURE_METRICS}}
        if curvature_every is not None:
            # the first measurement from a random vector, the later ones warm-started; loops
            # (their convolutions as fast as straight-line code: `curvature.canonical_convs`)
            segments = row_segments(params, layout)
            method = warm_start_method(params)
            self._curvature = curvature_step(graphdef, segments, loss_fn, unroll=False,
                                             samples=CURVATURE_SAMPLES,
                                             max_iter=CURVATURE_MAX_ITER, method=method,
                                             ritz_vector=method == "lanczos")
            self.curvature_start = curvature.random_direction(params)
        else:
            self.curvature_start = None
        if noise_every is not None:
            self._noise = noise_step(graphdef, row_segments(params, layout), loss_fn,
                                     noise_chunk(params, batch, chunk))

    @property
    def active(self) -> bool:
        """Whether any quantity is taken."""
        return self.noise_every is not None or self.curvature_every is not None

    def due(self, step: int) -> bool:
        """Whether `step` takes any quantity (such steps are always records)."""
        return any(k is not None and step % k == 0
                   for k in (self.noise_every, self.curvature_every))

    def measure(self, step: int, params, rest, x, y) -> dict:
        """The record fields of `step` (device arrays; nothing waits on the device).

        Args:
          step: the training step.
          params, rest, x, y: the parameters before the step's update, the rest of the model's
            state and the step's batch.

        Returns:
          {name: array}: `NOISE_SCALARS` (0-d), `NOISE_METRICS` ((n_rows,)), "example_grad_hist"
          ((n_rows, HIST_BINS)), "noise_mean_reduced" (0-d, 1.0 or 0.0; NaN where not taken;
          where 0, the loss was not mean-reduced and the quantities are NaN, counts -1).
        """
        out = {}
        if self.noise_every is not None:
            if step % self.noise_every == 0:
                out |= self._noise(params, rest, x, y)
            else:
                out |= self._blank["noise"]
        if self.curvature_every is not None:
            if step % self.curvature_every == 0:
                key = jax.random.fold_in(jax.random.key(0), step)
                taken, self.curvature_start = self._curvature(params, rest, x, y,
                                                              self.curvature_start, key)
                out |= taken
            else:
                out |= self._blank["curvature"]
        return out


def merge_into(record: dict, fields: dict) -> dict:
    """The record with the extra fields added (fields never replace core metrics).

    Args:
      record: a record of the instrumented step.
      fields: `Extras.measure`'s output.

    Returns:
      A new dict.
    """
    clash = set(record) & set(fields)
    if clash:
        raise ValueError(f"extra quantities would replace {sorted(clash)}")
    return {**record, **fields}
