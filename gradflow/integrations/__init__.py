"""Send gradflow's measurements to experiment trackers: `TensorBoardWriter` (TensorBoard event
files, through tensorboardX) and `WandbLogger` (Weights & Biases).

    with gf.integrations.TensorBoardWriter("tb/plain") as tb:
        hist = gf.train(model, batches, steps=1000, optimizer=tx, log_every=10, loggers=(tb,))

Both take a growing History (only its new records are written) or a Snapshot, and write the
per-layer metrics as scalars `<metric>/<layer>`, the whole-network ones under their names, the
gradient histograms `<histogram>/<layer>` and, at `close`, the layers × steps heatmaps. Their
packages are optional extras (`pip install 'gradflow-diagnostics[tensorboard]'`, `[wandb]`),
imported only when a logger is made.
"""
from __future__ import annotations

import importlib

__all__ = ["TensorBoardWriter", "WandbLogger"]

_WHERE = {"TensorBoardWriter": ".tensorboard", "WandbLogger": ".weights_and_biases"}


def __getattr__(name: str):
    if name in _WHERE:  # the modules import their package only when a logger is made
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
