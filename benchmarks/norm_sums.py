"""Sum of squares on XLA:CPU: the plain `sum(a * a)` against the 2^80-rescaled sum gradflow
also takes for exact norms below 1e-19 (`gradflow/instrument/tap.py`), each jitted alone.

    python benchmarks/norm_sums.py        # a 24×256×256 float32 array (one scanned MLP kernel)

Prints the median milliseconds of each variant over 200 calls.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.instrument.tap import square_sums

VARIANTS = {
    "plain sum(a*a)": lambda a: jnp.sum(jnp.square(a), axis=(1, 2)),
    "rescaled sum((2^80 a)^2)": lambda a: jnp.sum(jnp.square(a * 2.0 ** 80), axis=(1, 2)),
    "sum abs(a)": lambda a: jnp.sum(jnp.abs(a), axis=(1, 2)),
    "max abs(a)": lambda a: jnp.max(jnp.abs(a), axis=(1, 2)),
    "both (gradflow's square_sums)": lambda a: square_sums(a, (1, 2)),
}


def median_ms(fn, a, calls: int = 200) -> float:
    """Median wall milliseconds of `fn(a)` after one warm-up call."""
    f = jax.jit(fn)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main() -> None:
    a = jax.random.normal(jax.random.PRNGKey(0), (24, 256, 256))
    print(f"| variant (24×256×256 float32, {jax.default_backend()}) | ms |")
    print("|---|---|")
    for name, fn in VARIANTS.items():
        print(f"| {name} | {median_ms(fn, a):.3f} |")


if __name__ == "__main__":
    main()
