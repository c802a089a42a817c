"""The figures and the self-contained HTML report of a `gradflow.run` experiment.

Inputs are the per-architecture Histories (plus the run's summary dict); outputs are matplotlib
Figures and one HTML string with every figure embedded as a base64 PNG, so it opens offline.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from ..plot._style import label, positive_finite

CHANCE_COLOR = "0.45"


def shared_range(histories, metric: str = "error_norm") -> tuple[float, float]:
    """(min, max) of the positive finite values of `metric` over all histories."""
    vals = [positive_finite(h[metric]).ravel() for h in histories]
    vals = np.concatenate(vals) if vals else np.array([])
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return 1e-8, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo, lo * 10)


def _cells(values: np.ndarray, lo: float) -> np.ndarray:
    """Log-scale cell values: exact zeros pushed below the scale (drawn in the 'under' colour),
    negative or non-finite values NaN (drawn as 'bad')."""
    v = np.asarray(values, dtype=np.float64)
    out = positive_finite(v)
    return np.where(v == 0, lo / 10, out)


def comparison_grid(runs: dict, metric: str = "error_norm", diverged: dict | None = None,
                    steps: int | None = None):
    """All architectures' layers x steps maps side by side on ONE log color scale (one colorbar),
    so a weaker signal is a darker colour in every panel. `runs` maps arch -> History;
    `diverged` maps an arch to the step where its loss became non-finite (its last record then
    spans up to that step); `steps` fixes the common step axis."""
    diverged = diverged or {}
    archs = list(runs)
    lo, hi = shared_range(runs.values(), metric)
    # exactly zero (no signal at all: dead units) in black, below the scale; non-finite
    # (diverged) in light grey, which is not a colour of the scale
    cmap = plt.get_cmap("viridis").with_extremes(under="black", bad="0.82")
    fig, axes = plt.subplots(1, len(archs), figsize=(3.0 * len(archs) + 1.8, 4.9), squeeze=False,
                             sharey=True, layout="constrained")
    last = steps - 1 if steps else max(int(h.steps[-1]) for h in runs.values())
    n_max = max(len(h.layers) for h in runs.values())
    any_zero = False
    mesh = None
    for ax, arch in zip(axes[0], archs):
        h = runs[arch]
        raw = np.asarray(h[metric], dtype=np.float64)
        any_zero |= bool((raw == 0).any())
        x_edges = _edges(h.steps)
        if arch in diverged:
            x_edges[-1] = max(diverged[arch], x_edges[-1])
        mesh = ax.pcolormesh(x_edges, np.arange(raw.shape[1] + 1) + 0.5, _cells(raw, lo).T,
                             norm=LogNorm(lo, hi), cmap=cmap, shading="flat")
        ax.set_facecolor("0.82")  # steps never reached (after divergence) look non-finite too
        note = f"diverged at step {diverged[arch]}" if arch in diverged else ""
        ax.set_title(arch + (f"\n{note}" if note else ""), fontsize=10)
        ax.set_xlabel("training step")
        ax.set_xlim(0, last)
        ax.set_ylim(0.5, n_max + 0.5)
        if note and x_edges[-1] < 0.6 * last:
            ax.text(0.55, 0.5, note.replace(" at", "\nat"), transform=ax.transAxes,
                    ha="center", va="center", fontsize=10, color="0.3")
    axes[0][0].set_ylabel("layer (1 = input side)")
    fig.colorbar(mesh, ax=axes[0].tolist(), shrink=0.92, extend="min" if any_zero else "neither",
                 label=label(metric) + ", log scale shared by all panels"
                 + ("\n(black: exactly 0)" if any_zero else ""))
    fig.suptitle(f"{label(metric)} in every layer over training", fontsize=11)
    return fig


def profiles(runs: dict, metrics=("error_norm", "grad_norm"), diverged: dict | None = None):
    """Per-layer profiles, one line per architecture: rows are metrics, columns are the first
    record (at init) and the last (end of training); log y-axis shared along each row. Layers
    whose value is exactly zero are marked with a triangle on the bottom edge; `diverged` (arch
    -> step) is noted in an arch's label in the end column."""
    diverged = diverged or {}
    any_zero = False
    fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 3.7 * len(metrics)), squeeze=False,
                             layout="constrained")
    for r, metric in enumerate(metrics):
        lo, hi = shared_range(runs.values(), metric)
        floor = lo / 3
        for c, (which, record) in enumerate((("at init", 0), ("at the end", -1))):
            ax = axes[r][c]
            for i, (arch, h) in enumerate(runs.items()):
                raw = np.asarray(h[metric][record], dtype=np.float64)
                layers = np.arange(1, len(raw) + 1)
                note = (f", diverged at step {diverged[arch]}" if record == -1 and arch in diverged
                        else "")
                if not np.isfinite(raw).all():
                    note = ", non-finite"
                elif (raw == 0).all():
                    note = ", all zero"
                stale = record == -1 and arch in diverged  # its last finite record, not the end
                ax.plot(layers, positive_finite(raw), color=f"C{i}", lw=1.3, ms=3,
                        marker="." if len(raw) <= 60 and not stale else None,
                        ls="--" if stale else "-", alpha=0.6 if stale else 1.0,
                        label=f"{arch} (step {int(h.steps[record])}{note})")
                zero = raw == 0
                any_zero |= bool(zero.any())
                if zero.any():
                    ax.plot(layers[zero], np.full(zero.sum(), floor), "v", color=f"C{i}", ms=4,
                            clip_on=False)
            ax.set_yscale("log")
            ax.set_ylim(floor, hi * 3)
            ax.set_title(f"{label(metric)} by layer — {which}", fontsize=10)
            ax.set_xlabel("layer (1 = input side)")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("Per-layer profiles" + (" (▼ on the bottom edge: exactly zero)" if any_zero
                                         else ""), fontsize=11)
    return fig


