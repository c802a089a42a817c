"""What every logger writes, and when: the records of a History (or Snapshot) not yet written,
as scalars `<metric>/<layer>` and whole-network scalars, gradient histograms on a log10 axis,
and heatmaps rendered by `gradflow.plot` as RGB arrays."""
from __future__ import annotations

import importlib
import io
import re

import numpy as np

from ..history import History
from ..quantities.histograms import HIST_BINS, HISTOGRAM_METRICS, LOG10_HIGH, LOG10_LOW
from ..snapshot import Snapshot

HEATMAPS = ("grad_norm", "error_norm")  # the heatmaps written at `close`
# log10 |g| of the histogram bins' edges: bin 0 (|g| < 1e-24, zeros) is drawn at [-25, -24),
# the last bin (|g| >= 1e8 and non-finite) at [8, 9)
LOG10_EDGES = np.arange(LOG10_LOW - 1, LOG10_HIGH + 2, dtype=np.float64)
assert len(LOG10_EDGES) == HIST_BINS + 1


def require(module: str, who: str, extra: str):
    """Imports an optional package, or raises a one-line ImportError saying how to install it.

    Args:
      module: the package's import name.
      who: the class that needs it.
      extra: the gradflow extra that installs it.

    Returns:
      The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"gf.integrations.{who} needs {module}: pip install "
                          f"'gradflow-diagnostics[{extra}]'") from None


def layer_tags(layers) -> list[str]:
    """Tag-safe names for the layers that TensorBoard's alphabetical order keeps in network
    order: a zero-padded position, then the name (characters other than letters, digits, `_`,
    `.`, `/` and `-` become `_`).

    Args:
      layers: the layer names, in network order.

    Returns:
      One distinct name per layer.

    Example:
      >>> layer_tags(["stem/conv", "block 1", "block_1"])
      ['0_stem/conv', '1_block_1', '2_block_1']
    """
    width = len(str(max(len(layers) - 1, 0)))
    return [f"{i:0{width}d}_" + re.sub(r"[^\w./-]", "_", str(name))
            for i, name in enumerate(layers)]


def histogram_stats(counts) -> dict:
    """TensorBoard's raw histogram of one layer's log-bin counts, on the log10 |g| axis.

    Args:
      counts: (HIST_BINS,) counts (`gradflow.quantities.histograms`).

    Returns:
      min, max (edges of the first and last non-empty bins), num, sum and sum_squares (from
      the bins' centres), bucket_limits (right edges) and bucket_counts.
    """
    c = np.asarray(counts, np.float64)
    nz = np.flatnonzero(c)
    centres = (LOG10_EDGES[:-1] + LOG10_EDGES[1:]) / 2
    return dict(min=float(LOG10_EDGES[nz[0]]), max=float(LOG10_EDGES[nz[-1] + 1]),
                num=float(c.sum()), sum=float(c @ centres), sum_squares=float(c @ centres ** 2),
                bucket_limits=LOG10_EDGES[1:].tolist(), bucket_counts=c.tolist())


def heatmap_rgb(history: History, metric: str) -> np.ndarray:
    """`gf.plot.heatmap(history, metric)` rendered as an (H, W, 3) uint8 array.

    Args:
      history: a History with at least one record.
      metric: a per-layer metric.

    Returns:
      The image.
    """
    from matplotlib.image import imread

    from ..plot import heatmap, png_bytes

    rgba = imread(io.BytesIO(png_bytes(heatmap(history, metric))), format="png")
    return (np.clip(rgba[..., :3], 0, 1) * 255).round().astype(np.uint8)


class Logger:
    """The shared contract of the loggers: `write` new records, `write_heatmaps`, `close`.

    Subclasses implement `_log(step, scalars, histograms)`, `_image(tag, rgb, step)` and
    `_finish()`.

    Args:
      heatmaps: the per-layer metrics drawn as heatmaps at `close` (those the History holds).
    """

    def __init__(self, heatmaps=HEATMAPS):
        self.heatmaps = tuple(heatmaps)
        self.last_step: int | None = None  # the last step written
        self._history: History | None = None  # the latest History, for the heatmaps
        self._own: History | None = None  # the records of Snapshots given to `write`
        self._drawn_at: int | None = None  # the last step of the heatmaps written
        self._closed = False

    def write(self, source, step: int | None = None) -> int:
        """Writes the records of `source` not written yet.

        Args:
          source: a History (possibly growing: its records at steps after the last step written
            are written, so it can be given again at every flush), or a Snapshot.
          step: a Snapshot's training step; default its `meta["step"]`, else the step after
            the last one written (0 first). Not used with a History.

        Returns:
          The number of records written.

        Raises:
          TypeError: if `source` is neither a History nor a Snapshot.
          ValueError: if a Snapshot's step does not follow the last one.
        """
        if isinstance(source, Snapshot):
            step = source.meta.get("step") if step is None else step
            if step is None:
                step = 0 if self.last_step is None else self.last_step + 1
            self._own = self._own if self._own is not None else History()
            self._own.append(step, source)
            source = self._own
        elif not isinstance(source, History):
            raise TypeError(f"write takes a gf.History or gf.Snapshot, not "
                            f"{type(source).__name__}")
        self._history = source
        steps = np.asarray(source.steps)
        new = np.flatnonzero(steps > (-1 if self.last_step is None else self.last_step))
        if not new.size:
            return 0
        tags = layer_tags(source.layers)
        per_layer = [m for m in source.metrics if np.ndim(source[m]) == 2]
        hists = [m for m in source.metrics if m in HISTOGRAM_METRICS and np.ndim(source[m]) == 3
                 and source[m].shape[2] == HIST_BINS]
        arrays = {m: np.asarray(source[m]) for m in (*per_layer, *hists, *source.scalars)}
        for r in new:
            scalars = {}
            for m in per_layer:
                scalars |= {f"{m}/{t}": float(v) for t, v in zip(tags, arrays[m][r])
                            if not np.isnan(v)}
            scalars |= {s: float(arrays[s][r]) for s in source.scalars
                        if np.ndim(arrays[s][r]) == 0 and not np.isnan(arrays[s][r])}
            histograms = {f"{m}/{t}": c for m in hists for t, c in zip(tags, arrays[m][r])
                          if c.min() >= 0 and c.sum() > 0}  # -1: not measured at this step
            self._log(int(steps[r]), scalars, histograms)
        self.last_step = int(steps[new[-1]])
        return int(new.size)

    def write_heatmaps(self) -> list[str]:
        """Writes the heatmaps (layers × steps) of the latest History, at its last step.

        Returns:
          The tags written, `heatmap/<metric>` (none before the first record, and none for a
          metric that is NaN everywhere, i.e. not measured).
        """
        h, done = self._history, []
        if h is None or not len(h):
            return done
        for m in self.heatmaps:
            if m in h and np.ndim(h[m]) == 2 and not np.isnan(h[m]).all():
                self._image(f"heatmap/{m}", heatmap_rgb(h, m), int(h.steps[-1]))
                done.append(f"heatmap/{m}")
        self._drawn_at = int(h.steps[-1])
        return done

    def close(self) -> None:
        """Writes the heatmaps (unless already drawn at the last step) and closes the logger."""
        if self._closed:
            return
        if self._history is not None and len(self._history) and (
                self._drawn_at != int(self._history.steps[-1])):
            self.write_heatmaps()
        self._finish()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _log(self, step: int, scalars: dict, histograms: dict) -> None:
        raise NotImplementedError

    def _image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError
