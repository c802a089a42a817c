"""The Keras ResNet of the seminar paper "Modern patterns of convolutional neural networks"
(residual connections section), layer for layer.

Rescaling(1/255) on 32x32x3 -> three residual blocks (32 filters + max-pool, 64 + max-pool, 128),
each two 3x3 ReLU convs with bias; a pooling block's shortcut is a strided 1x1 conv, a block that
only changes width a plain 1x1 conv; no activation after the add -> global average pooling ->
Dense(1, sigmoid). Keras defaults: glorot-uniform kernels, zero biases. 297,697 parameters.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from .blocks import Unit
from .layers import Activation


class SeedBlock(nnx.Module):
    """Conv-relu, conv-relu, optional 2x2 max-pool (padding same), plus a (projected) shortcut.

    Args:
      in_features: input channels.
      filters: output channels of both 3x3 convs.
      pooling: max-pool after the convs; the shortcut is then a strided 1x1 conv.
      shortcut: add the skip connection (a 1x1 conv when pooling or changing width).
      rngs: the `nnx.Rngs` to initialize from.
    """

    def __init__(self, in_features: int, filters: int, *, pooling: bool, shortcut: bool = True, rngs):
        init = nnx.initializers.glorot_uniform()
        conv = lambda fin, k, s=1: nnx.Conv(fin, filters, (k, k), strides=s, padding="SAME",
                                           kernel_init=init, rngs=rngs)
        self.pooling = pooling
        self.use_shortcut = shortcut
        projection = None
        if shortcut and pooling:
            projection = conv(in_features, 1, 2)
        elif shortcut and filters != in_features:
            projection = conv(in_features, 1)
        self.projection = projection
        self.unit1 = Unit(conv(in_features, 3), filters, norm=False, activation="relu", rngs=rngs)
        self.unit2 = Unit(conv(filters, 3), filters, norm=False, activation="relu", rngs=rngs)

    def __call__(self, x):
        residual = x if self.projection is None else self.projection(x)
        x = self.unit2(self.unit1(x))
        if self.pooling:
            x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        return x + residual if self.use_shortcut else x


class SeedResNet(nnx.Module):
    """The seed's model; `shortcuts=False` gives the same network without skip connections.

    Args:
      shortcuts: keep the skip connections.
      rngs: the `nnx.Rngs` to initialize from.
    """

    def __init__(self, *, shortcuts: bool = True, rngs):
        self.blocks = nnx.List([
            SeedBlock(3, 32, pooling=True, shortcut=shortcuts, rngs=rngs),
            SeedBlock(32, 64, pooling=True, shortcut=shortcuts, rngs=rngs),
            SeedBlock(64, 128, pooling=False, shortcut=shortcuts, rngs=rngs),
        ])
        self.head = nnx.Linear(128, 1, kernel_init=nnx.initializers.glorot_uniform(), rngs=rngs)
        self.out = Activation("sigmoid")

    def __call__(self, x):
        x = x * (1.0 / 255)  # Rescaling(1./255)
        for block in self.blocks:
            x = block(x)
        return self.out(self.head(jnp.mean(x, axis=(1, 2))))  # probabilities, shape (batch, 1)


def seed_resnet(*, shortcuts: bool = True, rngs: nnx.Rngs) -> SeedResNet:
    """The seed's Keras residual CNN: 32x32x3 pixel values in, a sigmoid probability out.

    Inputs are rescaled by 1/255 inside the model; train with `loss="binary_cross_entropy"`.

    Args:
      shortcuts: keep the skip connections; False gives the same network without them.
      rngs: the `nnx.Rngs` to initialize from.

    Returns:
      A SeedResNet (297,697 parameters) mapping (batch, 32, 32, 3) images to (batch, 1)
      probabilities.

    Example:
      >>> model = gf.models.seed_resnet(rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 32, 32, 3))).shape
      (2, 1)
      >>> snap = gf.probe(model, (x, y), loss="binary_cross_entropy")  # doctest: +SKIP
    """
    return SeedResNet(shortcuts=shortcuts, rngs=rngs)
