"""Freezing BatchNorm for fine-tuning, as Keras' `layer.trainable = False` does for BN: the
running statistics are used and not updated, and scale and offset are not trained.

No registration is needed: the measurement core keeps a BatchNorm in inference mode in training
when it is in inference mode and holds no trainable `nnx.Param`, which is what
`freeze_batchnorm` leaves (`use_running_average=True`, scale and bias as `FrozenParam`)."""
from __future__ import annotations

import numpy as np
from flax import nnx


class FrozenParam(nnx.Variable):
    """A parameter excluded from training (`nnx.Param` filters do not select it)."""


def freeze_batchnorm(model: nnx.Module) -> int:
    """Freezes every BatchNorm of `model` in place; returns how many. `gf.train` then leaves
    their statistics, scale and offset unchanged, and `gf.probe` runs them in inference mode."""
    return _set(model, frozen=True)


def unfreeze_batchnorm(model: nnx.Module) -> int:
    """Undoes `freeze_batchnorm`: batch statistics in training, scale and offset trained."""
    return _set(model, frozen=False)


def batchnorm_arrays(model: nnx.Module) -> dict:
    """{(module path, "mean" | "var" | "scale" | "bias"): numpy copy} for every BatchNorm of
    `model`, to check what fine-tuning changed."""
    out = {}
    for path, m in nnx.iter_modules(model):
        if isinstance(m, nnx.BatchNorm):
            for k in ("mean", "var", "scale", "bias"):
                out[(tuple(path), k)] = np.asarray(getattr(m, k).get_value())
    return out


def _set(model, *, frozen: bool) -> int:
    count = 0
    for _, m in nnx.iter_modules(model):
        if not isinstance(m, nnx.BatchNorm):
            continue
        m.use_running_average = frozen
        new_type = FrozenParam if frozen else nnx.Param
        for name in ("scale", "bias"):
            v = getattr(m, name, None)
            if v is not None and not isinstance(v, new_type):
                setattr(m, name, new_type(v.get_value()))
        count += 1
    return count
