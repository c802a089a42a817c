"""Heatmap of one per-layer metric over training: layers (input at the bottom) x steps."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm, Normalize

from ._style import LOG_METRICS, label, layer_ticks, positive_finite


def heatmap(history, metric: str = "grad_norm", *, ax=None, log: bool | None = None, vmin=None,
            vmax=None, title: str | None = None):
    """Layers x steps image of `history[metric]` with a colorbar; returns the Figure.

    Log color scale by default for norms; non-finite values are grey, exact zeros black.
    `vmin`/`vmax` fix the color range (to compare several histories on one scale).
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
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85", under="black")
    if zeros:
        values = np.where(data == 0, lo / 10, values)
    mesh = ax.pcolormesh(x_edges, y_edges, values.T, norm=norm, cmap=cmap, shading="flat")
    pos, names = layer_ticks(history.layers)
    ax.set_yticks(pos, names, fontsize=7 if n_layers > 12 else 8)
    ax.set_xlabel("training step")
    ax.set_ylabel("layer (input at the bottom)")
    arch = history.meta.get("arch")
    ax.set_title(title or f"{label(metric)}" + (f" — {arch}" if arch else ""))
    fig.colorbar(mesh, ax=ax, label=label(metric) + (" (log scale)" if log else ""),
                 extend="min" if zeros else "neither")
    fig.tight_layout()
    return fig


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around each recorded step (records may be unevenly spaced)."""
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mids = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (mids[0] - steps[0])], mids,
                           [steps[-1] + (steps[-1] - mids[-1])]])
