"""The zoo's networks: a stem, a pyramid of stages of repeated blocks, and a head.

`depth` counts weight layers on the longest path, as He et al. count ResNet-56: the stem, two per
residual block or one per plain unit, and the output layer; projection shortcuts are not counted,
and a separable conv counts once.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from .blocks import ResidualBlock, Unit, initial_branch_scale
from .layers import make_conv
from .options import (
    ARCHS,
    BN_POSITIONS,
    CONVS,
    NORMALIZED,
    RESIDUAL,
    STACKS,
    activation_fn,
    check_choice,
    check_positive_int,
    initializer,
)
from .stack import Stack

MAX_DEPTH = 10_000


class Network(nnx.Module):
    """Stem -> stages (each a pyramid level: one transition block, then a Stack) -> head.

    Args:
      stem: the first unit.
      stages: a list of Stages.
      head: the output layer.
      pool: global average pooling over H and W before the head (CNNs).
      flatten: flatten every axis but the batch axis before the stem (MLPs).
    """

    def __init__(self, stem, stages, head, *, pool: bool = False, flatten: bool = False):
        self.stem = stem
        self.stages = nnx.List(stages)
        self.head = head
        self.pool = pool  # global average pooling before the head (CNNs)
        self.flatten = flatten  # flatten all but the batch axis before the stem (MLPs)

    def __call__(self, x):
        if self.flatten:
            x = x.reshape(x.shape[0], -1)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        if self.pool:
            x = jnp.mean(x, axis=(1, 2))  # global average pooling
        return self.head(x)


class Stage(nnx.Module):
    """An optional first block that changes shape, then identical blocks in a Stack.

    Args:
      first: the transition block, or None.
      rest: the Stack of identical blocks, or None.
    """

    def __init__(self, first, rest):
        self.first = first
        self.rest = rest

    def __call__(self, x):
        if self.first is not None:
            x = self.first(x)
        return self.rest(x) if self.rest is not None else x


def _check_common(arch, depth, width, init, activation, stack, stages):
    check_choice("arch", arch, ARCHS)
    check_positive_int("depth", depth)
    check_positive_int("width", width)
    check_positive_int("stages", stages)
    initializer(init)
    activation_fn(activation)
    check_choice("stack", stack, STACKS)
    if depth > MAX_DEPTH:
        raise ValueError(f"depth={depth} is above the supported maximum of {MAX_DEPTH}")


def hidden_blocks(arch: str, depth: int) -> int:
    """The number of hidden blocks (units or residual blocks) a depth gives.

    Args:
      arch: a name in `ARCHS`.
      depth: weight layers on the longest path (stem and output layer included).

    Returns:
      depth - 2 for plain and bn, (depth - 2) / 2 for residual archs (`RESIDUAL`).

    Raises:
      ValueError: if depth < 2, or odd for a residual arch.

    Example:
      >>> gf.models.hidden_blocks("residual", 20), gf.models.hidden_blocks("plain", 20)
      (9, 18)
    """
    residual = arch in RESIDUAL
    hidden = depth - 2  # stem and output layer
    if hidden < 0:
        raise ValueError(f"depth={depth} is too small for arch={arch!r}: the minimum is 2 "
                         "(stem and output layer)")
    if residual and hidden % 2:
        raise ValueError(f"depth={depth} cannot be realized by arch={arch!r}: residual blocks have "
                         "2 weight layers, so depth must be even (stem + 2 per block + output)")
    return hidden // 2 if residual else hidden


# On CPU, compile time grows super-linearly with unrolled depth (depth 200: 32 s to the first
# probe against 2 s scanned; depth 1,000: over 120 s). Scanned CNN steps run as fast as
# unrolled ones in gradflow's steps, which rewrite their convolutions (`conv_layout`): at depth
# 128 a 40-step residual_bn run takes 60 s unrolled against 29 s scanned, compiles included.
# "auto" unrolls CNNs on CPU up to this depth so that a seed keeps giving the same initial
# weights there (a scanned stack draws them differently). Numbers: benchmarks/RESULTS.md.
CPU_UNROLL_MAX_DEPTH = 128


def _use_scan(stack: str, depth: int, conv: bool = True) -> bool:
    if stack == "auto":
        return jax.default_backend() != "cpu" or not conv or depth > CPU_UNROLL_MAX_DEPTH
    return stack == "scan"


def _split_evenly(n: int, parts: int) -> list[int]:
    """n blocks over `parts` stages, earlier stages taking the remainder."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _stages(make_block, n_blocks: int, width: int, n_stages: int, scan: bool, rngs) -> list[Stage]:
    """A pyramid: stage s has width * 2**s; every stage after the first starts with a strided block."""
    stages, features = [], width
    for s, count in enumerate(_split_evenly(n_blocks, n_stages)):
        out = width * 2 ** s
        first = None
        if s > 0 and count > 0:
            first, count = make_block(features, out, 2, rngs), count - 1
            features = out
        rest = Stack(lambda r, f=features: make_block(f, f, 1, r), count, scan=scan, rngs=rngs) \
            if count else None
        stages.append(Stage(first, rest))
    return stages


