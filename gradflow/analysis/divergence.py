"""Where training went non-finite: which record, and the first layer reached by the non-finite
values — in backward order (output to input) for the error signal and the weight gradients, in
forward order for the activations."""
from __future__ import annotations

import numpy as np

BACKWARD = ("error_norm", "grad_norm")  # dL/dz and dL/dW, computed from the output layer down
FORWARD = ("act_mean", "act_std")


def finite_record(record: dict) -> bool:
    """Whether a record's loss and every layer's gradient and error norm are finite (error norms
    that are NaN in every layer are ones the model could not measure: its layer calls cannot be
    probed). `gf.train` stops where this is False."""
    if not np.isfinite(float(record["loss"])):
        return False
    for k in BACKWARD:
        if k in record:
            v = np.asarray(record[k], dtype=np.float64)
            if not np.isfinite(v).all() and not (k == "error_norm" and np.isnan(v).all()):
                return False
    return True


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


def locate(hist) -> dict | None:
    """{"step", "record", "backward_layer", "forward_layer"} of the first non-finite record of
    a History, None if every record is finite. Metrics the model could not measure (NaN in every
    record of a model whose layer calls were not probed) are left out."""
    bad = np.flatnonzero(nonfinite_records(hist))
    if not bad.size:
        return None
    i = int(bad[0])
    probed = hist.meta.get("probed", True)
    measured = [k for k in hist.metrics if k == "grad_norm" or probed
                or not np.isnan(np.asarray(hist[k], dtype=np.float64)).all()]
    row = {k: hist[k][i] for k in measured}
    return {"step": int(hist.steps[i]), "record": i,
            "backward_layer": first_backward(row, hist.layers),
            "forward_layer": first_forward(row, hist.layers)}


def describe(where: dict) -> str:
    """"first non-finite at layer 'head' (backward order)", with where the activations went
    non-finite (forward order) when they did."""
    text = ""
    if where.get("backward_layer"):
        text = f"first non-finite at layer '{where['backward_layer']}' (backward order)"
    if where.get("forward_layer"):
        text += ("; " if text else "") + (f"activations non-finite from layer "
                                          f"'{where['forward_layer']}' (forward order)")
    return text
