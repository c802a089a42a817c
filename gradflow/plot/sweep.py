"""Depth sweep figure: error-signal attenuation against depth per architecture (median and
min-max over seeds, mean-field theory dashed), and with training the final loss against depth."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, NullLocator

from ..analysis.theory import theory_attenuation
from ._style import positive_finite


def depth_sweep(sweep, *, title: str | None = None):
    """Draws a depth sweep: the error-signal attenuation at init against depth, per architecture.

    The attenuation error_norm[layer 1] / error_norm[output layer] is on a log axis, one colour
    per architecture (line: median over seeds, band: min to max), the mean-field prediction
    dashed where it applies (dotted beyond the depth where it is expected to hold at finite
    width, THEORY_HOLDS_TO_DEPTH). With training steps, a second panel shows the final training loss
    against depth, diverged or failed cells marked with a cross.

    Args:
      sweep: a `gradflow.experiments.sweep_records.Sweep`, or its `to_dict()` (e.g. a loaded
        sweep.json).
      title: the figure title; default one naming the model, width, init, activation and
        dataset.

    Returns:
      The matplotlib Figure.

    Example:
      >>> sweep = json.loads(Path("runs/<date>_<time>/sweep.json").read_text())  # doctest: +SKIP
      >>> gf.plot.depth_sweep(sweep).savefig("sweep.png")  # doctest: +SKIP
    """
    d = sweep.to_dict() if hasattr(sweep, "to_dict") else sweep
    depths = np.asarray(d["depths"], dtype=np.float64)
    archs, cells, steps = d["archs"], d["cells"], d.get("steps") or 0
    cfg = d.get("config", {})
    n_panels = 2 if steps else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(8.6 if n_panels == 1 else 14.5, 5.6),
                             squeeze=False, layout="constrained")
    ax = axes[0][0]
    lo_hi = []
    for i, arch in enumerate(archs):
        color = f"C{i}"
        med, lo, hi, missing = _stats(cells, arch, depths, "attenuation")
        label = arch + (f" ({missing} of {len(d['seeds']) * len(depths)} not measurable)"
                        if missing else "")
        ax.fill_between(depths, lo, hi, color=color, alpha=0.18, lw=0)
        ax.plot(depths, med, color=color, marker="o", ms=4.5, lw=1.8, label=label)
        lo_hi += [lo, hi]
        theory = d.get("theory", {}).get(arch) or []
        lo_hi.append(np.array([np.nan if t is None else t for t in theory], dtype=np.float64))
        curve = _theory_curve(d, arch)
        if curve is not None:
            _theory_line(ax, arch, *curve, color)
    ax.axhline(1.0, color="0.4", ls=":", lw=1)
    _depth_axis(ax, depths)
    ax.set_yscale("log")
    vals = positive_finite(np.concatenate(lo_hi)) if lo_hi else np.array([np.nan])
    if np.isfinite(vals).any():  # room for the band and the 1-line, theory may go further
        lo_v, hi_v = np.nanmin(vals), np.nanmax(vals)
        ax.set_ylim(min(lo_v, 1.0) / 8, max(hi_v, 1.0) * 8)
    ax.set_ylabel("attenuation at init: ‖∂L/∂z‖ of layer 1 / of the output layer\n"
                  "(log; < 1: vanishes toward the input, > 1: explodes)")
    ax.set_title("error signal reaching layer 1, relative to the output layer", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best", ncol=1 if len(archs) <= 4 else 2,
              title=f"median over {len(d['seeds'])} seeds; band: min–max", title_fontsize=8)
    if steps:
        _loss_panel(axes[0][1], d, depths, archs, cells)
    what = "at init" if not steps else f"at init; trained {steps} steps"
    batch = f", probe batch {d['probe_batch']}" if d.get("probe_batch") else ""
    fig.suptitle(title or (
        f"Depth sweep — {cfg.get('model', '').upper()} width {cfg.get('width', '?')}, "
        f"{cfg.get('init', '?')} init, {cfg.get('activation', '?')}, {cfg.get('dataset', '')} "
        f"({what}{batch})"), fontsize=11)
    return fig


def _stats(cells, arch, depths, key):
    med, lo, hi, missing = [], [], [], 0
    for depth in depths:
        v = [c[key] for c in cells if c["arch"] == arch and c["depth"] == depth]
        ok = [x for x in v if x is not None and math.isfinite(x) and (key != "attenuation"
                                                                       or x > 0)]
        missing += len(v) - len(ok)
        med.append(np.median(ok) if ok else np.nan)
        lo.append(min(ok) if ok else np.nan)
        hi.append(max(ok) if ok else np.nan)
    return np.asarray(med), np.asarray(lo), np.asarray(hi), missing


# Depth up to which the measured attenuation of unnormalized residual nets stays within 1.5x of
# the (infinite-width) mean-field prediction at widths 64-1024; deeper, the measurement grows
# faster and the gap closes only slowly with width (docs/theory.md, "Finite width and depth").
THEORY_HOLDS_TO_DEPTH = {"residual": 32}


def _theory_line(ax, arch, depths, ys, color):
    """The prediction dashed where it is expected to hold, dotted and faint beyond."""
    limit = THEORY_HOLDS_TO_DEPTH.get(arch)
    label = f"{arch}: mean-field theory (infinite width)"
    if limit is None or depths.max() <= limit:
        ax.plot(depths, ys, color=color, ls="--", lw=1.3, alpha=0.9, label=label)
        return
    near = depths <= limit
    if near.any():
        ax.plot(depths[near], ys[near], color=color, ls="--", lw=1.3, alpha=0.9, label=label)
    far = depths >= (depths[near].max() if near.any() else depths.min())
    ax.plot(depths[far], ys[far], color=color, ls=":", lw=1.3, alpha=0.6,
            label=f"{arch}: theory beyond depth {limit}, where finite width makes the measured "
                  f"attenuation larger" if near.any() else label)


def _theory_curve(d, arch):
    """(depths, predicted attenuation) on a dense grid between the swept depths, at the depths
    where the theory applies (a residual net's even depths: no gaps in the line); None where it
    applies nowhere."""
    cfg = d.get("config", {})
    if not any(v is not None for v in d.get("theory", {}).get(arch, [])):
        return None
    lo, hi = min(d["depths"]), max(d["depths"])
    grid = np.unique(np.round(np.geomspace(lo, hi, 80)).astype(int))
    ys = [theory_attenuation(arch, int(g), model=cfg.get("model", "cnn"),
                             init=cfg.get("init", "lecun"),
                             activation=cfg.get("activation", "relu"),
                             image_shape=cfg.get("image_shape")) for g in grid]
    ys = np.array([np.nan if y is None else y for y in ys], dtype=np.float64)
    keep = np.isfinite(ys)
    return (grid[keep], ys[keep]) if keep.any() else None


def _depth_axis(ax, depths):
    if depths.max() / depths.min() >= 4:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("depth (weight layers on the longest path; log₂ scale)")
    else:
        ax.set_xlabel("depth (weight layers on the longest path)")
    ax.xaxis.set_major_locator(FixedLocator(depths))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(int(v)) for v in depths])
    pad = (depths.max() / depths.min()) ** 0.04 if depths.max() > depths.min() else 1.1
    if ax.get_xscale() == "log":
        ax.set_xlim(depths.min() / pad, depths.max() * pad)


def _loss_panel(ax, d, depths, archs, cells):
    top, bottom = 0.0, math.inf
    for i, arch in enumerate(archs):
        color = f"C{i}"
        med, lo, hi, _ = _stats(cells, arch, depths, "final_train_loss")
        ax.fill_between(depths, lo, hi, color=color, alpha=0.18, lw=0)
        ax.plot(depths, med, color=color, marker="o", ms=4.5, lw=1.8, label=arch)
        if np.isfinite(hi).any():
            top = max(top, float(np.nanmax(hi)))
            bottom = min(bottom, float(np.nanmin(lo)))
    chance = math.log(d["num_classes"]) if d.get("num_classes") else None
    if chance:
        ax.axhline(chance, color="0.45", ls="--", lw=1, label=f"chance (ln {d['num_classes']})")
        top = min(max(top, chance), 3 * chance)  # a blow-up would flatten the rest
    ymax = top + 0.08 * max(top - min(bottom, top), 0.1 * top) if top > 0 else 1.0
    # zoom on the losses, but from 0 once they span much of the range anyway
    ymin = 0.0 if not math.isfinite(bottom) or bottom < 0.4 * top else \
        max(0.0, bottom - 0.15 * (top - bottom) - 0.02 * top)
    marked = False
    for i, arch in enumerate(archs):
        bad = [c["depth"] for c in cells if c["arch"] == arch and c["status"] in
               ("diverged", "failed")]
        if bad:
            ax.plot(bad, [0.97 - 0.03 * i] * len(bad), "x", color=f"C{i}", ms=7, mew=2,
                    clip_on=False, transform=ax.get_xaxis_transform())  # at the top edge
            marked = True
    if marked:
        ax.plot([], [], "x", color="0.3", ms=7, mew=2, label="diverged or failed (one per seed)")
        ymax += 0.1 * (ymax - ymin)  # a free band for the marks above the lines
    _depth_axis(ax, depths)
    ax.set_ylim(ymin, ymax)
    ax.set_ylabel("final training loss (last 10% of the records)")
    ax.set_title(f"training loss after {d['steps']} steps (median, band: min–max)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
