"""Figures of the quantities beyond norms: gradient noise and curvature over training (with the
edge of stability), and per-layer gradient histograms (layers × magnitude bins at one record,
and the median magnitude per layer over the measured steps).

    fig = gf.plot.training_quantities({"plain": h1, "residual_bn": h2}, lr=0.05)
    fig = gf.plot.grad_histogram(hist)          # the last record that measured the histogram
    fig = gf.plot.grad_histograms(hist)         # that, and the median |g| per layer over steps

Inputs are Histories from `gf.train(..., noise_every=k, curvature_every=k)` (or Snapshots from
`gf.probe(..., histograms=True)` for one histogram); records where a quantity was not taken
hold NaN (scalars) or -1 (histogram counts) and are never drawn.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..analysis.diagnose import edge_setting, stability_edge
from ..quantities.histograms import HIST_BINS, HISTOGRAM_METRICS, LOG10_LOW, bin_labels
from ._style import layer_ticks, positive_finite
from .heatmap import _edges

NOISE = ("norm_test", "inner_test", "ortho_test", "mean_gsnr")
CURVATURE = ("hess_max_ev", "hess_trace")
TITLES = {
    "norm_test": "norm test (Byrd et al. 2012)",
    "inner_test": "inner-product test (Bollapragada et al. 2018)",
    "ortho_test": "orthogonality test (Bollapragada et al. 2018)",
    "mean_gsnr": "mean gradient signal-to-noise ratio",
    "hess_max_ev": "largest Hessian eigenvalue (sharpness)",
    "hess_trace": "Hessian trace (± its standard error)",
}
WHAT = {"example_grad_hist": ("per-example gradient elements", "|per-example gradient element|"),
        "grad_hist": ("gradient elements (batch gradient)", "|gradient element|")}


def has_quantities(history) -> bool:
    """Whether a History holds noise or curvature quantities, or gradient histograms.

    Args:
      history: a History (or Snapshot).

    Returns:
      True if any of `NOISE`, `CURVATURE` or `HISTOGRAM_METRICS` is one of its keys.
    """
    return any(k in history for k in NOISE + CURVATURE + HISTOGRAM_METRICS)


def _runs(runs) -> dict:
    if isinstance(runs, dict):
        return runs
    return {runs.meta.get("arch", "run"): runs}


def _edge(h, arch, lr, momentum):
    """(edge, lr, β) of one run, or None when no edge applies."""
    given = lr.get(arch) if isinstance(lr, dict) else lr
    setting = edge_setting(h.meta, given, momentum)
    return None if setting is None else (stability_edge(*setting), *setting)


def _edge_text(lr: float, momentum: float) -> str:
    return "2/lr" if momentum == 0 else f"(2 + 2·{momentum:g})/lr"


def training_quantities(runs, *, lr=None, momentum: float | None = None):
    """Draws gradient noise and curvature over training: one panel per quantity, each run a line.

    Panels, for the quantities any run holds: `norm_test`, `inner_test`, `ortho_test` and
    `mean_gsnr` (log y), `hess_max_ev` (log y when every value is positive) with the edge of
    stability (2 / lr; (2 + 2β) / lr with heavy-ball momentum β) drawn and labelled where the
    learning rate is known, and `hess_trace` (with ± its standard error where
    `hess_trace_se` is there). Only finite points are drawn (positive ones on log axes):
    records where a quantity was not taken hold NaN.

    Args:
      runs: arch name -> History, or one History.
      lr: the learning rate: one number, arch -> number, or None (each History's
        `meta["lr"]`, as `python -m gradflow.run` records it).
      momentum: the heavy-ball momentum β; default from each History's meta
        (`gradflow.analysis.diagnose.edge_setting`: "optimizer" "momentum" is 0.9, "sgd" 0;
        "adam" draws no edge, which concerns its preconditioned Hessian), else 0.

    Returns:
      The matplotlib Figure.

    Raises:
      ValueError: if no run holds any of the quantities.

    Example:
      >>> fig = gf.plot.training_quantities({"plain": h1, "bn": h2}, lr=0.05)  # doctest: +SKIP
    """
    runs = _runs(runs)
    names = [k for k in NOISE + CURVATURE if any(k in h for h in runs.values())]
    if not names:
        raise ValueError("no History holds noise or curvature quantities (gf.train(..., "
                         "noise_every=k) or curvature_every=k)")
    cols = 2 if len(names) > 1 else 1
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.3 * rows + 0.6), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), names):
        _panel(ax, name, runs, lr, momentum)
    handles = [Line2D([], [], color=f"C{i}", marker=".", label=arch)
               for i, arch in enumerate(runs)]
    height = fig.get_figheight()
    top = 1 - 0.6 / height  # room for the title and, under it, the legend of the runs
    fig.suptitle("Gradient noise and curvature over training", y=1 - 0.05 / height, fontsize=11)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.25 / height),
               ncol=min(len(handles), 6), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def _panel(ax, name, runs, lr, momentum):
    values = {arch: np.asarray(h[name], dtype=np.float64) for arch, h in runs.items() if name in h}
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
    log = name in NOISE or (name == "hess_max_ev" and finite.size and bool(np.all(finite > 0)))
    for i, (arch, h) in enumerate(runs.items()):
        if arch not in values:
            continue
        y = positive_finite(values[arch]) if log else values[arch]
        keep = np.isfinite(y)
        steps = np.asarray(h.steps)[keep]
        ax.plot(steps, y[keep], color=f"C{i}", marker=".", lw=1.3, ms=5)
        se = f"{name}_se"
        if name == "hess_trace" and se in h:
            err = np.asarray(h[se], dtype=np.float64)[keep]
            ok = np.isfinite(err)
            ax.fill_between(steps[ok], (y[keep] - err)[ok], (y[keep] + err)[ok], color=f"C{i}",
                            alpha=0.2, lw=0)
    if name == "hess_max_ev":
        _edge_lines(ax, runs, lr, momentum)
    if not finite.size:
        ax.text(0.5, 0.5, "no finite value", transform=ax.transAxes, ha="center", va="center",
                color="0.4")
    if log:
        ax.set_yscale("log")
    ax.set_title(TITLES[name], fontsize=9)
    ax.set_ylabel(name + (" (log)" if log else ""))
    ax.set_xlabel("training step")
    ax.grid(True, which="both", alpha=0.3)


def _edge_lines(ax, runs, lr, momentum):
    """The edge of stability: one black line when every run shares it, else one per run in
    its colour; a note when no run's learning rate is known."""
    edges = {arch: _edge(h, arch, lr, momentum) for arch, h in runs.items()}
    known = {a: e for a, e in edges.items() if e is not None}
    if not known:
        ax.text(0.02, 0.96, "no edge-of-stability line: learning rate unknown (or adam)",
                transform=ax.transAxes, fontsize=7, va="top", color="0.35")
        return
    shared = len({e[0] for e in known.values()}) == 1
    for i, (arch, e) in enumerate(edges.items()):
        if e is None:
            continue
        edge, rate, beta = e
        text = f"edge of stability {_edge_text(rate, beta)} = {edge:.3g} (lr {rate:g})"
        ax.axhline(edge, color="k" if shared else f"C{i}", ls="--", lw=1.2,
                   label=text if shared else f"{arch}: {text}")
        if shared:
            break
    ax.legend(fontsize=7, loc="best")


