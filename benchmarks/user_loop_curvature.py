"""Curvature every k steps in a user's loop: each measurement from a random vector, against each
from the last one's Ritz vector (`gf.CurvatureStart`).

    python benchmarks/user_loop_curvature.py                 # plain and residual_bn, ~4 minutes
    python benchmarks/user_loop_curvature.py --archs plain --steps 30

Two copies of `gf.models.cnn(arch, 50, width=16)` train alike (SGD lr 0.01, momentum 0.9,
`nnx.Optimizer`, batches of 32 built-in synthetic images) in `nnx.jit` steps as a user writes
them: a bare step (`nnx.value_and_grad`), and every `--every` steps a measuring one through
`gf.value_and_grad(loss_fn, curvature=True)`: for copy "fresh" without a start (Lanczos from a
random vector, at most 100 products), for copy "warm" with `curvature_start=` a
`gf.CurvatureStart` (at most 20 products). Both measure at the same points (their weights stay
bit-identical). Printed per measurement: seconds of each measuring step (after the first,
which compiles), `hess_max_ev` of each and their relative difference; then the median seconds
and their ratio. malloc keeps freed memory (`gradflow.host_memory`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from gradflow.host_memory import reuse_freed_memory

reuse_freed_memory()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import gradflow as gf  # noqa: E402


def loss_fn(model, x, y):
    return gf.losses.cross_entropy(model(x), y)


def run(arch: str, steps: int, every: int) -> dict:
    ds = gf.data.synthetic(seed=0, n_train=32 * 8, n_test=8)
    batches = [(jax.numpy.asarray(ds.x_train[i * 32:(i + 1) * 32]),
                jax.numpy.asarray(ds.y_train[i * 32:(i + 1) * 32])) for i in range(8)]
    models = {k: gf.models.cnn(arch, 50, width=16, rngs=nnx.Rngs(0)) for k in ("fresh", "warm")}
    opts = {k: nnx.Optimizer(m, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
            for k, m in models.items()}
    start = gf.CurvatureStart(models["warm"])
    measure = gf.value_and_grad(loss_fn, curvature=True)

    @nnx.jit
    def bare(model, opt, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        opt.update(model, grads)
        return loss

    @nnx.jit
    def fresh(model, opt, x, y):
        loss, grads, snap = measure(model, x, y)
        opt.update(model, grads)
        return snap

    @nnx.jit
    def warm(model, opt, start, x, y):
        loss, grads, snap = measure(model, x, y, curvature_start=start)
        opt.update(model, grads)
        return snap

    rows = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        if i % every:
            for k in models:
                bare(models[k], opts[k], x, y).block_until_ready()
            continue
        row = {"step": i}
        for k in (("fresh", "warm") if (i // every) % 2 == 0 else ("warm", "fresh")):
            t = time.perf_counter()
            snap = (fresh(models[k], opts[k], x, y) if k == "fresh"
                    else warm(models[k], opts[k], start, x, y))
            snap = jax.device_get(snap)
            row[k] = time.perf_counter() - t
            row[k + "_ev"] = float(snap["hess_max_ev"])
            row[k + "_converged"] = bool(snap["hess_max_ev_converged"])
        rows.append(row)
        print(f"{arch} step {i}: fresh {row['fresh']:.2f} s ({row['fresh_ev']:.6g}), warm "
              f"{row['warm']:.2f} s ({row['warm_ev']:.6g}), relative difference "
              f"{abs(row['warm_ev'] - row['fresh_ev']) / abs(row['fresh_ev']):.1e}"
              f"{'' if row['fresh_converged'] and row['warm_converged'] else ' (not converged)'}",
              flush=True)
    same = all(bool(np.array_equal(a, b)) for a, b in zip(
        jax.tree.leaves(nnx.state(models["fresh"], nnx.Param)),
        jax.tree.leaves(nnx.state(models["warm"], nnx.Param))))
    later = rows[1:]
    med = {k: float(np.median([r[k] for r in later])) for k in ("fresh", "warm")}
    print(f"{arch}: median of measurements 2..{len(rows)}: fresh {med['fresh']:.2f} s, warm "
          f"{med['warm']:.2f} s, warm / fresh {med['warm'] / med['fresh']:.2f}; weights "
          f"identical: {same}", flush=True)
    return {"arch": arch, "rows": rows, "median_s": med, "weights_identical": same}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="plain,residual_bn")
    p.add_argument("--steps", type=int, default=61)
    p.add_argument("--every", type=int, default=10)
    args = p.parse_args(argv)
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    for arch in args.archs.split(","):
        run(arch, args.steps, args.every)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
