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


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def positive_finite(a) -> np.ndarray:
    """Values that can sit on a log scale; others become NaN (drawn as blank, never as garbage)."""
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def layer_ticks(names, max_ticks: int = 25):
    """Tick positions and short labels for up to `max_ticks` layers, network order."""
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
    """`fig` rendered as PNG bytes at `dpi`; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
