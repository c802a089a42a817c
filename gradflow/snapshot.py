"""Snapshot: the per-layer measurements of one batch, a JAX pytree (arrays as leaves, names and
metadata as static data), so a jitted step can return it; and the records base it shares with
History: indexing by metric name, and `.npz` files.

Files are `.npz` (numpy arrays, no pickle) with the names and metadata as JSON; writes go to a
temporary file renamed into place, so a file on disk is always complete.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import jax
import numpy as np

from ._io import write_atomic

_FORMAT = "gradflow-records-1"
HTML = {}  # kind -> the function that shows it in Jupyter (gradflow.report.notebook's, plugged
#            in by the package at import: the HTML and its figure belong to a higher layer)


class _Records:
    kind = "records"

    def __init__(self, layers, metrics: dict, scalars: dict | None = None, meta: dict | None = None):
        self.layers = tuple(layers)
        self._metrics = {k: self._convert(v) for k, v in metrics.items()}
        self._scalars = {k: self._convert(v) for k, v in (scalars or {}).items()}
        self.meta = dict(meta or {})

    _convert = staticmethod(np.asarray)

    def _view(self, array):
        return array

    @property
    def metrics(self) -> tuple[str, ...]:
        """Names of the per-layer metrics."""
        return tuple(self._metrics)

    @property
    def scalars(self) -> tuple[str, ...]:
        """Names of the per-record scalars (loss, accuracy)."""
        return tuple(self._scalars)

    def __getitem__(self, name: str):
        if name in self._metrics:
            return self._view(self._metrics[name])
        if name in self._scalars:
            return self._view(self._scalars[name])
        raise KeyError(f"{name!r}: available are {', '.join(self.metrics + self.scalars)}")

    def __contains__(self, name: str) -> bool:
        return name in self._metrics or name in self._scalars

    def _extra(self) -> dict:
        return {}

    def save(self, path) -> Path:
        """Writes the records to `path` as an `.npz` file, atomically.

        The file holds numpy arrays only (no pickle; jax arrays are fetched to the host); the
        layer names and `meta` go into a JSON header, so `meta` must be JSON-serializable. It is
        written to a temporary file that is synced to disk and renamed into place.

        Args:
          path: the destination (str or Path); no suffix is added.

        Returns:
          The destination as a Path.

        Example:
          >>> hist.save("plain_history.npz")  # doctest: +SKIP
          PosixPath('plain_history.npz')
        """
        header = {"format": _FORMAT, "kind": self.kind, "layers": list(self.layers),
                  "meta": self.meta}
        arrays = {f"metric:{k}": np.asarray(self[k]) for k in self.metrics}
        arrays |= {f"scalar:{k}": np.asarray(self[k]) for k in self.scalars}
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

    def _repr_html_(self) -> str | None:
        """Jupyter's view: the per-layer table, and for a History a heatmap over steps."""
        return HTML[self.kind](self) if self.kind in HTML else None


@jax.tree_util.register_pytree_with_keys_class
class Snapshot(_Records):
    """Per-layer measurements of one batch, as `gf.probe` returns them.

    `s[metric]` has shape (n_layers,), layers in network order (input first); `s["loss"]` and
    `s["accuracy"]` are 0-d arrays. `s.metrics` and `s.scalars` name what is there (an unknown
    name raises KeyError listing them), `s.layers` are the layer names, `s.meta` the metadata.

    A Snapshot is a JAX pytree: its arrays are the leaves (key path `['grad_norm']`), the names
    and `meta` are static, so a jitted function can build and return one, and `jax.tree.map` and
    `jax.device_get` apply to it. jax arrays are kept as they are, anything else becomes numpy.

    Args:
      layers: the layer names, in network order.
      metrics: metric name -> (n_layers,) array.
      scalars: scalar name -> 0-d array (loss, accuracy); default none.
      meta: free-form metadata, JSON-serializable (`save` writes it); default empty.

    Example:
      >>> make = jax.jit(lambda g: gf.Snapshot(("a", "b"), {"grad_norm": g}, {"loss": g.sum()}))
      >>> snap = make(jnp.ones(2))
      >>> snap["grad_norm"].shape, float(snap["loss"]), snap.layers
      ((2,), 2.0, ('a', 'b'))
      >>> [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(snap)]
      ["['grad_norm']", "['loss']"]
      >>> snap.save("init.npz"); snap = gf.Snapshot.load("init.npz")  # doctest: +SKIP
    """
    kind = "snapshot"
    _meta_json = None  # meta as JSON, the static data it travels as; parsed on first use

    @staticmethod
    def _convert(value):
        return value if isinstance(value, jax.Array) else np.asarray(value)

    @property
    def meta(self) -> dict:
        if self._meta is None:
            self._meta = json.loads(self._meta_json)
        return self._meta

    @meta.setter
    def meta(self, value: dict):
        self._meta, self._meta_json = value, None

    def tree_flatten_with_keys(self):
        # Every jitted call returning a Snapshot unflattens it, and every device_get flattens it:
        # the JSON form of meta is kept as long as meta is not read, so a training loop that
        # only appends snapshots never encodes or parses it again.
        leaves = [(jax.tree_util.DictKey(k), self[k]) for k in self.metrics + self.scalars]
        meta = (self._meta_json if self._meta is None  # hashable static data; TypeError if
                else json.dumps(self._meta, sort_keys=True))  # meta is not JSON
        return leaves, (self.layers, self.metrics, self.scalars, meta)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        snap = object.__new__(cls)  # leaves may be anything here (None, tracers, shape structs)
        snap.layers, metrics, scalars, meta = aux
        leaves = list(leaves)
        snap._metrics = dict(zip(metrics, leaves[:len(metrics)]))
        snap._scalars = dict(zip(scalars, leaves[len(metrics):]))
        snap._meta, snap._meta_json = None, meta
        return snap