def _block_factory(arch, n_blocks, make_layer, make_projection, activation, norm_after_act=False):
    norm = arch in NORMALIZED
    if arch in RESIDUAL:
        scale = initial_branch_scale(n_blocks) if arch == "residual_scaled" else None
        return lambda fin, fout, strides, rngs: ResidualBlock(
            make_layer, make_projection, fin, fout, strides=strides, norm=norm,
            activation=activation, branch_scale=scale, rngs=rngs)
    return lambda fin, fout, strides, rngs: Unit(
        make_layer(fin, fout, strides, rngs=rngs), fout, norm=norm, activation=activation,
        norm_after_act=norm_after_act, rngs=rngs)


def cnn(arch: str, depth: int, *, width: int = 16, in_channels: int = 3, num_classes: int = 10,
        conv: str = "standard", init: str = "lecun", activation: str = "relu", stages: int = 1,
        stack: str = "auto", bn_position: str = "before_act", rngs: nnx.Rngs) -> Network:
    """A 3x3-conv network on NHWC images, ResNet-CIFAR style.

    Stem conv (3x3, `width` channels) -> hidden blocks split over `stages` (stage s has
    width*2**s channels; each later stage starts with a stride-2 block, with a projection
    shortcut in residual archs) -> global average pooling -> Linear(num_classes). With BN before
    the activation, the convs have no bias.

    Args:
      arch: "plain", "residual", "residual_scaled", "bn" or "residual_bn" (`ARCHS`).
      depth: weight layers on the longest path (stem, hidden layers, head), 2 to `MAX_DEPTH`;
        even for residual archs.
      width: the stem's channels (those of the first stage).
      in_channels: the input's channels.
      num_classes: the number of outputs.
      conv: "standard", or "separable" to make every hidden 3x3 conv depthwise-separable (the
        stem stays standard, as in Xception).
      init: kernel initializer: "lecun", "he", "glorot" or "orthogonal".
      activation: a name in `ACTIVATIONS` ("relu", "tanh", "gelu", ...).
      stages: the number of pyramid levels; each needs at least one hidden block.
      stack: how repeated blocks run: "unrolled", "scan", or "auto" (unrolled on CPU up to
        depth 128, scanned otherwise).
      bn_position: "before_act" (Conv(no bias) -> BN -> act) or, arch "bn" only, "after_act"
        (Conv(with bias) -> act -> BN).
      rngs: the `nnx.Rngs` to initialize from.

    Returns:
      A Network mapping (batch, H, W, in_channels) images to (batch, num_classes) logits.

    Raises:
      ValueError: for an invalid choice, or a depth or stage count the arch cannot realize.

    Example:
      >>> model = gf.models.cnn("residual_bn", 4, width=4, stages=1, rngs=nnx.Rngs(0))
      >>> model(jnp.ones((2, 8, 8, 3))).shape
      (2, 10)
    """
    _check_common(arch, depth, width, init, activation, stack, stages)
    check_choice("conv", conv, CONVS)
    check_choice("bn_position", bn_position, BN_POSITIONS)
    if bn_position == "after_act" and arch != "bn":
        raise ValueError(f"bn_position='after_act' needs arch='bn', got arch={arch!r}")
    after = bn_position == "after_act"
    check_positive_int("in_channels", in_channels)
    check_positive_int("num_classes", num_classes)
    n_blocks = hidden_blocks(arch, depth)
    if 1 < stages > n_blocks:  # an empty stage would leave the head at the wrong width
        raise ValueError(f"stages={stages} needs at least {stages} hidden blocks; depth={depth} "
                         f"gives {n_blocks} for arch={arch!r}")
    kinit, norm = initializer(init), arch in NORMALIZED
    layer = partial(make_conv, conv, kernel_init=kinit, use_bias=not norm or after)

    def make_layer(fin, fout, strides, *, rngs):
        return layer(fin, fout, (3, 3), strides=strides, rngs=rngs)

    def make_projection(fin, fout, strides, *, rngs):
        return nnx.Conv(fin, fout, (1, 1), strides=strides, use_bias=not norm, kernel_init=kinit,
                        rngs=rngs)

    make_block = _block_factory(arch, n_blocks, make_layer, make_projection, activation, after)
    stem = Unit(nnx.Conv(in_channels, width, (3, 3), use_bias=not norm or after, kernel_init=kinit,
                         rngs=rngs), width, norm=norm, activation=activation,
                norm_after_act=after, rngs=rngs)
    body = _stages(make_block, n_blocks, width, stages, _use_scan(stack, depth), rngs)
    head = nnx.Linear(width * 2 ** (stages - 1), num_classes, kernel_init=kinit, rngs=rngs)
    return Network(stem, body, head, pool=True)


