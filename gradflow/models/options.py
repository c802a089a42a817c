"""Named choices (archs, inits, activations) and the argument checks shared by the zoo."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

ARCHS = ("plain", "residual", "residual_scaled", "bn", "residual_bn")
RESIDUAL = ("residual", "residual_scaled", "residual_bn")  # built from residual blocks
NORMALIZED = ("bn", "residual_bn")  # BatchNorm after every weight layer
SEPARABLE = "_separable"  # arch suffix: the same arch with depthwise-separable hidden convs
ARCH_CHOICES = ARCHS + tuple(a + SEPARABLE for a in ARCHS)
CONVS = ("standard", "separable")
BN_POSITIONS = ("before_act", "after_act")  # Conv -> BN -> act, or Conv -> act -> BN
STACKS = ("auto", "unrolled", "scan")

# Variance-scaling initializers: Var(W) = scale / fan_in (lecun, he) or 2 / (fan_in + fan_out) (glorot).
INITS = {
    "lecun": nnx.initializers.lecun_normal(),  # Flax's default: truncated normal, 1/fan_in
    "he": nnx.initializers.he_normal(),  # 2/fan_in, the ReLU-preserving choice
    "glorot": nnx.initializers.glorot_uniform(),  # Keras' default
    "orthogonal": nnx.initializers.orthogonal(),  # gain 1 on the flattened (fan_in, fan_out) matrix
}

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "leaky_relu": jax.nn.leaky_relu,
    "linear": lambda x: x,
}


def check_choice(name: str, value, choices) -> None:
    """Checks that `value` is one of `choices`.

    Args:
      name: the argument's name, for the message.
      value: the value given.
      choices: the accepted values.

    Raises:
      ValueError: naming the argument and the accepted values.
    """
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def check_positive_int(name: str, value) -> None:
    """Checks that `value` is an integer >= 1 (bools are refused).

    Args:
      name: the argument's name, for the message.
      value: the value given.

    Raises:
      ValueError: naming the argument.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def initializer(name: str):
    """The kernel initializer of a name.

    Args:
      name: a key of `INITS`: "lecun", "he", "glorot" or "orthogonal".

    Returns:
      The `nnx.initializers` function.

    Raises:
      ValueError: for another name.
    """
    check_choice("init", name, tuple(INITS))
    return INITS[name]


def activation_fn(name: str):
    """The activation function of a name.

    Args:
      name: a key of `ACTIVATIONS` ("relu", "tanh", "sigmoid", "gelu", "silu", "leaky_relu",
        "linear").

    Returns:
      The function, elementwise on jax arrays.

    Raises:
      ValueError: for another name.
    """
    check_choice("activation", name, tuple(ACTIVATIONS))
    return ACTIVATIONS[name]


def base_arch(arch: str) -> str:
    """The arch without its separable suffix.

    Args:
      arch: an arch name, possibly ending in `SEPARABLE` ("_separable").

    Returns:
      The name without the suffix.

    Example:
      >>> gf.models.base_arch("residual_bn_separable")
      'residual_bn'
    """
    return arch.removesuffix(SEPARABLE)
