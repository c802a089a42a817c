"""Freezing BatchNorm for fine-tuning, as Keras' `layer.trainable = False` does for BN: the
running statistics are used and not updated, and scale and offset are not trained.

No registration is needed: the measurement core keeps a BatchNorm in inference mode in training
when it is in inference mode and holds no trainable `nnx.Param`, which is what
`freeze_batchnorm` leaves (`use_running_average=True`, scale and bias as `FrozenParam`)."""
from __future__ import annotations

import math

import numpy as np
from flax import nnx

from ..instrument.registry import ScannedStack, kind_of


class FrozenParam(nnx.Variable):
    """A parameter excluded from training (`nnx.Param` filters do not select it)."""


def freeze_batchnorm(model: nnx.Module) -> int:
    """Freezes every BatchNorm of `model` in place, as Keras' `trainable = False` does.

    Each BatchNorm gets `use_running_average=True` and its scale and bias become `FrozenParam`:
    `gf.train` then leaves its statistics, scale and offset unchanged, and `gf.probe` runs it
    in inference mode.

    Args:
      model: an NNX model.

    Returns:
      The number of BatchNorm layers frozen: a BatchNorm in the block of a scanned stack (its
      arrays stacked, one slice per block) counts once per block, as in the unrolled model.

    Example:
      >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)),
      ...                        nnx.BatchNorm(8, rngs=nnx.Rngs(0)))
      >>> gf.freeze_batchnorm(model)
      1
      >>> model.layers[1].use_running_average, type(model.layers[1].scale).__name__
      (True, 'FrozenParam')
    """
    return _set(model, frozen=True)


def unfreeze_batchnorm(model: nnx.Module) -> int:
    """Undoes `freeze_batchnorm` in place: batch statistics in training, scale and offset trained.

    Args:
      model: an NNX model.

    Returns:
      The number of BatchNorm layers unfrozen (counted as `freeze_batchnorm` counts them).

    Example:
      >>> bn = nnx.BatchNorm(8, rngs=nnx.Rngs(0))
      >>> gf.freeze_batchnorm(bn), gf.unfreeze_batchnorm(bn)
      (1, 1)
      >>> bn.use_running_average, type(bn.scale).__name__
      (False, 'Param')
    """
    return _set(model, frozen=False)


def batchnorm_arrays(model: nnx.Module) -> dict:
    """Copies of every BatchNorm's statistics, scale and bias, to check what fine-tuning changed.

    Args:
      model: an NNX model.

    Returns:
      {(module path, "mean" | "var" | "scale" | "bias"): numpy array}, one entry per BatchNorm
      and array.

    Example:
      >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)),
      ...                        nnx.BatchNorm(8, rngs=nnx.Rngs(0)))
      >>> before = batchnorm_arrays(model)
      >>> sorted(k for _, k in before), before[(("layers", 1), "var")].shape
      (['bias', 'mean', 'scale', 'var'], (8,))
    """
    out = {}
    for path, m in nnx.iter_modules(model):
        if isinstance(m, nnx.BatchNorm):
            for k in ("mean", "var", "scale", "bias"):
                out[(tuple(path), k)] = np.asarray(getattr(m, k).get_value())
    return out


def _copies(model) -> dict[tuple, int]:
    """{path of a scanning registered stack's block: how many blocks it stands for}."""
    return {tuple(p) + _block_path(m, spec): spec.length(m)
            for p, m in nnx.iter_modules(model)
            if isinstance(spec := kind_of(m), ScannedStack)}


def _block_path(stack, spec) -> tuple:
    block = spec.block(stack)
    return next(tuple(p) for p, m in nnx.iter_modules(stack) if m is block)


def _set(model, *, frozen: bool) -> int:
    copies = _copies(model)
    count = 0
    for path, m in nnx.iter_modules(model):
        if not isinstance(m, nnx.BatchNorm):
            continue
        m.use_running_average = frozen
        new_type = FrozenParam if frozen else nnx.Param
        for name in ("scale", "bias"):
            v = getattr(m, name, None)
            if v is not None and not isinstance(v, new_type):
                setattr(m, name, new_type(v.get_value()))
        # a stacked BatchNorm is one layer per block (of every scanned stack around it)
        count += math.prod(n for block, n in copies.items() if tuple(path)[:len(block)] == block)
    return count
