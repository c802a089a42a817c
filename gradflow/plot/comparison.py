"""Figures that compare architectures: layers × steps maps on one shared colour scale, per-layer
profiles at init and at the end, and loss / accuracy curves.

Inputs are dicts arch -> History; outputs are matplotlib Figures.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from ._style import NO_LAYER, NONFINITE, label, positive_finite
from .heatmap import _edges

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
    zeros are black; non-finite values, and steps never reached after a divergence, light grey;
    rows a shorter network does not have are hatched ("no such layer"). A legend under the
    panels names each of these that appears.

    Args:
      runs: arch name -> History.
      metric: a per-layer metric name; default "error_norm".
      diverged: arch name -> the step where its loss became non-finite; its last record then
        spans up to that step, the steps after it are grey and its panel says so.
      steps: the number of training steps, which fixes the common step axis to 0..steps-1;
        default up to the last recorded step of any run (one record: one column, its tick
        labelled with the step).

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
    cmap = plt.get_cmap("viridis").with_extremes(under="black", bad=NONFINITE)
    fig, axes = plt.subplots(1, len(archs), figsize=(3.0 * len(archs) + 1.8, 5.3), squeeze=False,
                             sharey=True, layout="constrained")
    first = min(int(h.steps[0]) for h in runs.values())
    last = steps - 1 if steps else max(int(h.steps[-1]) for h in runs.values())
    x0, x1 = (0, last) if last > first else (first - 0.5, first + 0.5)
    n_max = max(len(h.layers) for h in runs.values())
    seen = {"zero": False, "nonfinite": False, "no_layer": False}
    mesh = None
    for ax, arch in zip(axes[0], archs):
        h = runs[arch]
        raw = np.asarray(h[metric], dtype=np.float64)
        n = raw.shape[1]
        seen["zero"] |= bool((raw == 0).any())
        seen["nonfinite"] |= bool(not np.isfinite(raw).all()) or arch in diverged
        x_edges = _edges(h.steps)
        if arch in diverged:
            x_edges[-1] = max(diverged[arch], x_edges[-1])
        mesh = ax.pcolormesh(x_edges, np.arange(n + 1) + 0.5, _cells(raw, lo).T,
                             norm=LogNorm(lo, hi), cmap=cmap, shading="flat")
        if arch in diverged and x_edges[-1] < x1:  # steps never reached
            ax.add_patch(Rectangle((x_edges[-1], 0.5), x1 - x_edges[-1], n, facecolor=NONFINITE,
                                   edgecolor="none"))
        if n < n_max:  # a shorter network: the rows above its output are no layers at all
            ax.add_patch(Rectangle((x0, n + 0.5), x1 - x0, n_max - n, lw=0, **NO_LAYER))
            seen["no_layer"] = True
        note = f"diverged at step {diverged[arch]}" if arch in diverged else ""
        ax.set_title(arch + (f"\n{note}" if note else ""), fontsize=10)
        ax.set_xlabel("training step")
        ax.set_xlim(x0, x1)
        if last <= first:
            ax.set_xticks([first], [str(first)])
        ax.set_ylim(0.5, n_max + 0.5)
        if note and x_edges[-1] < 0.6 * last:
            ax.text(0.55, 0.5 * n / n_max, note.replace(" at", "\nat"), transform=ax.transAxes,
                    ha="center", va="center", fontsize=10, color="0.3")
    axes[0][0].set_ylabel("layer (1 = input side)")
    fig.colorbar(mesh, ax=axes[0].tolist(), shrink=0.92, extend="min" if seen["zero"] else "neither",
                 label=label(metric) + ", log scale shared by all panels")
    keys = [Patch(facecolor="black", label="exactly 0"),
            Patch(facecolor=NONFINITE, edgecolor="0.5", label="non-finite or after divergence"),
            Patch(label="no such layer (shorter network)", **NO_LAYER)]
    handles = [k for k, on in zip(keys, seen.values()) if on]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
                   frameon=False)
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
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Per-layer profiles" + (" (▼ on the bottom edge: exactly zero)" if any_zero
                                         else ""), fontsize=11)
    return fig


def curves(runs: dict, num_classes: int | None = None, held_out: dict | None = None,
           steps: int | None = None, *, class_shares=None, diverged: dict | None = None):
    """Training loss and accuracy curves per architecture, side by side.

    Each recorded batch is drawn thin, a trailing moving average thick (with dots where a run
    has few records). A run that diverged is named so in the legend and ends in a cross at its
    divergence step; losses above the plotted range sit as triangles on the top edge. The
    legend is under the panels, off the data.

    Args:
      runs: arch name -> History (with scalars "loss" and "accuracy").
      num_classes: if given (and `class_shares` not), chance level dashed: loss ln(num_classes),
        accuracy 1/num_classes, the majority-class rate of balanced classes.
      held_out: arch name -> held-out accuracy, drawn as a star at the arch's last step.
      steps: the number of training steps, which fixes the step axis to 0..steps-1.
      class_shares: the fraction of each class in the evaluated labels; the dashed lines are
        then the majority-class rate (accuracy of always predicting it) and the loss of
        predicting the shares (their entropy).
      diverged: arch name -> the step where its loss became non-finite; default each
        History's `meta["diverged_at_step"]`.

    Returns:
      The matplotlib Figure.

    Example:
      >>> fig = gf.plot.curves({"plain": h1, "residual_bn": h2}, num_classes=10)  # doctest: +SKIP
      >>> fig = gf.plot.curves(runs, class_shares=[0.616, 0.384])  # doctest: +SKIP
    """
    held_out = held_out or {}
    diverged = {a: h.meta["diverged_at_step"] for a, h in runs.items()
                if h.meta.get("diverged_at_step") is not None} | (diverged or {})
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    top, handles, high = 0.0, [], []
    for i, (arch, h) in enumerate(runs.items()):
        color = f"C{i}"
        name = arch + (f" (diverged at step {diverged[arch]})" if arch in diverged else "")
        for ax, key in ((ax_l, "loss"), (ax_a, "accuracy")):
            y = np.asarray(h[key], dtype=np.float64)
            y = np.where(np.isfinite(y), y, np.nan)
            few = np.isfinite(y).sum() <= 3  # a line of one point is invisible: dots
            ax.plot(h.steps, y, color=color, alpha=0.25, lw=0.8)
            line, = ax.plot(h.steps, _smooth(y), color=color, lw=2, label=name,
                            marker="o" if few else None, ms=4)
            if key == "loss" and np.isfinite(y).any():
                top = max(top, float(np.nanmax(_smooth(y))))
                high.append((h.steps, y, color))
            if arch in diverged:
                ax.plot([diverged[arch]], [0.97], "x", color=color, ms=8, mew=2, clip_on=False,
                        transform=ax.get_xaxis_transform())
        handles.append(line)
        if held_out.get(arch) is not None:
            ax_a.plot([h.steps[-1]], [held_out[arch]], marker="*", ms=13, color=color,
                      markeredgecolor="k", ls="none")
    if class_shares is not None or num_classes:
        shares = np.asarray(class_shares if class_shares is not None
                            else np.full(num_classes, 1 / num_classes), dtype=np.float64)
        shares = shares[shares > 0] / shares.sum()
        base_loss, majority = float(-(shares * np.log(shares)).sum()), float(shares.max())
        balanced = class_shares is None
        handles.append(ax_l.axhline(base_loss, color=CHANCE_COLOR, ls="--", lw=1, label=(
            f"chance loss (ln {num_classes})" if balanced
            else f"loss of predicting the class shares ({base_loss:.3f})")))
        handles.append(ax_a.axhline(majority, color=CHANCE_COLOR, ls=":", lw=1.3, label=(
            f"chance (1/{num_classes} = {majority:.1%}: majority class if balanced)" if balanced
            else f"majority class ({majority:.1%})")))
        top = min(max(top, base_loss), 3 * base_loss)  # a blow-up would flatten the rest
    if diverged:
        handles.append(Line2D([], [], marker="x", color="0.3", ms=8, mew=2, ls="none",
                              label="diverged here (no later records)"))
    if held_out:
        handles.append(Line2D([], [], marker="*", ms=10, color="w", markeredgecolor="k",
                              ls="none", label="held-out accuracy"))
    ymax = 1.08 * top if top > 0 else 1.0
    for x, y, color in high:  # values above the range: triangles on the top edge
        above = y > ymax
        if above.any():  # (an empty unclipped line would stretch the layout to the origin)
            ax_l.plot(np.asarray(x)[above], np.full(above.sum(), ymax), "^", color=color, ms=6,
                      clip_on=False)
    if any((y > ymax).any() for _, y, _ in high):
        handles.append(Line2D([], [], marker="^", color="0.3", ls="none",
                              label="loss above the plotted range"))
    ax_l.set_title("training loss (recorded batches; thick: moving average)", fontsize=10)
    ax_a.set_title("training accuracy (★: held-out accuracy at the end)", fontsize=10)
    ax_l.set_ylim(0, ymax)
    ax_a.set_ylim(0, 1)
    for ax in (ax_l, ax_a):
        ax.set_xlabel("training step")
        if steps:
            ax.set_xlim(0, steps - 1)
        ax.grid(True, alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4),
               fontsize=8, frameon=False)
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
