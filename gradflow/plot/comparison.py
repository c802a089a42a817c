"""Figures that compare architectures: layers × steps maps on one shared colour scale, per-layer
profiles at init and at the end, and loss / accuracy curves.

Inputs are dicts arch -> History; outputs are matplotlib Figures.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from ._style import label, positive_finite

CHANCE_COLOR = "0.45"


def shared_range(histories, metric: str = "error_norm") -> tuple[float, float]:
    """The range of the positive finite values of `metric` over several histories.

    Args:
      histories: an iterable of Histories.
      metric: a per-layer metric name; default "error_norm".

    Returns:
      `(min, max)`; (1e-8, 1.0) when there is no such value, and max = 10 * min when all are
      equal.
    """
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
    """Draws every architecture's layers x steps map side by side on one shared log colour scale.

    One colorbar serves all panels, so a weaker signal is a darker colour in every panel. Exact
    zeros are black; non-finite values, and steps never reached, light grey.

    Args:
      runs: arch name -> History.
      metric: a per-layer metric name; default "error_norm".
      diverged: arch name -> the step where its loss became non-finite; its last record then
        spans up to that step and its panel says so.
      steps: the number of training steps, which fixes the common step axis to 0..steps-1;
        default up to the last recorded step of any run.

    Returns:
      The matplotlib Figure.

    Example:
      >>> fig = gf.plot.comparison_grid({"plain": h1, "residual_bn": h2})  # doctest: +SKIP
      >>> fig.savefig("grid.png")  # doctest: +SKIP
    """
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
    """Per-layer profiles of several architectures at init and at the end, one line per arch.

    Rows are metrics, columns the first record (at init) and the last (end of training), on a
    log y-axis with one range per row. Layers whose value is exactly zero are marked with a
    triangle on the bottom edge.

    Args:
      runs: arch name -> History.
      metrics: the per-layer metrics, one row each; default ("error_norm", "grad_norm").
      diverged: arch name -> the step where its loss became non-finite; noted in its label in
        the end column, and its line there dashed (its last finite record, not the end).

    Returns:
      The matplotlib Figure.

    Example:
      >>> fig = gf.plot.profiles({"plain": h1, "residual_bn": h2})  # doctest: +SKIP
    """
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
    """Training loss and accuracy curves per architecture, side by side.

    Each recorded batch is drawn thin, a trailing moving average thick.

    Args:
      runs: arch name -> History (with scalars "loss" and "accuracy").
      num_classes: if given, chance level (loss ln(num_classes), accuracy 1/num_classes)
        dashed.
      held_out: arch name -> held-out accuracy, drawn as a star at the arch's last step.
      steps: the number of training steps, which fixes the step axis to 0..steps-1.

    Returns:
      The matplotlib Figure.

    Example:
      >>> fig = gf.plot.curves({"plain": h1, "residual_bn": h2}, num_classes=10)  # doctest: +SKIP
    """
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