def mlp(arch: str, depth: int, *, width: int, in_features: int, num_classes: int,
        init: str = "lecun", activation: str = "relu", use_bias: bool = True, stack: str = "auto",
        rngs: nnx.Rngs) -> Network:
    """A fully connected network: Linear(in, width) unit -> hidden blocks -> Linear(num_classes).

    Inputs with more than one feature axis are flattened. With BN, every layer but the head
    has no bias.

    Args:
      arch: "plain", "residual", "residual_scaled", "bn" or "residual_bn" (`ARCHS`).
      depth: weight layers on the longest path (stem, hidden layers, head), 2 to `MAX_DEPTH`;
        even for residual archs.
      width: the hidden layers' width.
      in_features: the number of input features (after flattening).
      num_classes: the number of outputs.
      init: kernel initializer: "lecun", "he", "glorot" or "orthogonal".
      activation: a name in `ACTIVATIONS` ("relu", "tanh", "gelu", ...).
      use_bias: biases in the layers (with BN, in the head only).
      stack: how repeated blocks run: "unrolled", "scan", or "auto" (scanned).
      rngs: the `nnx.Rngs` to initialize from.

    Returns:
      A Network mapping (batch, ...) inputs with `in_features` elements per example to
      (batch, num_classes) outputs.

    Raises:
      ValueError: for an invalid choice, or a depth the arch cannot realize.

    Example:
      >>> model = gf.models.mlp("residual_bn", 4, width=8, in_features=4 * 4 * 3,
      ...                       num_classes=10, rngs=nnx.Rngs(0))
      >>> model(jnp.ones((2, 4, 4, 3))).shape
      (2, 10)
    """
    _check_common(arch, depth, width, init, activation, stack, 1)
    check_positive_int("in_features", in_features)
    check_positive_int("num_classes", num_classes)
    n_blocks = hidden_blocks(arch, depth)
    kinit, norm = initializer(init), arch in NORMALIZED
    bias = use_bias and not norm

    def make_layer(fin, fout, strides, *, rngs):
        return nnx.Linear(fin, fout, use_bias=bias, kernel_init=kinit, rngs=rngs)

    make_block = _block_factory(arch, n_blocks, make_layer, make_layer, activation)
    stem = Unit(nnx.Linear(in_features, width, use_bias=bias, kernel_init=kinit, rngs=rngs), width,
                norm=norm, activation=activation, rngs=rngs)
    body = _stages(make_block, n_blocks, width, 1, _use_scan(stack, depth, conv=False), rngs)
    head = nnx.Linear(width, num_classes, use_bias=use_bias, kernel_init=kinit, rngs=rngs)
    return Network(stem, body, head, flatten=True)