# -- histograms --------------------------------------------------------------------------------

def _histogram_metric(records, metric):
    if metric is None:
        metric = next((m for m in HISTOGRAM_METRICS if m in records), None)
        if metric is None:
            raise ValueError("no gradient histogram here: gf.train(..., noise_every=k) records "
                             "example_grad_hist, gf.probe(..., histograms=True) grad_hist")
    counts = np.asarray(records[metric])
    if counts.shape[-1] != HIST_BINS:
        raise ValueError(f"{metric!r} is not a per-layer histogram ({HIST_BINS} bins per layer)")
    return metric, counts


def measured_records(counts) -> np.ndarray:
    """The records of a History's histogram that were measured (no -1 counts).

    Args:
      counts: an (n_records, n_layers, HIST_BINS) array of counts, -1 where not taken.

    Returns:
      The indices of the measured records.
    """
    counts = np.asarray(counts)
    return np.flatnonzero(np.all(counts >= 0, axis=(1, 2)))


def _measured_or_raise(counts, metric) -> np.ndarray:
    """`measured_records`, or ValueError where no record measured `metric`."""
    measured = measured_records(counts)
    if not measured.size:
        raise ValueError(f"no record measured {metric!r}")
    return measured


def median_bins(counts) -> np.ndarray:
    """The bin holding the median element of each histogram.

    Args:
      counts: (..., HIST_BINS) non-negative counts.

    Returns:
      (...) bin indices; -1 where a histogram is empty.

    Example:
      >>> median_bins(np.array([[0, 3, 1, 1], [0, 1, 1, 2], [0, 0, 0, 0]]))
      array([ 1,  2, -1])
    """
    counts = np.asarray(counts, dtype=np.int64)
    cum = np.cumsum(counts, axis=-1)
    total = cum[..., -1:]
    idx = np.argmax(2 * cum >= total, axis=-1)
    return np.where(total[..., 0] > 0, idx, -1)


