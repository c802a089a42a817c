"""What gradient noise (and curvature) every 10 steps costs a training run: `gf.train` with and
without `noise_every=10` (and `curvature_every=10`), on the depth-50 CNNs, compiled first.

    python benchmarks/noise_overhead.py               # residual_bn and plain, 60 steps each
    python benchmarks/noise_overhead.py --curvature   # also noise and curvature every 10 steps
    python benchmarks/noise_overhead.py --quick       # tiny, checks that it runs

Each configuration trains once to compile, then `--repeats` times timed (wall clock, median),
alternating them; `log_every=10` in all, so the plain run records the same steps.
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


CONFIGS = {"train": {}, "noise": {"noise_every": 10},
           "noise + curvature": {"noise_every": 10, "curvature_every": 10}}


TX = optax.sgd(0.01, momentum=0.9)  # gf.train's compiled steps are cached per optimizer


def run(arch, depth, width, steps, options, batches):
    model = gf.models.cnn(arch, depth, width=width, rngs=nnx.Rngs(0))
    t = time.perf_counter()
    hist = gf.train(model, batches, steps=steps, optimizer=TX,
                    log_every=10, **options)
    jax.block_until_ready(hist["grad_norm"])
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--curvature", action="store_true", help="also noise and curvature")
    a = p.parse_args(argv)
    depth, width, steps = (6, 4, 20) if a.quick else (50, 16, 60)
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 16, 16, 3))
    batches = [(x, jnp.arange(32) % 10)] * steps
    configs = [c for c in CONFIGS if a.curvature or c != "noise + curvature"]
    print(f"depth {depth}, width {width}, batch 32, {steps} steps, log_every 10")
    print("| arch | " + " | ".join(f"{c} s" for c in configs) + " | ratios |")
    print("|---|" + "---|" * len(configs) + "---|")
    for arch in ("residual_bn", "plain"):
        for c in configs:  # compile each first
            run(arch, depth, width, steps, CONFIGS[c], batches)
        times = {c: [] for c in configs}
        for _ in range(a.repeats):
            for c in configs:
                times[c].append(run(arch, depth, width, steps, CONFIGS[c], batches))
        med = {c: statistics.median(times[c]) for c in configs}
        ratios = " / ".join(f"{med[c] / med['train']:.2f}" for c in configs[1:])
        print(f"| {arch} | " + " | ".join(f"{med[c]:.2f}" for c in configs)
              + f" | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
