"""Per-layer profile of a metric: one line per chosen record (or the Snapshot), log axis."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..analysis.theory import predicted_profile
from ._style import LOG_METRICS, label, layer_ticks, positive_finite


def profile(records, metric: str = "error_norm", *, at=None, ax=None, log: bool | None = None,
            title: str | None = None, theory: bool = False):
    """Plots a per-layer metric against layer index (input on the left), one line per record.

    Args:
      records: a Snapshot (one line) or a History.
      metric: a per-layer metric name; default "error_norm".
      at: for a History, the steps to draw (each the nearest recorded step); default the first
        and the last record.
      ax: a matplotlib Axes to draw into; default a new Figure.
      log: log y-axis; default True for grad_norm, error_norm, weight_norm, update_ratio and
        act_std.
      title: the title; default the metric's label and `meta["arch"]`.
      theory: overlay the mean-field prediction at init (`gf.theory.predicted_profile`),
        anchored at the first line's last hidden layer, where one applies; it needs
        `meta["arch"]`, `meta["init"]` and `meta["activation"]`.

    Returns:
      The matplotlib Figure.

    Example:
      >>> fig = gf.plot.profile(hist, "grad_norm", at=[0, 50, 99])  # doctest: +SKIP
      >>> fig = gf.plot.profile(gf.History.load("plain_history.npz"), theory=True)  # doctest: +SKIP
    """
    data = np.asarray(records[metric], dtype=np.float64)
    log = metric in LOG_METRICS if log is None else log
    fig = ax.figure if ax is not None else plt.figure(figsize=(8, 4.5))
    ax = ax or fig.add_subplot()
    layers = np.arange(len(records.layers))
    if data.ndim == 1:
        lines = [(data, "snapshot")]
    else:
        steps = np.asarray(records.steps)
        wanted = [steps[0], steps[-1]] if at is None else list(at)
        idx = [int(np.argmin(np.abs(steps - s))) for s in wanted]
        lines = [(data[i], f"step {steps[i]}") for i in dict.fromkeys(idx)]
    for values, name in lines:
        ax.plot(layers, positive_finite(values) if log else values, marker="." if len(layers) <= 60
                else None, label=name)
    if theory:
        _overlay_theory(ax, records, metric, lines[0][0], layers)
    if log:
        ax.set_yscale("log")
    pos, _ = layer_ticks(records.layers, max_ticks=12)
    ax.set_xticks(pos, [str(p + 1) for p in pos])
    ax.set_xlabel("layer (1 = input side)")
    ax.set_ylabel(label(metric))
    arch = records.meta.get("arch")
    ax.set_title(title or f"{label(metric)} by layer" + (f" — {arch}" if arch else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _overlay_theory(ax, records, metric, anchor_line, layers):
    meta = records.meta
    base = meta.get("arch", "").removesuffix("_separable")
    pred = predicted_profile(metric, len(layers), arch=base, init=meta.get("init", ""),
                             activation=meta.get("activation", ""))
    # Anchored at the last hidden layer: the head (pooling, no activation) is outside the theory.
    k = len(layers) - 2 if len(layers) >= 3 else len(layers) - 1
    if pred is None or not np.isfinite(anchor_line[k]) or anchor_line[k] <= 0:
        return
    ax.plot(layers, pred * anchor_line[k] / pred[k], "k--", lw=1.2,
            label="mean-field prediction (init)")
