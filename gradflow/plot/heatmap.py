"""Heatmap of one per-layer metric over training: layers (input at the bottom) x steps."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.patches import Patch

from ._style import LOG_METRICS, NONFINITE, label, layer_ticks, positive_finite


def heatmap(history, metric: str = "grad_norm", *, ax=None, log: bool | None = None, vmin=None,
            vmax=None, title: str | None = None):
    """Draws one per-layer metric of a History as a layers x steps image, with a colorbar.

    Layers run up from the input at the bottom; each cell spans its recorded step (one record:
    one column, its tick labelled with the step). Non-finite values are drawn light grey (with a
    legend entry) and, on a log scale, exact zeros black (below the scale). The colorbar says
    whether its range is this figure's own or fixed by `vmin` / `vmax`.

    Args:
      history: a History.
      metric: a per-layer metric name; default "grad_norm".
      ax: a matplotlib Axes to draw into; default a new Figure.
      log: log colour scale; default True for grad_norm, error_norm, weight_norm, update_ratio
        and act_std.
      vmin: the lower end of the colour range; default the smallest (positive, if log) finite
        value. Fix `vmin` and `vmax` to compare several histories on one scale.
      vmax: the upper end; default the largest finite value.
      title: the title; default the metric's label and `meta["arch"]`.

    Returns:
      The matplotlib Figure.

    Raises:
      ValueError: if `history[metric]` is not 2-D (n_records, n_layers).

    Example:
      >>> fig = gf.plot.heatmap(hist, "error_norm")  # doctest: +SKIP
      >>> fig.savefig("heatmap.png")  # doctest: +SKIP
    """
    data = np.asarray(history[metric], dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"{metric!r} is not a per-layer metric of a History")
    log = metric in LOG_METRICS if log is None else log
    values = positive_finite(data) if log else np.where(np.isfinite(data), data, np.nan)
    zeros = log and bool(np.any(data == 0))
    finite = values[np.isfinite(values)]
    lo = vmin if vmin is not None else (finite.min() if finite.size else 1e-8)
    hi = vmax if vmax is not None else (finite.max() if finite.size else 1.0)
    if hi <= lo:
        hi = lo * 10 if log else lo + 1
    norm = LogNorm(lo, hi) if log else Normalize(lo, hi)
    fig = ax.figure if ax is not None else plt.figure(figsize=(8, 5.5))
    ax = ax or fig.add_subplot()
    steps = np.asarray(history.steps)
    n_layers = values.shape[1]
    x_edges = _edges(steps)
    y_edges = np.arange(n_layers + 1) - 0.5
    # Non-finite cells are light grey; exact zeros (no signal at all) black, below the scale.
    cmap = plt.get_cmap("viridis").with_extremes(bad=NONFINITE, under="black")
    if zeros:
        values = np.where(data == 0, lo / 10, values)
    mesh = ax.pcolormesh(x_edges, y_edges, values.T, norm=norm, cmap=cmap, shading="flat")
    pos, names = layer_ticks(history.layers)
    ax.set_yticks(pos, names, fontsize=7 if n_layers > 12 else 8)
    ax.set_xlabel("training step")
    if steps.size == 1:  # one record: one column, labelled with its step
        ax.set_xticks([steps[0]], [str(int(steps[0]))])
        ax.set_xlabel("training step (one record)")
    ax.set_ylabel("layer (input at the bottom)")
    arch = history.meta.get("arch")
    ax.set_title(title or f"{label(metric)}" + (f" — {arch}" if arch else ""))
    own = vmin is None and vmax is None
    scale = "log scale" if log else "linear scale"
    fig.colorbar(mesh, ax=ax, extend="min" if zeros else "neither",
                 label=f"{label(metric)}, {scale}\n" + (
                     "this figure's own range (not shared)" if own else "fixed range"))
    if not np.isfinite(data).all():
        ax.legend(handles=[Patch(facecolor=NONFINITE, edgecolor="0.5",
                                 label="non-finite (diverged)")],
                  loc="upper left", bbox_to_anchor=(0.0, -0.1), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _edges(steps) -> np.ndarray:
    """Cell edges around each recorded step (records may be unevenly spaced)."""
    steps = np.asarray(steps, dtype=np.float64)
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mids = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (mids[0] - steps[0])], mids,
                           [steps[-1] + (steps[-1] - mids[-1])]])
