"""The quantities beyond norms inside `gf.train`: which steps take them, and the record fields
they add (NaN, or -1 for histogram counts, in records where they were not taken)."""
from __future__ import annotations

import jax.numpy as jnp

from ..instrument.norms import flat_arrays
from .histograms import HIST_BINS
from .noise import NOISE_METRICS, NOISE_SCALARS, chunk_size
from .rows import row_segments
from .steps import noise_step


class Extras:
    """Noise quantities every `noise_every` steps of a training run.

    Args:
      graphdef, params: the model's structure and parameters.
      layout: its `measure.Layout`.
      loss_fn: `(outputs, labels) -> scalar`, mean-reduced.
      batch: the batch size.
      noise_every: take the noise quantities at steps 0, k, 2k, ... (None: never).
      chunk: examples per chunk of per-example gradients (None: as many as fit 256 MiB).

    Raises:
      ValueError: for noise on batches of one example.
    """

    def __init__(self, graphdef, params, layout, loss_fn, batch: int, *, noise_every=None,
                 chunk=None):
        self.noise_every = noise_every
        self.n_rows = len(layout.rows)
        if noise_every is None:
            return
        if batch < 2:
            raise ValueError("noise quantities need batches of at least 2 examples: they are "
                             "variances over the batch")
        n_params = sum(a.size for a in flat_arrays(params).values())
        size = chunk_size(batch, n_params) if chunk is None else chunk_size(batch, 1, 4 * chunk)
        self._noise = noise_step(graphdef, row_segments(params, layout), loss_fn, size)

    @property
    def active(self) -> bool:
        """Whether any quantity is taken."""
        return self.noise_every is not None

    def due(self, step: int) -> bool:
        """Whether `step` takes any quantity (such steps are always records)."""
        return self.noise_every is not None and step % self.noise_every == 0

    def measure(self, step: int, params, rest, x, y) -> dict:
        """The record fields of `step` (device arrays; nothing waits on the device).

        Args:
          step: the training step.
          params, rest, x, y: the parameters before the step's update, the rest of the model's
            state and the step's batch.

        Returns:
          {name: array}: `NOISE_SCALARS` (0-d), `NOISE_METRICS` ((n_rows,)), "example_grad_hist"
          ((n_rows, HIST_BINS)), "noise_mean_reduced" (0-d, 1.0 or 0.0; NaN where not taken).
        """
        if not self.active:
            return {}
        if not self.due(step):
            return self.blank()
        out = dict(self._noise(params, rest, x, y))
        out["noise_mean_reduced"] = out.pop("mean_reduced").astype(jnp.float32)
        return out

    def blank(self) -> dict:
        """The fields of a record where nothing was taken."""
        nan = jnp.float32(jnp.nan)
        out = {k: nan for k in NOISE_SCALARS} | {k: jnp.full(self.n_rows, nan)
                                                  for k in NOISE_METRICS}
        out["example_grad_hist"] = jnp.full((self.n_rows, HIST_BINS), -1, jnp.int32)
        out["noise_mean_reduced"] = nan
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
