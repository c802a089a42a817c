"""Every figure gradflow draws, from Snapshots, Histories and depth sweeps (matplotlib).

Importing this package imports matplotlib.pyplot but never chooses its backend: in a notebook
figures show inline, on a machine without a display matplotlib falls back to Agg by itself, and
the command line (`python -m gradflow.run`) selects Agg for its own process.

    import gradflow as gf
    fig = gf.plot.heatmap(history, "error_norm")      # layers × steps, log colour scale
    fig = gf.plot.profile(history.snapshot(0))        # per-layer profile at init
    fig = gf.plot.comparison_grid({"plain": h1, "residual_bn": h2})
    fig = gf.plot.training_quantities({"plain": h1}, lr=0.05)  # noise, curvature, 2/lr
    fig = gf.plot.grad_histograms(history)            # per-layer gradient histograms
"""
from ._style import png_bytes
from .comparison import comparison_grid, curves, profiles
from .heatmap import heatmap
from .profile import profile
from .quantities import grad_histogram, grad_histograms, histogram_medians, training_quantities
from .sweep import depth_sweep

__all__ = ["comparison_grid", "curves", "depth_sweep", "grad_histogram", "grad_histograms",
           "heatmap", "histogram_medians", "png_bytes", "profile", "profiles",
           "training_quantities"]
