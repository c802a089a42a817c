"""What curvature costs against a gradient, on one network and batch, each call jitted alone.

    python benchmarks/curvature_cost.py                 # depth-50 residual_bn CNN, width 16
    python benchmarks/curvature_cost.py --calls 5 --depth 50 --batch 32 --size 32

Prints the median wall milliseconds (after one warm-up call) of: the gradient; one
Hessian-vector product (`gradflow.quantities.curvature.hvp`: linearization plus one product);
power iteration stopped at exactly k products (`max_eigenvalue`, rtol 0), as a
`lax.while_loop` and unrolled; a Hutchinson trace of n Rademacher samples in one `vmap`; and
each of those divided by the gradient.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import gradflow as gf
from gradflow.probe import split_model
from gradflow.quantities import curvature as cv


def median_ms(fn, *args, calls: int) -> float:
    """Median wall milliseconds of the jitted `fn(*args)` after one warm-up call."""
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="residual_bn")
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32, help="image side")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--samples", type=int, nargs="*", default=[8], help="Hutchinson samples")
    args = ap.parse_args()

    model = gf.models.cnn(args.arch, args.depth, width=args.width, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    x = jax.random.normal(jax.random.key(1), (args.batch, args.size, args.size, 3))
    y = jnp.arange(args.batch) % 10
    loss = lambda p: gf.losses.cross_entropy(nnx.merge(graphdef, p, rest, copy=True)(x), y)
    v = jax.tree.map(jnp.ones_like, params)
    n_params = sum(a.size for a in jax.tree.leaves(params))

    rows = [("gradient", lambda p: jax.grad(loss)(p)),
            ("one hvp", lambda p: cv.hvp(loss, p, v))]
    for k, unroll in ((2, False), (2, True), (4, True)):
        rows.append((f"max_eigenvalue, {k} products, {'unrolled' if unroll else 'while_loop'}",
                     lambda p, k=k, u=unroll: cv.max_eigenvalue(loss, p, rtol=0.0, max_iter=k,
                                                                unroll=u).value))
    for n in args.samples:
        rows.append((f"trace, {n} samples, one vmap",
                     lambda p, n=n: cv.trace(loss, p, samples=n, chunk=n).value))

    print(f"{args.arch} depth {args.depth} width {args.width}, {n_params} parameters, batch "
          f"{args.batch} of {args.size}x{args.size}x3, {jax.default_backend()} "
          f"({jax.devices()[0].device_kind}), median of {args.calls} calls")
    print("| computation | ms | × gradient |")
    print("|---|---|---|")
    base = None
    for name, fn in rows:
        ms = median_ms(fn, params, calls=args.calls)
        base = base or ms
        print(f"| {name} | {ms:.1f} | {ms / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
