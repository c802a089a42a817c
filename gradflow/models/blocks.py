"""Blocks: the conv/dense -> optional norm -> activation unit, and the residual block.

Choices (the standard recipes, He et al. 2016 "v1"):
- with BN, the weight layer has no bias (BN's offset replaces it) and BN sits between the weight
  layer and the activation: Conv(use_bias=False) -> BN -> act, as the seed recommends;
- the residual block is unit(act) -> weight -> [BN] -> add shortcut -> act; by default the
  branch is not scaled and its last BN scale starts at 1 (no zero-init), so what depth does is
  shown unaltered; `branch_scale` multiplies the branch by a fixed scalar (arch
  "residual_scaled", see networks.py);
- the shortcut is the identity when shapes agree, else a 1x1 projection (strided when the block
  downsamples) with no activation and, in BN nets, followed by BN;
- the block's output is `materialize`d: on CPU, XLA would otherwise recompute the whole residual
  stream inside every consumer (see materialize.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from .layers import Activation
from .materialize import materialize
from .norm import BatchNorm


class BranchScale(nnx.Variable):
    """The fixed scalar a residual branch is multiplied by (not an `nnx.Param`: not trained).

    Fixed rather than learnable: a learnable scale receives the whole branch's gradient summed
    into one number, so at the learning rates where the branch weights learn quickly (lr 0.1
    with SGD momentum on the depth-50 CNN) it moves far faster than any weight, can change
    sign or grow past 1, and the stream explodes. Fixup keeps its multipliers fixed as well.
    """


def initial_branch_scale(n_blocks: int) -> float:
    """The value of arch "residual_scaled"'s fixed branch scales: 1/sqrt(n_blocks).

    Each block adds alpha^2 * gain * q to the stream's variance q (gain: the branch's own
    variance gain, 1/2 for lecun ReLU, 2 for he), so n blocks multiply it by about
    (1 + gain/n)^n <= e^gain, bounded at any depth, where alpha = 1 gives (1 + gain)^n (arch
    "residual" explodes). Not 0, as SkipInit and ReZero start: with a zero scale every branch
    layer's error signal dL/dz is exactly 0 at init and its weights get no gradient (only the
    scales do), so a heatmap shows the branches black, as if the gradient vanished there. With
    1/sqrt(n) each branch layer sees the stream's error signal times about alpha, flat in depth.

    Args:
      n_blocks: the network's number of residual blocks (0 is taken as 1).

    Returns:
      1 / sqrt(max(n_blocks, 1)).

    Example:
      >>> round(gf.models.initial_branch_scale(24), 4)  # depth 50: 24 blocks
      0.2041
    """
    return 1.0 / math.sqrt(max(n_blocks, 1))


class Unit(nnx.Module):
    """Weight layer -> optional BatchNorm -> optional Activation.

    With `norm_after_act`: weight layer -> Activation -> BatchNorm (the order the seed advises
    against).

    Args:
      layer: the weight layer (a conv or dense module).
      features: the layer's output features (channels), for the BatchNorm.
      norm: add a BatchNorm.
      activation: an activation name in `ACTIVATIONS`, or None for none.
      norm_after_act: put the BatchNorm after the activation.
      rngs: the `nnx.Rngs` for the BatchNorm.

    Example::

      unit = Unit(nnx.Linear(8, 16, rngs=rngs), 16, norm=True, activation="relu", rngs=rngs)
      y = unit(x)  # relu(bn(linear(x)))
    """

    def __init__(self, layer: nnx.Module, features: int, *, norm: bool, activation: str | None,
                 norm_after_act: bool = False, rngs):
        self.layer = layer
        self.norm = BatchNorm(features, rngs=rngs) if norm else None
        self.act = Activation(activation) if activation else None
        self.norm_after_act = norm_after_act

    def __call__(self, x):
        x = self.layer(x)
        if self.norm is not None and not self.norm_after_act:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        if self.norm is not None and self.norm_after_act:
            x = self.norm(x)
        return x


class ResidualBlock(nnx.Module):
    """Two weight layers with a skip connection: act(branch(x) + shortcut(x)) (He et al. v1).

    The branch is Unit(act) -> Unit(no act); the shortcut is the identity, or a projection Unit
    (no activation) when the features or the stride change. The output is `materialize`d.

    Args:
      make_layer: `make_layer(in, out, strides, rngs=)` builds a main-path weight layer (the
        first one carries the stride).
      make_projection: `make_projection(in, out, strides, rngs=)` builds the shortcut's 1x1
        layer, used only when shapes change.
      in_features: input features (channels).
      out_features: output features.
      strides: the first layer's and the projection's stride.
      norm: BatchNorm after every weight layer (before the activation).
      activation: an activation name in `ACTIVATIONS`.
      branch_scale: None (no scaling), or the value of a fixed scalar (`.branch_scale`, a
        `BranchScale`, not trained) the branch is multiplied by before the add:
        act(branch_scale * branch(x) + shortcut(x)) (SkipInit, De & Smith 2020, and Fixup's
        fixed multipliers, with a nonzero value).
      rngs: the `nnx.Rngs` for the BatchNorms.

    Example:
      >>> dense = lambda fin, fout, strides, *, rngs: nnx.Linear(fin, fout, rngs=rngs)
      >>> block = gf.models.ResidualBlock(dense, dense, 4, 4, norm=False, activation="relu",
      ...                                 branch_scale=0.5, rngs=nnx.Rngs(0))
      >>> block(jnp.ones((2, 4))).shape, block.branch_scale.get_value()
      ((2, 4), Array(0.5, dtype=float32))
    """

    def __init__(self, make_layer: Callable, make_projection: Callable, in_features: int,
                 out_features: int, *, strides=1, norm: bool, activation: str,
                 branch_scale: float | None = None, rngs):
        if in_features != out_features or strides != 1:
            self.shortcut = Unit(make_projection(in_features, out_features, strides, rngs=rngs),
                                 out_features, norm=norm, activation=None, rngs=rngs)
        else:
            self.shortcut = None
        self.unit1 = Unit(make_layer(in_features, out_features, strides, rngs=rngs), out_features,
                          norm=norm, activation=activation, rngs=rngs)
        self.unit2 = Unit(make_layer(out_features, out_features, 1, rngs=rngs), out_features,
                          norm=norm, activation=None, rngs=rngs)
        self.act = Activation(activation)
        self.branch_scale = (None if branch_scale is None
                             else BranchScale(jnp.asarray(branch_scale, jnp.float32)))

    def __call__(self, x):
        # The shortcut runs first so the block's activation follows its last main-path layer in
        # call order (the instrumentation attributes an activation to the layer called before it).
        skip = x if self.shortcut is None else self.shortcut(x)
        branch = self.unit2(self.unit1(x))
        if self.branch_scale is not None:
            branch = self.branch_scale.get_value() * branch
        return materialize(self.act(branch + skip))
