"""One curvature record as `gf.value_and_grad(curvature=True)` takes it, by method: seconds a call.

    python benchmarks/curvature_record.py                      # plain CNN, Lanczos and power, ~5 min
    python benchmarks/curvature_record.py --methods lanczos --unroll 16   # straight-line, ~5 min

`gradflow.quantities.steps.measure_curvature` on the training loss of `gf.models.cnn(arch, 50,
width=16)` at init, one batch of 32 built-in images: `hess_max_ev` to rtol 1e-3 from a random
start (at most 100 products in a `lax.while_loop`, or with `--unroll K` exactly K products in
straight-line code), an 8-sample Hutchinson trace and the rows' block traces, jitted; the first
call (trace + compile + run) and the second are timed. malloc keeps freed memory
(`gradflow.host_memory`), as the command line runs.
"""
from __future__ import annotations

import argparse
import time

from gradflow.host_memory import reuse_freed_memory

reuse_freed_memory()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import gradflow as gf  # noqa: E402
from gradflow.instrument.steps import layout_for  # noqa: E402
from gradflow.probe import split_model  # noqa: E402
from gradflow.quantities.curvature import random_direction  # noqa: E402
from gradflow.quantities.rows import row_segments  # noqa: E402
from gradflow.quantities.steps import measure_curvature  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="plain")
    p.add_argument("--methods", default="lanczos,power")
    p.add_argument("--unroll", type=int, default=0, help="K > 0: exactly K products, unrolled")
    a = p.parse_args(argv)
    ds = gf.data.synthetic(seed=0)
    x, y = jnp.asarray(ds.x_train[:32]), jnp.asarray(ds.y_train[:32])
    model = gf.models.cnn(a.arch, 50, width=16, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    segments = row_segments(params, layout_for(graphdef, params, rest, x, model))

    def loss(p):
        return gf.losses.cross_entropy(nnx.merge(graphdef, p, rest, copy=True)(x), y)

    for method in a.methods.split(","):
        f = jax.jit(lambda p, v, method=method: measure_curvature(
            loss, p, segments, v, jax.random.key(0), samples=8, max_iter=a.unroll or 100,
            unroll=a.unroll > 0, method=method)[0])
        v = random_direction(params)
        t = time.perf_counter()
        jax.block_until_ready(f(params, v))
        first = time.perf_counter() - t
        t = time.perf_counter()
        out = jax.block_until_ready(f(params, v))
        print(f"{a.arch} {method}{f' unrolled {a.unroll}' if a.unroll else ''}: first call "
              f"{first:.1f} s, then {time.perf_counter() - t:.1f} s; hess_max_ev "
              f"{float(out['hess_max_ev']):.6g}, converged {bool(out['hess_max_ev_converged'])}",
              flush=True)


if __name__ == "__main__":
    main()
