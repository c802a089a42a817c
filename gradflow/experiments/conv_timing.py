"""Forward+backward time of one standard against one depthwise-separable 3x3 conv layer.

Both layers map `width` channels to `width` channels on a (batch, size, size, width) input with
the zoo's own `make_conv`; one timed call is a jitted gradient of sum(y^2) with respect to the
kernels and the input (the forward pass and the full backward pass). Compilation and `warmup`
calls are excluded; the two kinds run interleaved and the median of `repeats` calls is kept, so
a load change on the machine affects both alike.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..models import make_conv

KINDS = ("standard", "separable")


def _grad_fn(kind: str, width: int, seed: int):
    layer = make_conv(kind, width, width, (3, 3), kernel_init=nnx.initializers.lecun_normal(),
                      rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(layer)

    def loss(params, x):
        return jnp.sum(jnp.square(nnx.merge(graphdef, params)(x)))

    return jax.jit(jax.grad(loss, argnums=(0, 1))), params


def time_convs(width: int, *, batch: int = 32, size: int = 16, repeats: int = 10,
               warmup: int = 2, seed: int = 0) -> dict[str, float]:
    """Times one forward+backward call of a standard and of a separable 3x3 conv layer.

    Args:
      width: the input and output channels.
      batch, size: the input is (batch, size, size, width), drawn from `seed`.
      repeats: timed calls per kind (the median is kept).
      warmup: untimed calls per kind before them (the first one compiles).
      seed: the seed of the input and the kernels.

    Returns:
      {"standard": seconds, "separable": seconds}, the median of each.

    Example:
      >>> times = time_convs(64, batch=16)  # doctest: +SKIP
      >>> times["standard"] / times["separable"]  # speed-up  # doctest: +SKIP
    """
    x = jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, width))
    fns = {k: _grad_fn(k, width, seed) for k in KINDS}
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for i in range(warmup + repeats):
        for k, (fn, params) in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(params, x))
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}
