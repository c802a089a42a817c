"""gradflow: see every layer's gradient.

    import gradflow as gf
    snap = gf.probe(model, (x, y))                  # one batch, no update
    hist = gf.train(model, batches, steps=100, optimizer=optax.sgd(0.1), log_every=10)
    print(*gf.diagnose(hist), sep="\\n")
    gf.plot.heatmap(hist, "error_norm")             # matplotlib is imported here, not before

Data flows one way: model + batch -> traced measurement core -> Snapshot / History -> analysis
-> figures -> reports -> command line. The package is built in layers along that flow; a module
imports only from its own layer or lower ones, and no modules import each other in a loop
(`tests/test_layers.py` checks both):

    0  gradflow._io          atomic files, NaN-free JSON; gradflow.host_memory (malloc options
                             that keep XLA:CPU's freed buffers for reuse)
    1  gradflow.instrument   the traced core: error tap, recorder, probes, compiled steps; knows
                             nothing of the zoo (modules plug in through its registration API)
    2  library               gradflow.grad (value_and_grad), history, losses, distributed, probe,
                             train, checkpoint;
                             the zoo (gradflow.models, with freezing), gradflow.data, and
                             gradflow.quantities (gradient noise, curvature, histograms)
    3  gradflow.analysis     diagnose, divergence, theory, summary, flops
    4  gradflow.plot         every figure (matplotlib)
    5  gradflow.report       HTML pages, run and sweep reports, text tables, progress display
       gradflow.integrations TensorBoard and Weights & Biases loggers
    6  gradflow.experiments  the side-by-side run, the depth sweep, the seed paper's studies
    7  gradflow.cli          options, main, interruption, resume (`python -m gradflow.run`)

This file is the public API: everything in `__all__`. `gf.plot` is imported on first use and
never chooses a matplotlib backend.
"""
from __future__ import annotations

import importlib

from . import data, distributed, instrument, losses, models
from .analysis import flops, theory
from .analysis.diagnose import Finding, diagnose
from .analysis.summary import Summary, summary
from .grad import update_ratio, value_and_grad
from .history import History
from .snapshot import Snapshot
from .models.freeze import freeze_batchnorm, unfreeze_batchnorm
from .probe import probe
from .quantities.start import CurvatureStart
from .train import recorded_steps, train

__version__ = "0.1.0"
__all__ = ["value_and_grad", "update_ratio", "CurvatureStart", "probe", "train", "recorded_steps", "Snapshot", "History", "diagnose", "Finding",
           "summary", "Summary", "freeze_batchnorm", "unfreeze_batchnorm", "models", "data",
           "losses", "theory", "flops", "distributed", "instrument", "plot", "integrations",
           "report"]

_LAYERS = {
    "gradflow._io": 0, "gradflow.host_memory": 0, "gradflow.conv_layout": 0,
    "gradflow.instrument": 1,
    "gradflow.history": 2, "gradflow.snapshot": 2, "gradflow.losses": 2, "gradflow.distributed": 2,
    "gradflow.probe": 2, "gradflow.train": 2, "gradflow.checkpoint": 2, "gradflow.grad": 2,
    "gradflow.models": 2, "gradflow.data": 2, "gradflow.quantities": 2,
    "gradflow.analysis": 3,
    "gradflow.plot": 4,
    "gradflow.report": 5, "gradflow.integrations": 5,
    "gradflow.experiments": 6,
    "gradflow.cli": 7, "gradflow.run": 7,
}

# How Snapshot and History show in Jupyter: HTML built in gradflow.report.notebook (no
# matplotlib until a History is shown), plugged into the lower layer's `_repr_html_`.
from .report import notebook as _notebook
from .snapshot import HTML as _HTML

_HTML.update(_notebook.RENDERERS)
# The name `report` is the function gf.report (through __getattr__), not the subpackage
# gradflow.report: the subpackage is loaded above, so importing its modules later never
# rebinds the name, and is unbound here.
del globals()["report"]


def __getattr__(name: str):
    if name == "plot":  # matplotlib only when a figure is asked for
        return importlib.import_module(".plot", __name__)
    if name == "integrations":  # the trackers' packages only when a logger is made
        return importlib.import_module(".integrations", __name__)
    if name == "report":  # gf.report, the function; matplotlib only when a report is asked for
        return importlib.import_module(".report.any_history", __name__).report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"plot", "integrations", "report"})
