"""Loss functions by name, each with the matching accuracy (None where accuracy has no meaning)."""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np
import optax

_EPS = 1e-7  # Keras' clipping of probabilities in binary cross-entropy


def cross_entropy(logits, labels):
    """Softmax cross-entropy with integer labels, averaged over the batch.

    Args:
      logits: (batch, num_classes) unnormalized scores.
      labels: (batch,) class indices (cast to int32).

    Returns:
      The mean loss, a scalar.

    Example:
      >>> round(float(gf.losses.cross_entropy(jnp.zeros((2, 10)), jnp.array([3, 7]))), 4)
      2.3026
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32)).mean()


def mse(outputs, targets):
    """Mean squared error over every element.

    Args:
      outputs: the model's outputs, any shape.
      targets: as many elements as `outputs`; reshaped to its shape (so (batch,) targets fit
        (batch, 1) outputs).

    Returns:
      The mean of the squared differences, a scalar.

    Example:
      >>> float(gf.losses.mse(jnp.array([[1.0], [3.0]]), jnp.array([0.0, 1.0])))
      2.5
    """
    return jnp.mean(jnp.square(outputs - targets.reshape(outputs.shape)))


def binary_cross_entropy(probs, labels):
    """Binary cross-entropy on probabilities (Keras' default, from_logits=False).

    Probabilities are clipped to [1e-7, 1 - 1e-7], as Keras clips them.

    Args:
      probs: probabilities in [0, 1], as many as `labels` (e.g. (batch, 1) sigmoid outputs);
        reshaped to the labels' shape.
      labels: (batch,) labels in {0, 1}.

    Returns:
      The mean loss, a scalar.

    Example:
      >>> probs, labels = jnp.full((4, 1), 0.5), jnp.array([0, 1, 1, 0])
      >>> round(float(gf.losses.binary_cross_entropy(probs, labels)), 4)
      0.6931
    """
    p = jnp.clip(probs.reshape(labels.shape), _EPS, 1 - _EPS)
    y = labels.astype(p.dtype)
    return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log1p(-p))


def _class_accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def _binary_accuracy(probs, labels):
    return jnp.mean((probs.reshape(labels.shape) > 0.5) == (labels > 0.5))


LOSSES = {
    "cross_entropy": (cross_entropy, _class_accuracy),
    "mse": (mse, None),
    "binary_cross_entropy": (binary_cross_entropy, _binary_accuracy),
}


def resolve(loss) -> tuple[Callable, Callable | None]:
    """The loss and accuracy functions that the `loss` argument of `gf.probe` / `gf.train` names.

    Args:
      loss: a name in `LOSSES` ("cross_entropy", "mse", "binary_cross_entropy"), a callable
        `(outputs, y) -> scalar`, or None (cross-entropy).

    Returns:
      `(loss_fn, accuracy_fn)`; `accuracy_fn(outputs, y)` is None for "mse" and for a callable.

    Raises:
      ValueError: for any other name.

    Example:
      >>> loss_fn, acc_fn = gf.losses.resolve("mse")
      >>> loss_fn is gf.losses.mse, acc_fn
      (True, None)
    """
    if loss is None:
        loss = "cross_entropy"
    if callable(loss):
        return loss, None
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not one of {', '.join(map(repr, LOSSES))} "
                         "or a callable (outputs, y) -> scalar")
    return LOSSES[loss]


def check_labels(loss, labels, output) -> None:
    """Refuses labels a built-in classification loss would silently turn into a NaN or a wrong
    number: cross-entropy needs class indices in [0, number of outputs), binary cross-entropy 0
    or 1. Other losses are not checked.

    Args:
      loss: the `loss` argument of `gf.probe` / `gf.train` (a name, a callable or None).
      labels: the batch's labels (numpy or a concrete jax array).
      output: the model's output shape (`jax.ShapeDtypeStruct` or anything with `.shape`).

    Raises:
      ValueError: naming the loss, the accepted range and the labels found.

    Example:
      >>> gf.losses.check_labels(None, np.array([0, 10]), jax.ShapeDtypeStruct((2, 10), jnp.float32))
      Traceback (most recent call last):
      ...
      ValueError: cross_entropy needs class indices in [0, 10) for a model with 10 outputs; the labels range over 0..10
    """
    if loss not in (None, "cross_entropy", "binary_cross_entropy") or output is None:
        return
    y = np.asarray(labels)
    if not y.size:
        return
    if loss == "binary_cross_entropy":
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"binary_cross_entropy needs labels 0 or 1; the labels range over "
                             f"{y.min():g}..{y.max():g}")
        return
    n = output.shape[-1]
    if not np.issubdtype(y.dtype, np.integer) and not np.all(y == np.round(y)):
        raise ValueError("cross_entropy needs integer class indices as labels, got "
                         f"{y.dtype} values such as {y.ravel()[0]:g}")
    if y.min() < 0 or y.max() >= n:
        raise ValueError(f"cross_entropy needs class indices in [0, {n}) for a model with {n} "
                         f"outputs; the labels range over {y.min():g}..{y.max():g}")
