"""BatchNorm for the zoo: `nnx.BatchNorm`, with its running statistics assigned whole.

Flax's BatchNorm writes `self.mean[...] = new`, and that indexed write asks the traced value for
its `.sharding`; under `jit` the resulting AttributeError message walks the whole trace, making
tracing quadratic in the number of BN layers. Assigning the whole value skips that check. The
arithmetic is Flax's own (`_compute_stats`, `_normalize`).
"""
from __future__ import annotations

import jax
from flax import nnx
from flax.nnx.nn.normalization import _canonicalize_axes, _compute_stats, _normalize


class BatchNorm(nnx.BatchNorm):
    """Same parameters, statistics, modes and results as `nnx.BatchNorm`.

    Takes `nnx.BatchNorm`'s arguments; only the running-statistics update differs (whole-value
    assignment), which keeps tracing linear in the number of BN layers.

    Example::

      bn = BatchNorm(16, rngs=nnx.Rngs(0))  # as nnx.BatchNorm(16, rngs=nnx.Rngs(0))
      y = bn(x)
    """

    def __call__(self, x, use_running_average=None, *, mask=None):
        use_running_average = (self.use_running_average if use_running_average is None
                               else use_running_average)
        if use_running_average is None:
            raise ValueError("BatchNorm needs use_running_average (set it, or use nnx.view)")
        feature_axes = _canonicalize_axes(x.ndim, self.axis)
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        scale = self.scale.get_value() if self.scale is not None else None
        bias = self.bias.get_value() if self.bias is not None else None
        x, mean, var, scale, bias = self.promote_dtype(
            (x, self.mean.get_value(), self.var.get_value(), scale, bias), dtype=self.dtype)
        if not use_running_average:
            mean, var = _compute_stats(x, reduction_axes, dtype=self.dtype,
                                       axis_name=self.axis_name,
                                       axis_index_groups=self.axis_index_groups,
                                       use_fast_variance=self.use_fast_variance, mask=mask)
            m = self.momentum
            self.mean.set_value(jax.lax.stop_gradient(m * self.mean.get_value() + (1 - m) * mean))
            self.var.set_value(jax.lax.stop_gradient(m * self.var.get_value() + (1 - m) * var))
        return _normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype,
                          self.epsilon)