def curves(runs: dict, num_classes: int | None = None, held_out: dict | None = None,
           steps: int | None = None):
    """Training loss and accuracy per architecture (each recorded batch thin, a moving average
    thick), chance level dashed, held-out accuracy as a star at the last step."""
    held_out = held_out or {}
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    top = 0.0
    for i, (arch, h) in enumerate(runs.items()):
        color = f"C{i}"
        for ax, key in ((ax_l, "loss"), (ax_a, "accuracy")):
            y = np.asarray(h[key], dtype=np.float64)
            y = np.where(np.isfinite(y), y, np.nan)
            ax.plot(h.steps, y, color=color, alpha=0.25, lw=0.8)
            ax.plot(h.steps, _smooth(y), color=color, lw=2, label=arch)
            if key == "loss" and np.isfinite(y).any():
                top = max(top, float(np.nanmax(_smooth(y))))
        if held_out.get(arch) is not None:
            ax_a.plot([h.steps[-1]], [held_out[arch]], marker="*", ms=13, color=color,
                      markeredgecolor="k", ls="none")
    if num_classes:
        chance_loss = float(np.log(num_classes))
        ax_l.axhline(chance_loss, color=CHANCE_COLOR, ls="--", lw=1,
                     label=f"chance (ln {num_classes})")
        ax_a.axhline(1 / num_classes, color=CHANCE_COLOR, ls="--", lw=1, label="chance")
        top = min(max(top, chance_loss), 3 * chance_loss)  # a blow-up would flatten the rest
    ax_a.plot([], [], marker="*", ms=10, color="w", markeredgecolor="k", ls="none",
              label="held-out accuracy")
    ax_l.set_title("training loss (recorded batches; thick: moving average)", fontsize=10)
    ax_a.set_title("training accuracy (★: held-out accuracy at the end)", fontsize=10)
    ax_l.set_ylim(0, 1.08 * top if top > 0 else None)
    ax_a.set_ylim(0, 1)
    for ax in (ax_l, ax_a):
        ax.set_xlabel("training step")
        if steps:
            ax.set_xlim(0, steps - 1)
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


# -- the run directory --------------------------------------------------------------------------

def write_run(out, results: list[dict], summary: dict, num_classes: int, steps: int) -> list[str]:
    """Writes into the directory `out` each History (`<arch>_history.npz`), each heatmap
    (`<arch>_heatmap.png`), the comparison grids, profiles, curves, summary.json and
    report.html; returns the names written. Failed archs (no History) are skipped."""
    from pathlib import Path

    from ..plot import heatmap

    out = Path(out)
    written, figures = [], []
    runs = {r["arch"]: r["history"] for r in results if r.get("history") is not None}
    diverged = {r["arch"]: r["diverged_at"] for r in results if r.get("diverged_at") is not None}

    def save(name, fig, title, caption):
        png = png_bytes(fig)
        (out / name).write_bytes(png)
        written.append(name)
        figures.append((title, caption, png))

    for arch, h in runs.items():
        written.append(h.save(out / f"{arch}_history.npz").name)
    if runs:
        save("comparison_error_norm.png", comparison_grid(runs, "error_norm", diverged, steps),
             "Error signal in every layer, all architectures",
             "Each panel: layers (input at the bottom) × training steps; colour is the error "
             "signal ‖∂L/∂z‖ on ONE log scale shared by all panels, so a darker band is a weaker "
             "signal. Black: exactly zero. Grey: non-finite or never reached (diverged).")
        save("curves.png", curves(runs, num_classes, {r["arch"]: r.get("held_out_accuracy")
                                                       for r in results}, steps),
             "Loss and accuracy", "Training loss and accuracy of each recorded batch (thin) and "
             "their moving average (thick); the star is the held-out accuracy after training.")
        save("profiles.png", profiles(runs, diverged=diverged), "Per-layer profiles at init and at the end",
             "One line per architecture, layer 1 on the input side, log scale. Top: the error "
             "signal ‖∂L/∂z‖; bottom: the weight-gradient norm ‖∂L/∂W‖.")
        save("comparison_grad_norm.png", comparison_grid(runs, "grad_norm", diverged, steps),
             "Weight-gradient norm in every layer, all architectures",
             "‖∂L/∂W‖ per layer and step on one shared log scale.")
    for arch, h in runs.items():
        title = (f"{label('error_norm')} — {arch}, diverged at step {diverged[arch]}"
                 if arch in diverged else None)
        save(f"{arch}_heatmap.png", heatmap(h, "error_norm", title=title),
             f"{arch}: error-signal heatmap",
             "On its own colour scale (compare architectures on the grid above).")
    _write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    written.append("summary.json")
    _write_text(out / "report.html", html_report(summary, figures))
    written.append("report.html")
    return written


