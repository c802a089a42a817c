"""Leaf layers the blocks are built from: an explicit activation and a depthwise-separable conv."""
from __future__ import annotations

from flax import nnx

from ..instrument import register_activation
from .options import activation_fn


@register_activation
class Activation(nnx.Module):
    """An activation function as a layer, so instrumentation can see what a unit passes on.

    Registered with `gradflow.instrument.register_activation`: its output's statistics are the
    act_mean / act_std / dead_frac of the weight layer called before it.

    Args:
      name: one of `gradflow.models.ACTIVATIONS` ("relu", "tanh", "gelu", ...).

    Example::

      act = Activation("relu")
      y = act(x)  # jax.nn.relu(x)
    """

    def __init__(self, name: str):
        self.name = name
        self.fn = activation_fn(name)

    def __call__(self, x):
        return self.fn(x)


class SeparableConv(nnx.Module):
    """Depthwise (per-channel k x k) conv, then a 1x1 pointwise conv: Keras' SeparableConv2D.

    The depthwise conv has no bias (as in Keras); both kernels are weight layers of their own in
    the instrumentation, but the pair counts as one layer of depth.
    """

    def __init__(self, in_features, out_features, kernel_size=(3, 3), *, strides=1,
                 use_bias=True, kernel_init, rngs):
        self.depthwise = nnx.Conv(in_features, in_features, kernel_size, strides=strides,
                                  feature_group_count=in_features, use_bias=False,
                                  kernel_init=kernel_init, rngs=rngs)
        self.pointwise = nnx.Conv(in_features, out_features, (1, 1), use_bias=use_bias,
                                  kernel_init=kernel_init, rngs=rngs)

    def __call__(self, x):
        return self.pointwise(self.depthwise(x))


def make_conv(kind: str, in_features, out_features, kernel_size=(3, 3), *, strides=1,
              use_bias=True, kernel_init, rngs):
    """A standard or separable conv with the same signature, usable wherever a conv is."""
    if kind == "separable":
        return SeparableConv(in_features, out_features, kernel_size, strides=strides,
                             use_bias=use_bias, kernel_init=kernel_init, rngs=rngs)
    return nnx.Conv(in_features, out_features, kernel_size, strides=strides, use_bias=use_bias,
                    kernel_init=kernel_init, rngs=rngs)
