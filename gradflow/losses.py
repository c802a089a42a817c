"""Loss functions by name, each with the matching accuracy (None where accuracy has no meaning)."""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

_EPS = 1e-7  # Keras' clipping of probabilities in binary cross-entropy


def cross_entropy(logits, labels):
    """Softmax cross-entropy with integer labels, averaged over the batch."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32)).mean()


def mse(outputs, targets):
    """Mean squared error; targets are reshaped to the outputs' shape."""
    return jnp.mean(jnp.square(outputs - targets.reshape(outputs.shape)))


def binary_cross_entropy(probs, labels):
    """Binary cross-entropy on probabilities (Keras' default, from_logits=False), labels in {0, 1}."""
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
    """A loss name, a callable `(outputs, y) -> scalar`, or None (cross-entropy)."""
    if loss is None:
        loss = "cross_entropy"
    if callable(loss):
        return loss, None
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not one of {', '.join(map(repr, LOSSES))} "
                         "or a callable (outputs, y) -> scalar")
    return LOSSES[loss]
