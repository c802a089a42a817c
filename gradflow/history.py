"""Snapshot (one measurement) and History (measurements over training): per-layer arrays on the
host, layer names in network order, per-record scalars (loss, accuracy) and free-form metadata.

Files are `.npz` (numpy arrays, no pickle) with the names and metadata as JSON; writes go to a
temporary file renamed into place, so a file on disk is always complete.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ._io import write_atomic

_FORMAT = "gradflow-records-1"
BACKWARD = ("error_norm", "grad_norm")  # dL/dz and dL/dW, computed from the output layer down


class _Records:
    kind = "records"

    def __init__(self, layers, metrics: dict, scalars: dict | None = None, meta: dict | None = None):
        self.layers = tuple(layers)
        self._metrics = {k: np.asarray(v) for k, v in metrics.items()}
        self._scalars = {k: np.asarray(v) for k, v in (scalars or {}).items()}
        self.meta = dict(meta or {})

    @property
    def metrics(self) -> tuple[str, ...]:
        """Names of the per-layer metrics."""
        return tuple(self._metrics)

    @property
    def scalars(self) -> tuple[str, ...]:
        """Names of the per-record scalars (loss, accuracy)."""
        return tuple(self._scalars)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._metrics:
            return self._metrics[name]
        if name in self._scalars:
            return self._scalars[name]
        raise KeyError(f"{name!r}: available are {', '.join(self.metrics + self.scalars)}")

    def __contains__(self, name: str) -> bool:
        return name in self._metrics or name in self._scalars

    def _extra(self) -> dict:
        return {}

    def save(self, path) -> Path:
        """Writes the records to `path` as an `.npz` file, atomically.

        The file holds numpy arrays only (no pickle); the layer names and `meta` go into a JSON
        header, so `meta` must be JSON-serializable. It is written to a temporary file that is
        synced to disk and renamed into place.

        Args:
          path: the destination (str or Path); no suffix is added.

        Returns:
          The destination as a Path.

        Example:
          >>> hist.save("plain_history.npz")  # doctest: +SKIP
          PosixPath('plain_history.npz')
        """
        path = Path(path)
        header = {"format": _FORMAT, "kind": self.kind, "layers": list(self.layers),
                  "meta": self.meta}
        arrays = {f"metric:{k}": v for k, v in self._metrics.items()}
        arrays |= {f"scalar:{k}": v for k, v in self._scalars.items()}
        arrays |= self._extra()
        arrays["header"] = np.array(json.dumps(header))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return write_atomic(path, buf.getvalue(), fsync=True)

    @classmethod
    def load(cls, path):
        """Reads a file written by `save` of the same class.

        Args:
          path: the `.npz` file (str or Path).

        Returns:
          A Snapshot (`Snapshot.load`) or History (`History.load`).

        Raises:
          ValueError: naming the file, if it is unreadable or not a gradflow file of this kind
            (e.g. a Snapshot file given to `History.load`).

        Example:
          >>> hist = gf.History.load("runs/<date>_<time>/plain_history.npz")  # doctest: +SKIP
          >>> hist.meta["arch"], hist.layers[0]  # doctest: +SKIP
          ('plain', 'stem/layer')
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a readable gradflow file ({e})") from None
        if header.get("format") != _FORMAT or header.get("kind") != cls.kind:
            raise ValueError(f"{path}: not a gradflow {cls.kind} file")
        metrics = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("metric:")}
        scalars = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("scalar:")}
        return cls._from_parts(header, metrics, scalars, arrays)

    @classmethod
    def _from_parts(cls, header, metrics, scalars, arrays):
        return cls(header["layers"], metrics, scalars, header["meta"])

    def __repr__(self):
        return f"{type(self).__name__}({len(self.layers)} layers, metrics={list(self.metrics)})"


class Snapshot(_Records):
    """Per-layer measurements of one batch, as `gf.probe` returns them.

    `s[metric]` has shape (n_layers,), layers in network order (input first); `s["loss"]` and
    `s["accuracy"]` are 0-d arrays. `s.metrics` and `s.scalars` name what is there (an unknown
    name raises KeyError listing them), `s.layers` are the layer names, `s.meta` the metadata.

    Args:
      layers: the layer names, in network order.
      metrics: metric name -> (n_layers,) array.
      scalars: scalar name -> 0-d array (loss, accuracy); default none.
      meta: free-form metadata, JSON-serializable so that `save` can write it; default empty.

    Example:
      >>> snap = gf.probe(model, (x, y))  # doctest: +SKIP
      >>> snap["error_norm"].shape, float(snap["loss"])  # doctest: +SKIP
      ((50,), 2.31)
      >>> snap.save("init.npz"); snap = gf.Snapshot.load("init.npz")  # doctest: +SKIP
    """
    kind = "snapshot"


class History(_Records):
    """Per-layer measurements over training, as `gf.train` returns them.

    `h[metric]` has shape (n_records, n_layers), layers in network order (input first);
    `h["loss"]` and `h["accuracy"]` have shape (n_records,); `h.steps` (int64, (n_records,)) is
    the training step of each record. `h.metrics`, `h.scalars`, `h.layers` and `h.meta` are as
    in Snapshot.

    Args:
      layers: the layer names, in network order.
      metrics: metric name -> (n_records, n_layers) array.
      scalars: scalar name -> (n_records,) array; default none.
      meta: free-form metadata, JSON-serializable so that `save` can write it; default empty.
      steps: the step of each record; default none.

    Example:
      >>> hist = gf.train(model, batches, steps=100, optimizer=optax.sgd(0.1),
      ...                 log_every=10)  # doctest: +SKIP
      >>> hist["grad_norm"].shape, hist.steps[-1]  # doctest: +SKIP
      ((11, 50), 99)
      >>> last = hist.snapshot()  # doctest: +SKIP
    """
    kind = "history"

    def __init__(self, layers, metrics: dict, scalars: dict | None = None, meta: dict | None = None,
                 steps=()):
        super().__init__(layers, metrics, scalars, meta)
        self.steps = np.asarray(steps, dtype=np.int64)

    def _extra(self):
        return {"steps": self.steps}

    @classmethod
    def _from_parts(cls, header, metrics, scalars, arrays):
        return cls(header["layers"], metrics, scalars, header["meta"], steps=arrays["steps"])

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
        return Snapshot(self.layers, {k: v[record] for k, v in self._metrics.items()},
                        {k: v[record] for k, v in self._scalars.items()},
                        {**self.meta, "step": int(self.steps[record])})

    @classmethod
    def from_records(cls, layers, steps, records: list[dict], meta=None) -> "History":
        """Builds a History from one dict of host arrays per record.

        Args:
          layers: the layer names, in network order.
          steps: the training step of each record.
          records: one dict per record, all with the same keys, mapping a name to a
            (n_layers,) array (a metric) or a 0-d array (a scalar such as the loss).
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
        metrics = {k: v for k, v in stacked.items() if v.ndim == 2}
        scalars = {k: v for k, v in stacked.items() if v.ndim == 1}
        return cls(layers, metrics, scalars, meta, steps=steps)

    def truncated(self, k: int) -> "History":
        """The first `k` records as a new History (meta copied).

        Args:
          k: how many records to keep, from the first (all of them if there are fewer).

        Returns:
          A History with the same layers and the first `k` records' arrays and steps.

        Example:
          >>> h.truncated(3).steps  # doctest: +SKIP
          array([0, 5, 10])
        """
        return History(self.layers, {m: v[:k] for m, v in self._metrics.items()},
                       {s: v[:k] for s, v in self._scalars.items()}, dict(self.meta),
                       steps=self.steps[:k])


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
