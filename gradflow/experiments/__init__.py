"""The seed paper's four patterns as experiments: `python -m gradflow.run --experiment NAME`.

EXPERIMENTS maps each name to (description, run function, options): `run(out, log=...,
meta=..., **options)` writes figures, `<name>.json` and report.html into the new directory `out`
and returns the text summary to print; `options` are the CLI options the experiment uses, with
its own defaults (any other option given on the command line is a usage error).
"""
from __future__ import annotations

import importlib
from typing import Callable, NamedTuple


class Experiment(NamedTuple):
    """One entry of EXPERIMENTS.

    Attributes:
      description: one line for `--help`.
      run: `run(out, log=..., meta=..., **options)`; writes into `out` and returns the text
        summary.
      options: the CLI options the experiment takes, with its defaults.

    Example:
      >>> EXPERIMENTS["residual"].options["steps"], NAMES
      (200, ('hierarchy', 'residual', 'batchnorm', 'separable'))
    """
    description: str
    run: Callable
    options: dict


def _lazy(module: str) -> Callable:
    """The module's `run`, imported on first call (so --help does not load JAX models)."""
    def run(*args, **kwargs):
        return importlib.import_module(f"{__name__}.{module}").run(*args, **kwargs)
    run.__name__ = f"{module}.run"
    return run


_COMMON = {"seed": 0}
_TRAINING = {"batch_size": 32, "log_every": 5}

EXPERIMENTS: dict[str, Experiment] = {
    "hierarchy": Experiment(
        "modularity-hierarchy-reuse: gf.summary of every zoo model (network, stages, blocks, "
        "layers) and of a user's NNX model, with parameters per block and stage",
        _lazy("hierarchy"),
        {**_COMMON, "depth": 14, "width": 16, "archs": ("plain", "residual", "bn", "residual_bn")}),
    "residual": Experiment(
        "residual connections: the seed's Keras ResNet (seed_resnet) with and without shortcuts "
        "on a binary task from the built-in data: gradient heatmaps, held-out accuracy, "
        "projection shortcuts in the summary",
        _lazy("residual"),
        {**_COMMON, **_TRAINING, "steps": 200, "optimizer": "adam", "lr": 1e-3, "log_every": 10,
         "seeds": 3}),
    "batchnorm": Experiment(
        "batch normalization: (a) Conv(no bias)-BN-ReLU against Conv+ReLU-BN at equal depth; "
        "(b) fine-tuning on a small new task with BN frozen against BN training, over seeds",
        _lazy("batchnorm"),
        {**_COMMON, **_TRAINING, "depth": 10, "width": 16, "steps": 150, "optimizer": "momentum",
         "lr": 0.01, "init": "lecun", "seeds": 3}),
    "separable": Experiment(
        "depthwise separable convolutions: parameters and multiply-adds per layer and model "
        "(checked against closed forms), forward+backward time against standard convs at "
        "widths W, 4W, 16W, gradient flow and accuracy at equal depth",
        _lazy("separable"),
        {**_COMMON, **_TRAINING, "depth": 10, "width": 16, "steps": 150, "optimizer": "momentum",
         "lr": 0.01, "init": "lecun", "archs": ("residual_bn",), "seeds": 3}),
}

NAMES = tuple(EXPERIMENTS)

__all__ = ["EXPERIMENTS", "NAMES", "Experiment"]
