"""gradflow: see every layer's gradient. Models, instrumentation, and the analysis API.

    import gradflow as gf
    snap = gf.probe(model, (x, y))                  # one batch, no update
    hist = gf.train(model, batches, steps=100, optimizer=optax.sgd(0.1), log_every=10)
    gf.plot.heatmap(hist, "error_norm")
"""
from . import instrument, losses, models, plot
from .analysis import theory
from .analysis.diagnose import Finding, diagnose
from .models.freeze import freeze_batchnorm, unfreeze_batchnorm
from .history import History, Snapshot
from .probe import probe
from .analysis.summary import Summary, summary
from .train import recorded_steps, train

__version__ = "0.1.0"
__all__ = ["probe", "train", "diagnose", "Finding", "summary", "Summary", "freeze_batchnorm",
           "unfreeze_batchnorm", "theory", "recorded_steps", "Snapshot", "History", "models", "instrument",
           "plot", "losses"]