def _bin_axis(ax, counts, margin: int = 2):
    """Limits the bin axis to the occupied bins (and `margin` on each side) and labels them."""
    used = np.flatnonzero(np.asarray(counts).sum(axis=0) > 0)
    lo, hi = (0, HIST_BINS - 1) if not used.size else (max(0, used[0] - margin),
                                                       min(HIST_BINS - 1, used[-1] + margin))
    ax.set_xlim(lo - 0.5, hi + 0.5)
    step = max(1, int(np.ceil((hi - lo + 1) / 14)))
    labels = bin_labels()
    pos = list(range(lo, hi + 1, step))
    ax.set_xticks(pos, [labels[i] for i in pos], fontsize=7, rotation=90)


def grad_histogram(records, metric: str | None = None, *, record: int | None = None, ax=None):
    """Draws one record's per-layer gradient histogram: layers (input at the bottom) × the
    magnitude bins, colour the log count, a dot at each layer's median bin.

    Bins are `gradflow.quantities.histograms`' decades: a bin labelled 1e-03 holds
    |g| in [1e-3, 1e-2); the first holds |g| < 1e-24 (exact zeros too), the last |g| ≥ 1e8 and
    non-finite values. The axis shows the occupied bins and two more on each side; empty bins
    are white.

    Args:
      records: a History (its records that measured the histogram) or a Snapshot.
      metric: "example_grad_hist" (per-example gradients, `noise_every`) or "grad_hist"
        (`gf.probe(..., histograms=True)`); default the first of these present.
      record: for a History, the record's index; default the last record that measured it.
      ax: a matplotlib Axes to draw into; default a new Figure.

    Returns:
      The matplotlib Figure.

    Raises:
      ValueError: if there is no histogram, or no record measured it.

    Example:
      >>> fig = gf.plot.grad_histogram(hist)  # doctest: +SKIP
    """
    metric, counts = _histogram_metric(records, metric)
    step = records.meta.get("step")
    if counts.ndim == 3:
        if record is None:
            record = int(_measured_or_raise(counts, metric)[-1])
        counts = counts[record]
        step = int(records.steps[record])
        if np.any(counts < 0):
            raise ValueError(f"record {record} (step {step}) did not measure {metric!r}")
    fig = ax.figure if ax is not None else plt.figure(figsize=(8, 5))
    ax = ax or fig.add_subplot()
    n = counts.shape[0]
    values = np.where(counts > 0, counts, np.nan).astype(np.float64)
    top = np.nanmax(values) if np.isfinite(values).any() else 10.0
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    mesh = ax.pcolormesh(np.arange(HIST_BINS + 1) - 0.5, np.arange(n + 1) - 0.5, values,
                         norm=LogNorm(1, max(top, 10.0)), cmap=cmap, shading="flat")
    med = median_bins(counts)
    rows = np.flatnonzero(med >= 0)
    ax.plot(med[rows], rows, "o", ms=4 if n <= 40 else 2.5, mfc="white", mec="black", mew=0.7,
            ls="none")
    _bin_axis(ax, counts)
    pos, names = layer_ticks(records.layers)
    ax.set_yticks(pos, names, fontsize=7 if n > 12 else 8)
    what, element = WHAT.get(metric, (metric, "|g|"))
    ax.set_xlabel(f"{element} (decade bins, labelled by their lower edge)")
    ax.set_ylabel("layer (input at the bottom)")
    arch = records.meta.get("arch")
    at = f", step {step}" if step is not None else ""
    ax.set_title(f"Histogram of {what}" + (f" — {arch}" if arch else "") + at, fontsize=10)
    fig.colorbar(mesh, ax=ax, label="elements per bin (log scale)")
    ax.legend(handles=[Line2D([], [], marker="o", mfc="white", mec="black", ls="none",
                              label="median bin of the layer"),
                       Patch(facecolor="white", edgecolor="0.5", label="empty bin")],
              loc="upper left", bbox_to_anchor=(0.0, -0.22), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def histogram_medians(history, metric: str | None = None, *, ax=None):
    """Draws the median gradient magnitude of every layer over the measured steps: layers
    (input at the bottom) × steps, colour the lower edge of the bin holding the median element
    (log scale).

    Black: the median is below 1e-24 (exact zeros included); red: at or above 1e8, or
    non-finite.

    Args:
      history: a History with "example_grad_hist" or "grad_hist".
      metric: which histogram; default the first present, as in `grad_histogram`.
      ax: a matplotlib Axes to draw into; default a new Figure.

    Returns:
      The matplotlib Figure.

    Raises:
      ValueError: if there is no histogram, or no record measured it.

    Example:
      >>> fig = gf.plot.histogram_medians(hist)  # doctest: +SKIP
    """
    metric, counts = _histogram_metric(history, metric)
    if counts.ndim != 3:
        raise ValueError("histogram_medians needs a History (a Snapshot is one record: use "
                         "grad_histogram)")
    measured = _measured_or_raise(counts, metric)
    med = median_bins(counts[measured])  # (n_measured, n_layers)
    lower = 10.0 ** (LOG10_LOW + med.astype(np.float64) - 1)  # bins 1..32: [10^(L+i-1), ...)
    values = np.where((med >= 1) & (med <= HIST_BINS - 2), lower, np.nan)
    finite = values[np.isfinite(values)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (1e-8, 1.0)
    hi = max(hi, lo * 10)
    low, high = med == 0, med == HIST_BINS - 1
    values = np.where(low, lo / 10, np.where(high, hi * 10, values))
    fig = ax.figure if ax is not None else plt.figure(figsize=(8, 5))
    ax = ax or fig.add_subplot()
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.82", under="black", over="red")
    steps = np.asarray(history.steps)[measured]
    mesh = ax.pcolormesh(_edges(steps), np.arange(counts.shape[1] + 1) - 0.5, values.T,
                         norm=LogNorm(lo, hi), cmap=cmap, shading="flat")
    pos, names = layer_ticks(history.layers)
    ax.set_yticks(pos, names, fontsize=7 if counts.shape[1] > 12 else 8)
    if steps.size <= 12:
        ax.set_xticks(steps, [str(int(s)) for s in steps], fontsize=8)
    ax.set_xlabel("training step (records that measured the histogram)")
    ax.set_ylabel("layer (input at the bottom)")
    arch = history.meta.get("arch")
    what = WHAT.get(metric, (metric,))[0].split(" (")[0]
    ax.set_title(f"Median |g| of {what}" + (f" — {arch}" if arch else ""), fontsize=10)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max",
              (True, True): "both"}[(bool(low.any()), bool(high.any()))]
    fig.colorbar(mesh, ax=ax, extend=extend,
                 label="median |g|: lower edge of its decade bin (log scale)")
    keys = ([Patch(facecolor="black", label="below 1e-24 (exact zeros)")] if low.any() else []) + (
        [Patch(facecolor="red", label="≥ 1e+08 or non-finite")] if high.any() else [])
    if keys:
        ax.legend(handles=keys, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=2,
                  fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def grad_histograms(history, metric: str | None = None):
    """The two histogram pictures of a History side by side: `grad_histogram` at the last
    record that measured it, and `histogram_medians` over the measured steps.

    Args:
      history: a History with "example_grad_hist" or "grad_hist".
      metric: which histogram; default the first present.

    Returns:
      The matplotlib Figure.

    Raises:
      ValueError: if there is no histogram, or no record measured it.

    Example:
      >>> fig = gf.plot.grad_histograms(hist)  # doctest: +SKIP
    """
    n = len(history.layers)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, max(4.8, min(12.0, 2.5 + 0.16 * n))),
                                      gridspec_kw={"width_ratios": (1.25, 1)})
    grad_histogram(history, metric, ax=left)
    histogram_medians(history, metric, ax=right)
    fig.tight_layout(w_pad=3)
    return fig
