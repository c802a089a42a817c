"""What Lanczos' per-product tridiagonal solve costs as `max_iter` grows.

    python benchmarks/lanczos_solve.py        # a few seconds

A 46-parameter quadratic loss (random symmetric Hessian), `max_eigenvalue(method="lanczos",
rtol=1e-6)` jitted, at `max_iter` 100 and 1000 (it converges in the same number of products
either way); the median of 20 calls after the compiling one. Each product is cheap here, so
the time is the loop's own: the solve after each product.
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from gradflow.quantities import curvature


def main():
    n = 46
    a = jax.random.normal(jax.random.key(0), (n, n))
    hessian = (a + a.T) / 2
    loss = lambda w: 0.5 * w @ hessian @ w
    for max_iter in (100, 1000):
        f = jax.jit(lambda w, m=max_iter: curvature.max_eigenvalue(
            loss, w, method="lanczos", max_iter=m, rtol=1e-6))
        ev = jax.block_until_ready(f(jnp.ones(n)))
        times = []
        for _ in range(20):
            t = time.perf_counter()
            jax.block_until_ready(f(jnp.ones(n)))
            times.append(time.perf_counter() - t)
        print(f"max_iter {max_iter}: {int(ev.iterations)} products, "
              f"{1e3 * statistics.median(times):.2f} ms a call")


if __name__ == "__main__":
    main()
