"""What both examples share: their command line (`--quick`, `--out`, `--steps`), the run folder,
and the report, the same kind the CLI writes: `history.npz`, the error-signal heatmap, per-layer
profiles at the start and at the end, the loss curve, `summary.json` and a self-contained
`report.html` with the figures embedded. Not an example itself.
"""
from __future__ import annotations

import argparse
import datetime
import html
import itertools
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the examples run headless; gradflow itself never picks a backend
import jax
import matplotlib.pyplot as plt
import numpy as np

import gradflow as gf
from gradflow._io import write_json
from gradflow.report.page import document, figure_html, table_html, write_text


def parse_args(doc: str, name: str) -> argparse.Namespace:
    """`--quick`, `--out DIR` (default a new `runs/<date>_<time>_<name>`) and `--steps N`."""
    p = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    p.add_argument("--quick", action="store_true", help="a few steps on tiny sizes (for tests)")
    p.add_argument("--out", type=Path, help=f"output folder (default: runs/<date>_<time>_{name})")
    p.add_argument("--steps", type=int, help="training steps (default: 6 quick, else the "
                   "example's own)")
    args = p.parse_args()
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        args.out = Path("runs") / f"{stamp}_{name}"
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def train_loop(model, optimizer, batches, steps: int, every: int, measured_step, step,
               meta: dict):
    """The user's loop both examples run: `measured_step` (it returns a gf.Snapshot) at every
    `every`-th step and the last, the plain `step` (it returns the loss) otherwise.

    Returns:
      (the gf.History of the measured steps, the loss of every step as float64 numpy).
    """
    history, losses = gf.History(meta=meta), []
    record = set(gf.recorded_steps(steps, every))  # every k-th and the last
    for i, (x, y) in enumerate(itertools.islice(batches, steps)):
        if i in record:
            snap = measured_step(model, optimizer, x, y)
            history.append(i, snap)
            losses.append(snap["loss"])
        else:
            losses.append(step(model, optimizer, x, y))
    return history, np.asarray(jax.device_get(losses), np.float64)


def _loss_figure(losses, history, held_out_loss):
    fig, ax = plt.subplots(figsize=(8, 4))
    steps = np.arange(len(losses))
    ax.plot(steps, losses, lw=0.8, alpha=0.4, label="every step")
    w = max(1, len(losses) // 20)
    smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
    ax.plot(steps[w - 1:], smooth, lw=2, label=f"moving average ({w} steps)")
    ax.plot(history.steps, history["loss"], "o", ms=4, label="measured steps")
    if held_out_loss is not None:
        ax.axhline(held_out_loss, color="k", ls="--", lw=1, label="held-out loss at the end")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def write_report(out: Path, title: str, intro: str, history, losses, summary: dict,
                 result: str, held_out_loss: float | None = None, text_block: str = "") -> dict:
    """Writes the run's files into `out` and prints a few lines; returns summary.json's content.

    Args:
      out: the run folder.
      title, intro: the page's heading and first paragraph.
      history: the gf.History of the measured steps.
      losses: the training loss of every step.
      summary: the example's numbers (steps, settings, held-out result, ...).
      result: the held-out result in words, printed at the end.
      held_out_loss: drawn as a dashed line on the loss curve, or None.
      text_block: preformatted text shown on the page (e.g. a generated sample).
    """
    history.save(out / "history.npz")
    findings = [str(f) for f in gf.diagnose(history)]
    summary = {**summary, "final_loss": float(losses[-1]), "records": len(history),
               "rows": len(history.layers), "diagnosis": findings}
    last = history.steps[-1]
    figures = [
        ("heatmap_error_norm.png", gf.plot.heatmap(history, "error_norm"),
         "Error signal ‖∂L/∂z‖ in every layer", "Layers (input at the bottom) × measured steps, "
         "log colour scale."),
        ("profile_error_norm.png", gf.plot.profile(history, "error_norm"),
         "Error signal by layer, start and end", f"Measured steps 0 and {last}."),
        ("profile_update_ratio.png", gf.plot.profile(history, "update_ratio"),
         "Update ratio ‖ΔW‖ / ‖W‖ by layer, start and end", "From gf.update_ratio."),
        ("loss.png", _loss_figure(np.asarray(losses), history, held_out_loss),
         "Training loss", "Every step, its moving average, and the measured steps."),
    ]
    parts = []
    for name, fig, fig_title, caption in figures:
        png = gf.plot.png_bytes(fig)
        (out / name).write_bytes(png)
        parts.append(figure_html(fig_title, caption, png))
        plt.close(fig)
    write_json(out / "summary.json", summary)
    numbers = [(k, v) for k, v in summary.items() if isinstance(v, (int, float, str))]
    e = html.escape
    body = (f"<h1>{e(title)}</h1><p>{e(intro)}</p>"
            f"<p>Command: <code>{e(' '.join(sys.argv))}</code></p>"
            + table_html(("", "value"), [(k, f"{v:.4g}" if isinstance(v, float) else v)
                                         for k, v in numbers])
            + "<h2>Diagnosis</h2><ul>" + "".join(f"<li>{e(f)}</li>" for f in findings) + "</ul>"
            + (f"<pre>{e(text_block)}</pre>" if text_block else "") + "".join(parts))
    write_text(out / "report.html", document(title, body))
    print(f"{title}: {summary['steps']} steps in {summary['seconds']:.1f} s, final loss "
          f"{summary['final_loss']:.3f}, {result}")
    print(f"{len(history.layers)} rows ({history.layers[0]} ... {history.layers[-1]}), "
          f"{len(history)} measured steps")
    print(*findings, sep="\n")
    print(f"report: {out / 'report.html'}")
    return summary
