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
      name: a key of `gradflow.models.ACTIVATIONS` ("relu", "tanh", "gelu", ...).

    Example:
      >>> gf.models.Activation("relu")(jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
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

    Args:
      in_features: the input channels.
      out_features: the output channels.
      kernel_size: the depthwise kernel's spatial size.
      strides: the depthwise conv's stride.
      use_bias: whether the pointwise conv has a bias.
      kernel_init: the initializer of both kernels.
      rngs: the `nnx.Rngs` to initialize from.

    Example:
      >>> init = nnx.initializers.lecun_normal()
      >>> conv = SeparableConv(8, 16, kernel_init=init, rngs=nnx.Rngs(0))  # doctest: +SKIP
      >>> conv(jnp.ones((1, 5, 5, 8))).shape  # doctest: +SKIP
      (1, 5, 5, 16)
      >>> conv = nnx.eval_shape(lambda: SeparableConv(8, 16, kernel_init=init, rngs=nnx.Rngs(0)))
      >>> conv.depthwise.kernel.shape, conv.pointwise.kernel.shape  # shapes only: fast
      ((3, 3, 1, 8), (1, 1, 8, 16))
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
    """A standard or separable conv with the same signature, usable wherever a conv is.

    Args:
      kind: "separable" for a `SeparableConv`; anything else ("standard") gives an `nnx.Conv`.
      in_features: the input channels.
      out_features: the output channels.
      kernel_size: the kernel's spatial size (a separable conv's depthwise kernel).
      strides: the stride (a separable conv's depthwise conv).
      use_bias: whether the conv has a bias (a separable conv's pointwise conv).
      kernel_init: the initializer of the kernel(s).
      rngs: the `nnx.Rngs` to initialize from.

    Returns:
      The conv module.

    Example:
      >>> init = nnx.initializers.lecun_normal()
      >>> make = lambda kind: make_conv(kind, 8, 16, kernel_init=init, rngs=nnx.Rngs(0))
      >>> [type(nnx.eval_shape(lambda: make(k))).__name__ for k in ("standard", "separable")]
      ['Conv', 'SeparableConv']
    """
    if kind == "separable":
        return SeparableConv(in_features, out_features, kernel_size, strides=strides,
                             use_bias=use_bias, kernel_init=kernel_init, rngs=rngs)
    return nnx.Conv(in_features, out_features, kernel_size, strides=strides, use_bias=use_bias,
                    kernel_init=kernel_init, rngs=rngs)
