"""Where training went non-finite: which record, and the first layer reached by the non-finite
values — in backward order (output to input) for the error signal and the weight gradients, in
forward order for the activations."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..history import BACKWARD, History, finite_record

FORWARD = ("act_mean", "act_std")


def nonfinite_records(hist) -> np.ndarray:
    """Boolean per record of a History: where `finite_record` is False."""
    keys = [k for k in ("loss",) + BACKWARD if k in hist]
    return np.array([not finite_record({k: hist[k][i] for k in keys})
                     for i in range(len(hist.steps))], dtype=bool)


def _bad_layers(row: dict, metrics, n: int) -> np.ndarray:
    bad = np.zeros(n, dtype=bool)
    for k in metrics:
        if k in row:
            bad |= ~np.isfinite(np.asarray(row[k], dtype=np.float64))
    return bad


def first_backward(row: dict, layers, metrics=BACKWARD) -> str | None:
    """The layer nearest the output (the first backpropagation reaches) whose error or gradient
    norm in the per-layer dict `row` is not finite; None if all are finite."""
    idx = np.flatnonzero(_bad_layers(row, metrics, len(layers)))
    return layers[idx[-1]] if idx.size else None


def first_forward(row: dict, layers, metrics=FORWARD) -> str | None:
    """The layer nearest the input whose activation statistics are not finite; None if all
    are."""
    idx = np.flatnonzero(_bad_layers(row, metrics, len(layers)))
    return layers[idx[0]] if idx.size else None


class Divergence(NamedTuple):
    """Where a History first holds a non-finite value.

    Attributes:
      step: the training step of the first non-finite record.
      record: its index in the History.
      backward_layer: the first layer back-propagation reached with a non-finite error or
        gradient norm (output side first); None if only the loss was non-finite.
      forward_layer: the first layer (input side first) whose activations were non-finite.
    """
    step: int
    record: int
    backward_layer: str | None
    forward_layer: str | None


def locate(hist: History) -> Divergence | None:
    """The first non-finite record of `hist` and where it appeared; None if every record is
    finite. Metrics the model could not measure (NaN in every record of a model whose layer
    calls were not probed) are left out.

    Example:
      >>> where = locate(history)  # doctest: +SKIP
      >>> where.step, where.backward_layer  # doctest: +SKIP
      (5, 'head')
    """
    bad = np.flatnonzero(nonfinite_records(hist))
    if not bad.size:
        return None
    i = int(bad[0])
    probed = hist.meta.get("probed", True)
    measured = [k for k in hist.metrics if k == "grad_norm" or probed
                or not np.isnan(np.asarray(hist[k], dtype=np.float64)).all()]
    row = {k: hist[k][i] for k in measured}
    return Divergence(int(hist.steps[i]), i, first_backward(row, hist.layers),
                      first_forward(row, hist.layers))


def cut(hist: History) -> tuple[History, Divergence | None]:
    """`hist` without its first non-finite record and those after it.

    The first non-finite record's per-layer values are NaN-propagation debris (zeros, NaN) below
    the layer where it appeared, so the records before it, which show how it got there, are kept
    (at least one), and where it appeared goes into the kept History's meta
    (`diverged_at_step`, `nonfinite_layer_backward`, `nonfinite_layer_forward`).

    Args:
      hist: a History, e.g. from `gf.train`.

    Returns:
      (the kept History, the Divergence), or (`hist`, None) if every record is finite.
    """
    where = locate(hist)
    if where is None:
        return hist, None
    kept = hist.truncated(max(1, where.record))
    kept.meta.update(diverged_at_step=where.step, nonfinite_layer_backward=where.backward_layer,
                     nonfinite_layer_forward=where.forward_layer)
    return kept, where


def describe(backward_layer: str | None, forward_layer: str | None = None) -> str:
    """"first non-finite at layer 'head' (backward order)", with where the activations went
    non-finite (forward order) when they did; "" if neither is known."""
    text = ""
    if backward_layer:
        text = f"first non-finite at layer '{backward_layer}' (backward order)"
    if forward_layer:
        text += ("; " if text else "") + (f"activations non-finite from layer "
                                          f"'{forward_layer}' (forward order)")
    return text
