"""Shared figure helpers: the headless backend, metric labels, safe log scales."""
from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np

LABELS = {
    "grad_norm": "‖∂L/∂W‖ (weight-gradient norm)",
    "error_norm": "‖∂L/∂z‖ (error signal)",
    "act_mean": "activation mean",
    "act_std": "activation std",
    "dead_frac": "dead-unit fraction",
    "weight_norm": "‖W‖ (weight norm)",
    "update_ratio": "‖ΔW‖ / ‖W‖ (update ratio)",
}
LOG_METRICS = {"grad_norm", "error_norm", "weight_norm", "update_ratio", "act_std"}
NONFINITE = "0.82"  # light grey: a non-finite value, or a step never reached (diverged)
NO_LAYER = {"facecolor": "white", "edgecolor": "0.6", "hatch": "///"}  # a row a network lacks


def label(metric: str) -> str:
    """The axis label of a metric.

    Args:
      metric: a metric name.

    Returns:
      Its label in `LABELS`, e.g. "‖∂L/∂z‖ (error signal)", or the name itself if it has none.
    """
    return LABELS.get(metric, metric)


def positive_finite(a) -> np.ndarray:
    """Values that can sit on a log scale; others become NaN (drawn as blank, never as garbage).

    Args:
      a: an array-like.

    Returns:
      A float64 array: `a` where finite and > 0, NaN elsewhere.
    """
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def layer_ticks(names, max_ticks: int = 25):
    """Tick positions and short labels for at most about `max_ticks` layers, network order.

    Args:
      names: the layer names.
      max_ticks: how many ticks to aim for; the last layer always gets one.

    Returns:
      `(positions, labels)`: 0-based indices and "i: name" labels (1-based, long names
      shortened to their last path components).
    """
    n = len(names)
    step = max(1, int(np.ceil(n / max_ticks)))
    pos = list(range(0, n, step))
    if pos[-1] != n - 1:
        pos.append(n - 1)
    return pos, [f"{i + 1}: {_short(names[i])}" for i in pos]


def _short(name: str, keep: int = 28) -> str:
    """The last path components of a layer name that fit in `keep` characters."""
    if len(name) <= keep:
        return name
    parts, out = name.split("/"), ""
    for part in reversed(parts):
        if len(out) + len(part) + 2 > keep and out:
            break
        out = part + ("/" + out if out else "")
    return "…/" + out


def png_bytes(fig, dpi: int = 110) -> bytes:
    """Renders a figure as PNG bytes and closes it.

    Args:
      fig: a matplotlib Figure.
      dpi: the resolution, dots per inch.

    Returns:
      The PNG file's bytes.

    Example:
      >>> png = gf.plot.png_bytes(gf.plot.heatmap(hist))  # doctest: +SKIP
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
