"""What gradient noise every 10 steps costs a training run: `gf.train` with and without
`noise_every=10`, on the depth-50 CNNs, compiled first.

    python benchmarks/noise_overhead.py               # residual_bn and plain, 60 steps each
    python benchmarks/noise_overhead.py --quick       # tiny, checks that it runs

Each configuration trains once to compile, then `--repeats` times timed (wall clock, median),
alternating the two; `log_every=10` in both, so the plain run records the same steps.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import gradflow as gf


def run(arch, depth, width, steps, noise, batches):
    model = gf.models.cnn(arch, depth, width=width, rngs=nnx.Rngs(0))
    t = time.perf_counter()
    hist = gf.train(model, batches, steps=steps, optimizer=optax.sgd(0.01, momentum=0.9),
                    log_every=10, noise_every=10 if noise else None)
    jax.block_until_ready(hist["grad_norm"])
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    depth, width, steps = (6, 4, 20) if a.quick else (50, 16, 60)
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 16, 16, 3))
    batches = [(x, jnp.arange(32) % 10)] * steps
    print(f"depth {depth}, width {width}, batch 32, {steps} steps, log_every 10")
    print("| arch | train s | train + noise_every=10 s | ratio |")
    print("|---|---|---|---|")
    for arch in ("residual_bn", "plain"):
        for noise in (False, True):  # compile both first
            run(arch, depth, width, steps, noise, batches)
        times = {False: [], True: []}
        for _ in range(a.repeats):
            for noise in (False, True):
                times[noise].append(run(arch, depth, width, steps, noise, batches))
        bare, noisy = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {arch} | {bare:.2f} | {noisy:.2f} | {noisy / bare:.2f} |", flush=True)


if __name__ == "__main__":
    main()
