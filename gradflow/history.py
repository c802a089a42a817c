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
        """Writes the records atomically to `path` (.npz); returns the path."""
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
        """Reads records written by `save`; ValueError naming the file if it is not one."""
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
    """Per-layer measurements of one batch: `s["grad_norm"]` has shape (n_layers,)."""
    kind = "snapshot"


class History(_Records):
    """Measurements over training: `h["grad_norm"]` has shape (n_records, n_layers), `h.steps` the
    step of each record, `h["loss"]` shape (n_records,)."""
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
        """The measurements of one record as a Snapshot."""
        return Snapshot(self.layers, {k: v[record] for k, v in self._metrics.items()},
                        {k: v[record] for k, v in self._scalars.items()},
                        {**self.meta, "step": int(self.steps[record])})

    @classmethod
    def from_records(cls, layers, steps, records: list[dict], meta=None) -> "History":
        """Builds a History from per-record dicts of host arrays (per-layer or scalar)."""
        keys = records[0].keys() if records else ()
        stacked = {k: np.stack([np.asarray(r[k]) for r in records]) for k in keys}
        metrics = {k: v for k, v in stacked.items() if v.ndim == 2}
        scalars = {k: v for k, v in stacked.items() if v.ndim == 1}
        return cls(layers, metrics, scalars, meta, steps=steps)

    def truncated(self, k: int) -> "History":
        """The first `k` records as a new History (meta copied).

        Example:
          >>> h.truncated(3).steps  # doctest: +SKIP
          array([0, 5, 10])
        """
        return History(self.layers, {m: v[:k] for m, v in self._metrics.items()},
                       {s: v[:k] for s, v in self._scalars.items()}, dict(self.meta),
                       steps=self.steps[:k])


def finite_record(record: dict) -> bool:
    """Whether a record's loss and every layer's gradient and error norm are finite (error norms
    that are NaN in every layer are ones the model could not measure: its layer calls cannot be
    probed). `gf.train` stops where this is False."""
    if not np.isfinite(float(record["loss"])):
        return False
    for k in BACKWARD:
        if k in record:
            v = np.asarray(record[k], dtype=np.float64)
            if not np.isfinite(v).all() and not (k == "error_norm" and np.isnan(v).all()):
                return False
    return True
