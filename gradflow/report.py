"""The figures and the self-contained HTML report of a `gradflow.run` experiment.

Inputs are the per-architecture Histories (plus the run's summary dict); outputs are matplotlib
Figures and one HTML string with every figure embedded as a base64 PNG, so it opens offline.
"""
from __future__ import annotations

import base64
import html
import io

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from .plot._style import label, positive_finite

CHANCE_COLOR = "0.45"


def shared_range(histories, metric: str = "error_norm") -> tuple[float, float]:
    """(min, max) of the positive finite values of `metric` over all histories."""
    vals = [positive_finite(h[metric]) for h in histories if h is not None and len(h.steps)]
    vals = np.concatenate([v[np.isfinite(v)] for v in vals]) if vals else np.array([])
    if not vals.size:
        return 1e-8, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo, lo * 10)


def comparison_grid(runs: dict, metric: str = "error_norm", notes: dict | None = None):
    """All architectures' layers x steps maps side by side on ONE log color scale (one colorbar),
    so a weaker signal is a darker colour in every panel. `runs` maps arch -> History."""
    notes = notes or {}
    archs = list(runs)
    lo, hi = shared_range(runs.values(), metric)
    norm = LogNorm(lo, hi)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.85")  # non-finite (diverged) cells: light grey, not a colour of the scale
    fig, axes = plt.subplots(1, len(archs), figsize=(3.1 * len(archs) + 1.6, 4.8), squeeze=False,
                             sharey=True, layout="constrained")
    mesh = None
    for ax, arch in zip(axes[0], archs):
        h = runs[arch]
        values = positive_finite(h[metric])
        n_layers = values.shape[1]
        mesh = ax.pcolormesh(_edges(h.steps), np.arange(n_layers + 1) + 0.5, values.T, norm=norm,
                             cmap=cmap, shading="flat")
        ax.set_title(arch + (f"\n{notes[arch]}" if arch in notes else ""), fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylim(0.5, max(len(runs[a].layers) for a in archs) + 0.5)
    axes[0][0].set_ylabel("layer (1 = input side)")
    fig.colorbar(mesh, ax=axes[0].tolist(), label=label(metric) + " — log scale, shared",
                 shrink=0.9)
    fig.suptitle(f"{label(metric)}: every layer over training, one colour scale "
                 f"({lo:.0e} … {hi:.0e})", fontsize=11)
    return fig


def profiles(runs: dict, metrics=("error_norm", "grad_norm")):
    """Per-layer profiles, one line per architecture: rows are metrics, columns are the first
    record (at init) and the last (end of training); log y-axis shared along each row."""
    fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 3.6 * len(metrics)), squeeze=False,
                             layout="constrained")
    for r, metric in enumerate(metrics):
        lo, hi = shared_range(runs.values(), metric)
        for c, (which, record) in enumerate((("at init", 0), ("at the end", -1))):
            ax = axes[r][c]
            for arch, h in runs.items():
                if not len(h.steps):
                    continue
                values = positive_finite(h[metric][record])
                ax.plot(np.arange(1, len(values) + 1), values, marker="." if len(values) <= 60
                        else None, ms=3, lw=1.3, label=f"{arch} (step {int(h.steps[record])})")
            ax.set_yscale("log")
            ax.set_ylim(lo / 2, hi * 2)
            ax.set_title(f"{label(metric)} by layer — {which}", fontsize=10)
            ax.set_xlabel("layer (1 = input side)")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7)
    return fig


