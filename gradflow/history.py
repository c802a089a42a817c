"""History: per-layer measurements over training on the host, as `gf.train` returns them or
grown record by record with `append` in a user's loop (with periodic atomic flushes); and
`finite_record`, the check training stops on. Its one-batch counterpart, Snapshot, is in
`gradflow.snapshot` (and importable from here).
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from .snapshot import Snapshot, _Records

BACKWARD = ("error_norm", "grad_norm")  # dL/dz and dL/dW, computed from the output layer down
FLUSH_S = 2.0  # least seconds between two writes of a growing History (gf.train, flush_to)
_clock = time.monotonic  # the flush clock (tests replace it)


class History(_Records):
    """Per-layer measurements over training, as `gf.train` returns them, or grown by `append`.

    `h[metric]` has shape (n_records, n_layers), layers in network order (input first);
    `h["loss"]` and `h["accuracy"]` have shape (n_records,); `h.steps` (int64, (n_records,)) is
    the training step of each record; `len(h)` is n_records. `h.metrics`, `h.scalars`,
    `h.layers` and `h.meta` are as in Snapshot. Arrays read from a History are numpy.

    Args:
      layers: the layer names, in network order; default none (fixed by the first `append`).
      metrics: metric name -> (n_records, n_layers) array; default none.
      scalars: scalar name -> (n_records,) array; default none.
      meta: free-form metadata, JSON-serializable so that `save` can write it; default empty.
      steps: the step of each record; default 0, 1, 2, ...

    Example:
      >>> hist = gf.train(model, batches, steps=100, optimizer=optax.sgd(0.1),
      ...                 log_every=10)  # doctest: +SKIP
      >>> hist["grad_norm"].shape, hist.steps[-1]  # doctest: +SKIP
      ((11, 50), 99)
      >>> last = hist.snapshot()  # doctest: +SKIP
    """
    kind = "history"

    def __init__(self, layers=(), metrics: dict | None = None, scalars: dict | None = None,
                 meta: dict | None = None, steps=None):
        super().__init__(layers, metrics or {}, scalars, meta)
        arrays = [*self._metrics.values(), *self._scalars.values()]
        steps = np.arange(len(arrays[0]) if arrays else 0) if steps is None else steps
        self._steps = np.asarray(steps, np.int64)
        self._n = self._written = len(self._steps)  # records; records in the flushed file
        if any(len(a) != self._n for a in arrays):
            raise ValueError(f"History arrays and steps differ in length ({self._n} steps)")
        self._path, self._every_s, self._wrote_at = None, FLUSH_S, None

    def _view(self, array):  # the arrays are buffers that `append` grows geometrically
        return array[:self._n]

    @property
    def steps(self) -> np.ndarray:
        """The training step of each record, int64, shape (n_records,)."""
        return self._steps[:self._n]

    def __len__(self) -> int:
        return self._n

    def _extra(self):
        return {"steps": self.steps}

    @classmethod
    def _from_parts(cls, header, metrics, scalars, arrays):
        return cls(header["layers"], metrics, scalars, header["meta"], steps=arrays["steps"])

    def append(self, step: int, snapshot: Snapshot) -> None:
        """Adds `snapshot` (fetched to the host in one transfer) as the record of `step`.

        The first record fixes the names (layers, metrics, scalars) and merges its meta into this
        History's, whose own keys win. O(1) amortized: the arrays grow geometrically. With a
        `flush_to` target, the file is written when due.

        Args:
          step: the training step, larger than the last one.
          snapshot: a Snapshot with this History's names, e.g. as a jitted step returned it.

        Raises:
          ValueError: if the step does not increase, or the names or shapes differ (the
            occasional quantities, `OCCASIONAL`, may come and go: records without them hold
            NaN, or -1 for histogram counts).
          TypeError: if `snapshot` is not a Snapshot.

        Example:
          >>> hist, snap = gf.History(), gf.Snapshot(("a", "b"), {"grad_norm": jnp.ones(2)})
          >>> hist.append(0, snap); hist.append(10, snap)
          >>> hist["grad_norm"].shape, hist.steps, len(hist)
          ((2, 2), array([ 0, 10]), 2)
        """
        if not isinstance(snapshot, Snapshot):
            raise TypeError(f"History.append takes a Snapshot, not {type(snapshot).__name__}")
        snap, step, n = jax.device_get(snapshot), int(step), self._n
        if n and step <= self._steps[n - 1]:
            raise ValueError(f"step {step} after step {self._steps[n - 1]}: steps must increase")
        for what, mine, theirs in (("layers", self.layers, snap.layers),
                                   ("metrics", self.metrics, snap.metrics),
                                   ("scalars", self.scalars, snap.scalars)):
            new = [x for x in theirs if x not in mine]
            gone = [x for x in mine if x not in theirs]
            occasional = what != "layers" and set(new + gone) <= OCCASIONAL
            if (n or mine and what == "layers") and mine != theirs and not occasional:
                raise ValueError(f"snapshot {what} differ from the History's ({len(theirs)} vs "
                                 f"{len(mine)}): new {new[:3]}, missing {gone[:3]}")
        values = {k: np.asarray(snap[k]) for k in snap.metrics + snap.scalars}
        for k, v in values.items():
            bad = (v.ndim < 1 or v.shape[0] != len(snap.layers)) if k in snap.metrics else v.ndim
            if bad or (n and k in self and v.shape != self[k].shape[1:]):
                want = (len(snap.layers),) if k in snap.metrics else ()
                raise ValueError(f"snapshot {k!r} has shape {v.shape}, expected {want}"
                                 f"{'' if k in snap.scalars else ' (or (n_layers, ...))'}")
        if n:
            self._add_occasional(values, snap.metrics)
        if not n:  # the first record: names, meta and empty buffers from it
            self.layers, self.meta = snap.layers, {**snap.meta, **self.meta}
            self._metrics = {k: values[k][None][:0] for k in snap.metrics}
            self._scalars = {k: values[k][None][:0] for k in snap.scalars}
            self._steps = self._steps[:0]
        if n == len(self._steps) or any(v.dtype != np.promote_types(self[k].dtype, v.dtype)
                                        for k, v in values.items()):
            self._grow(values)
        for k, v in values.items():
            (self._metrics if k in self._metrics else self._scalars)[k][n] = v
        self._steps[n], self._n = step, n + 1
        if self._path and (self._wrote_at is None or _clock() - self._wrote_at >= self._every_s):
            self.close()

    def _add_occasional(self, values: dict, metrics) -> None:
        """Blank fields for the occasional quantities a record lacks (NaN; -1 for counts), and
        blank earlier records for those it is the first to bring (`OCCASIONAL`)."""
        for k, v in values.items():
            if k not in self:
                d = self._metrics if k in metrics else self._scalars
                d[k] = np.full((len(self._steps), *v.shape), _blank(v.dtype), v.dtype)
        for d in (self._metrics, self._scalars):
            for k, buf in d.items():
                if k not in values:
                    values[k] = np.full(buf.shape[1:], _blank(buf.dtype), buf.dtype)

    def _grow(self, values: dict) -> None:
        cap = max(16, 2 * self._n)
        for d in (self._metrics, self._scalars):
            for k, old in d.items():
                d[k] = np.empty((cap, *old.shape[1:]), np.promote_types(old.dtype, values[k].dtype))
                d[k][:self._n] = old[:self._n]
        self._steps = np.concatenate([self._steps[:self._n], np.zeros(cap - self._n, np.int64)])

    def flush_to(self, path, every_s: float = FLUSH_S) -> History:
        """Makes `append` save this History to `path` (atomically) as it grows, as `gf.train`
        does: at the next append, then at the first append `every_s` seconds after the last
        write. `close` writes the records not yet written.

        Args:
          path: the `.npz` file to keep up to date.
          every_s: the least number of seconds between two writes; default 2.

        Returns:
          This History.

        Example:
          >>> hist = gf.History().flush_to("run/history.npz")  # doctest: +SKIP
          >>> for step, batch in enumerate(batches):  # doctest: +SKIP
          ...     hist.append(step, train_step(batch)[2])
          >>> hist.close()  # doctest: +SKIP
        """
        self._path, self._every_s, self._wrote_at = Path(path), float(every_s), None
        return self

    def close(self) -> Path | None:
        """Writes the records that `flush_to`'s file lacks, if any (appending may go on).

        Returns:
          The `flush_to` path, or None if there is none.
        """
        if self._path and self._n and (self._wrote_at is None or self._written != self._n):
            self.save(self._path)
            self._written, self._wrote_at = self._n, _clock()
        return self._path

    def snapshot(self, record: int = -1) -> Snapshot:
        """The measurements of one record as a Snapshot.

        Args:
          record: the record's index (not its step); default the last record.

        Returns:
          A Snapshot with that record's per-layer values and scalars; its meta is this History's
          meta plus "step", the record's training step.

        Example:
          >>> init = hist.snapshot(0)  # doctest: +SKIP
          >>> init.meta["step"], init["error_norm"].shape  # doctest: +SKIP
          (0, (50,))
        """
        return Snapshot(self.layers, {k: self[k][record] for k in self.metrics},
                        {k: self[k][record] for k in self.scalars},
                        {**self.meta, "step": int(self.steps[record])})

    @classmethod
    def from_records(cls, layers, steps, records: list[dict], meta=None) -> History:
        """Builds a History from one dict of host arrays per record.

        Args:
          layers: the layer names, in network order.
          steps: the training step of each record.
          records: one dict per record, all with the same keys, mapping a name to a
            (n_layers,) or (n_layers, ...) array (a metric, e.g. a histogram per layer) or a 0-d
            array (a scalar such as the loss).
          meta: free-form metadata; default empty.

        Returns:
          A History whose metrics stack to (n_records, n_layers) and scalars to (n_records,).

        Example:
          >>> rec = {"grad_norm": np.ones(3), "loss": np.float32(2.3)}
          >>> h = gf.History.from_records(("a", "b", "c"), [0, 10], [rec, rec])
          >>> h["grad_norm"].shape, h["loss"].shape, h.steps
          ((2, 3), (2,), array([ 0, 10]))
        """
        keys = records[0].keys() if records else ()
        stacked = {k: np.stack([np.asarray(r[k]) for r in records]) for k in keys}
        metrics = {k: v for k, v in stacked.items() if v.ndim >= 2}
        scalars = {k: v for k, v in stacked.items() if v.ndim == 1}
        return cls(layers, metrics, scalars, meta, steps=steps)

    def truncated(self, k: int) -> History:
        """The first `k` records as a new History (meta copied).

        Args:
          k: how many records to keep, from the first (all of them if there are fewer).

        Returns:
          A History with the same layers and the first `k` records' arrays and steps.

        Example:
          >>> h.truncated(3).steps  # doctest: +SKIP
          array([0, 5, 10])
        """
        return History(self.layers, {m: self[m][:k] for m in self.metrics},
                       {s: self[s][:k] for s in self.scalars}, dict(self.meta),
                       steps=self.steps[:k])


def _blank(dtype):
    """The value of a quantity a record did not take: NaN, or -1 for integer counts."""
    return -1 if np.issubdtype(dtype, np.integer) else np.nan


def _occasional() -> frozenset:
    from .quantities.histograms import HISTOGRAM_METRICS
    from .quantities.noise import NOISE_FLAG, NOISE_METRICS, NOISE_SCALARS
    from .quantities.steps import CURVATURE_METRICS, CURVATURE_SCALARS
    return frozenset(NOISE_METRICS + NOISE_SCALARS + (NOISE_FLAG,) + CURVATURE_METRICS
                     + CURVATURE_SCALARS + HISTOGRAM_METRICS
                     + ("init_distance", "layer_init_distance", "update_ratio"))


OCCASIONAL = _occasional()  # quantities a record may lack (`append` leaves them blank)


def finite_record(record: dict) -> bool:
    """Whether a record's loss and every layer's gradient and error norm are finite.

    Error norms that are NaN in every layer count as finite: they are ones the model could not
    measure (its layer calls cannot be probed). `gf.train` stops where this is False.

    Args:
      record: a dict with "loss" (a scalar) and optionally "grad_norm" and "error_norm"
        ((n_layers,) arrays); other keys are ignored.

    Returns:
      True if every value checked is finite.
    """
    if not np.isfinite(float(record["loss"])):
        return False
    for k in BACKWARD:
        if k in record:
            v = np.asarray(record[k], dtype=np.float64)
            if not np.isfinite(v).all() and not (k == "error_norm" and np.isnan(v).all()):
                return False
    return True