def _write_text(path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- HTML ---------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;font-size:14px;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child,
td:last-child,th:last-child{text-align:left}th{background:#f2f2f2}img{max-width:100%;
border:1px solid #eee;margin:.5em 0}code{background:#f4f4f4;padding:1px 4px}
.bad td{color:#a00}.note{color:#555;font-size:14px}"""

_HEAD = ("arch", "params", "train loss", "train acc", "held-out acc", "error ratio at init",
         "error ratio at end", "verdict")


def table_rows(summary: dict) -> list[tuple[str, ...]]:
    """The summary table as text cells, one tuple per architecture (shared by text and HTML)."""
    rows = []
    for a in summary["archs"]:
        rows.append((a["arch"], _fmt(a["params"], ","), _fmt(a["final_train_loss"], ".3f"),
                     _fmt(a["final_train_accuracy"], ".1%"), _fmt(a["held_out_accuracy"], ".1%"),
                     _fmt(a["error_ratio_init"], ".1e"), _fmt(a["error_ratio_end"], ".1e"),
                     a["verdict"]))
    return rows


def html_report(summary: dict, figures: list[tuple[str, str, bytes]]) -> str:
    """A standalone HTML page: the configuration, the summary table with verdicts, and the
    `figures` (title, caption, png bytes) inlined as base64."""
    e = html.escape
    cfg = summary["config"]
    body = "".join(
        f"<tr{' class=bad' if a['status'] != 'ok' else ''}>"
        + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>"
        for a, cells in zip(summary["archs"], table_rows(summary)))
    table = ("<table><tr>" + "".join(f"<th>{h}</th>" for h in _HEAD) + "</tr>" + body
             + "</table>")
    figs = "".join(
        f"<h3>{e(title)}</h3><p class=note>{e(caption)}</p>"
        f'<img alt="{e(title)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for title, caption, png in figures)
    conf = ", ".join(f"{k}={v}" for k, v in cfg.items())
    d = summary["definitions"]
    run = summary.get("run", {})
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>gradflow — depth {cfg['depth']} {e(cfg['model'])}: {e(cfg['archs'])}</title>
<style>{_CSS}</style></head><body>
<h1>Gradient flow through a depth-{cfg['depth']} {e(cfg['model'].upper())}</h1>
<p>Command: <code>{e(run.get('command', ''))}</code><br>Settings: {e(conf)}<br>
Data: {e(summary['data']['description'])}<br>
Started {e(run.get('started', ''))} on {e(run.get('device', ''))}; training and evaluation took
{run.get('training_s', 0):.0f} s.</p>
<h2>Summary</h2>{table}
<p class=note><b>Error ratio</b>: {e(d['error_ratio'])}. 1e-06 means the input-side layer receives a
millionth of the error signal the top layer gets (vanishing); far above 1 it grows toward the input
(exploding). <b>Train loss/acc</b>: {e(d['final_train'])}. <b>Held-out acc</b>: {e(d['held_out'])}.
</p>
<h2>Diagnosis</h2>{diagnosis_html(summary)}
<h2>Figures</h2>{figs}
</body></html>
"""


def diagnosis_lines(summary: dict) -> list[str]:
    """Per architecture: measured vs mean-field slope at init, and the findings at the end."""
    out = []
    for a in summary["archs"]:
        if a["status"] == "failed":
            continue
        theory = _fmt(a.get("error_slope_theory"), "+.3f")
        out.append(f"{a['arch']}: error signal {_fmt(a.get('error_slope_init'), '+.3f')} decades "
                   f"per layer toward the input at init (mean-field theory: {theory})")
        out += [f"  - {f}" for f in a.get("diagnosis_end", [])]
    return out


def diagnosis_html(summary: dict) -> str:
    e = html.escape
    items = []
    for a in summary["archs"]:
        if a["status"] == "failed":
            continue
        finds = "".join(f"<li>{e(f)}</li>" for f in a.get("diagnosis_end", []))
        items.append(
            f"<li><b>{e(a['arch'])}</b>: error signal {_fmt(a.get('error_slope_init'), '+.3f')} "
            f"decades per layer toward the input at init (mean-field theory: "
            f"{_fmt(a.get('error_slope_theory'), '+.3f')})<ul>{finds}</ul></li>")
    d = summary["definitions"]
    return (f"<ul>{''.join(items)}</ul><p class=note>{e(d.get('error_slope', ''))}. "
            f"{e(d.get('diagnosis', ''))}.</p>")


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)