def curves(runs: dict, num_classes: int | None = None, held_out: dict | None = None):
    """Training loss and accuracy per architecture (each recorded batch, thin, and a moving
    average, thick), chance level dashed, held-out accuracy as a star at the last step."""
    held_out = held_out or {}
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for i, (arch, h) in enumerate(runs.items()):
        if not len(h.steps):
            continue
        color = f"C{i}"
        for ax, key in ((ax_l, "loss"), (ax_a, "accuracy")):
            y = np.asarray(h[key], dtype=np.float64)
            y = np.where(np.isfinite(y), y, np.nan)
            ax.plot(h.steps, y, color=color, alpha=0.25, lw=0.8)
            ax.plot(h.steps, _smooth(y), color=color, lw=2, label=arch)
        if held_out.get(arch) is not None:
            ax_a.plot([h.steps[-1]], [held_out[arch]], marker="*", ms=13, color=color,
                      markeredgecolor="k", ls="none")
    if num_classes:
        ax_l.axhline(np.log(num_classes), color=CHANCE_COLOR, ls="--", lw=1,
                     label=f"chance (ln {num_classes})")
        ax_a.axhline(1 / num_classes, color=CHANCE_COLOR, ls="--", lw=1, label="chance")
    ax_a.plot([], [], marker="*", ms=10, color="w", markeredgecolor="k", ls="none",
              label="held-out accuracy")
    ax_l.set_title("training loss (per recorded batch; thick: moving average)", fontsize=10)
    ax_a.set_title("training accuracy (★ = held-out accuracy at the end)", fontsize=10)
    ax_l.set_yscale("log")
    ax_a.set_ylim(0, 1)
    for ax in (ax_l, ax_a):
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def png_bytes(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _smooth(y: np.ndarray, window: int | None = None) -> np.ndarray:
    """Trailing moving average ignoring NaN (a NaN stays where the raw value is NaN)."""
    window = window or max(1, len(y) // 10)
    out = np.full_like(y, np.nan)
    for i in range(len(y)):
        w = y[max(0, i - window + 1):i + 1]
        w = w[np.isfinite(w)]
        if np.isfinite(y[i]) and w.size:
            out[i] = w.mean()
    return out


def _edges(steps) -> np.ndarray:
    steps = np.asarray(steps, dtype=np.float64)
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mids = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (mids[0] - steps[0])], mids,
                           [steps[-1] + (steps[-1] - mids[-1])]])


# -- HTML ---------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;font-size:14px;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child,
td:last-child,th:last-child{text-align:left}th{background:#f2f2f2}img{max-width:100%;
border:1px solid #eee;margin:.5em 0}code,pre{background:#f6f6f6;padding:2px 4px}
.bad{color:#b00}.note{color:#555;font-size:14px}"""


def html_report(summary: dict, figures: list[tuple[str, str, bytes]]) -> str:
    """A standalone HTML page: configuration, the summary table with verdicts, and the
    `figures` (title, caption, png bytes) inlined as base64."""
    e = html.escape
    cfg = summary["config"]
    rows = []
    for a in summary["archs"]:
        cls = ' class="bad"' if a["status"] != "ok" else ""
        rows.append("<tr>" + "".join(f"<td{cls}>{e(str(v))}</td>" for v in (
            a["arch"], f"{a['params']:,}", _fmt(a["final_train_loss"], ".3f"),
            _fmt(a["final_train_accuracy"], ".1%"), _fmt(a["held_out_accuracy"], ".1%"),
            _fmt(a["error_ratio_init"], ".1e"), _fmt(a["error_ratio_end"], ".1e"),
            a["verdict"])) + "</tr>")
    head = ("arch", "params", "train loss", "train acc", "held-out acc",
            "error in/out at init", "error in/out at end", "verdict")
    table = ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows)
             + "</table>")
    figs = "".join(
        f"<h3>{e(title)}</h3><p class=note>{e(caption)}</p>"
        f'<img alt="{e(title)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for title, caption, png in figures)
    conf = ", ".join(f"{k}={v}" for k, v in cfg.items())
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>gradflow run — depth {cfg['depth']} {cfg['model']}</title><style>{_CSS}</style></head><body>
<h1>Gradient flow at depth {cfg['depth']}: {e(', '.join(a['arch'] for a in summary['archs']))}</h1>
<p>Command: <code>{e(summary['command'])}</code><br>Configuration: {e(conf)}<br>
Data: {e(summary['data']['description'])}<br>
Started {e(summary['started'])}; took {summary['wall_time_s']:.0f} s on {e(summary['device'])}.</p>
<h2>Summary</h2>{table}
<p class=note><b>error in/out</b> is the error signal ‖∂L/∂z‖ that reaches the first layer divided by
the one at the output layer, on one training batch: 1e-06 means the input-side layers receive a
millionth of the signal the top layer gets (vanishing); above 1 it grows toward the input
(exploding). Train loss/accuracy are averaged over the last recorded batches; held-out accuracy is
measured on {summary['data']['n_test']} images the network never saw, with BatchNorm in inference
mode (running statistics, re-estimated on {summary['eval']['bn_calibration_images']} training images
after training).</p>
<h2>Figures</h2>{figs}
</body></html>"""


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)
