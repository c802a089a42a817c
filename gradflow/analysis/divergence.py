"""Where training went non-finite: which record, and the first layer reached by the non-finite
values — in backward order (output to input) for the error signal and the weight gradients, in
forward order for the activations."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..history import BACKWARD, History, finite_record

FORWARD = ("act_mean", "act_std")


def nonfinite_records(hist) -> np.ndarray:
    """Which records of a History are not finite.

    Args:
      hist: a History.

    Returns:
      A (n_records,) bool array, True where `finite_record` is False (loss, gradient or error
      norm not finite).
    """
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
    """The first layer back-propagation reaches with a non-finite error or gradient norm.

    Args:
      row: one record, metric name -> (n_layers,) array.
      layers: the layer names, in network order.
      metrics: the metrics to check; default `BACKWARD` ("error_norm", "grad_norm").

    Returns:
      The name of the non-finite layer nearest the output, or None if all are finite.
    """
    idx = np.flatnonzero(_bad_layers(row, metrics, len(layers)))
    return layers[idx[-1]] if idx.size else None


def first_forward(row: dict, layers, metrics=FORWARD) -> str | None:
    """The first layer (from the input) whose activation statistics are not finite.

    Args:
      row: one record, metric name -> (n_layers,) array.
      layers: the layer names, in network order.
      metrics: the metrics to check; default `FORWARD` ("act_mean", "act_std").

    Returns:
      The name of the non-finite layer nearest the input, or None if all are finite.
    """
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
    """The first non-finite record of `hist` and where it appeared.

    Metrics the model could not measure (NaN in every record of a model whose layer calls were
    not probed) are left out.

    Args:
      hist: a History.

    Returns:
      A Divergence, or None if every record is finite.

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
    """Where values went non-finite, in words.

    Args:
      backward_layer: the first non-finite layer in backward order, or None.
      forward_layer: the first layer with non-finite activations in forward order, or None.

    Returns:
      E.g. "first non-finite at layer 'head' (backward order)", followed by where the
      activations went non-finite when `forward_layer` is given; "" if neither is.

    Example:
      >>> from gradflow.analysis.divergence import describe
      >>> describe("head")
      "first non-finite at layer 'head' (backward order)"
    """
    text = ""
    if backward_layer:
        text = f"first non-finite at layer '{backward_layer}' (backward order)"
    if forward_layer:
        text += ("; " if text else "") + (f"activations non-finite from layer "
                                          f"'{forward_layer}' (forward order)")
    return text
