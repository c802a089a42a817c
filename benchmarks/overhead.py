"""Instrumentation overhead: the instrumented train step against the bare jitted step.

    python benchmarks/overhead.py            # depth-50 CNN of each arch + a depth-50 MLP
    python benchmarks/overhead.py --quick    # residual_bn CNN only, < 1 minute

Same model, data and optimizer; after warm-up the two compiled steps run interleaved (bare,
instrumented, bare, ...) and the median step time of each is reported. The last line is
`overhead <ratio>` (instrumented / bare) for the depth-50 residual_bn CNN.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradflow as gf
from gradflow.losses import LOSSES
from gradflow.instrument.steps import layout_for, train_steps


def measure(model, x, y, repeats: int) -> tuple[float, float]:
    """Median seconds per (bare, instrumented) step, interleaved after warm-up."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(0.01)
    opt = tx.init(params)
    instrumented, bare = train_steps(graphdef, layout_for(graphdef, params, rest, x), 
                                     *LOSSES["cross_entropy"], tx)
    times = {"bare": [], "inst": []}
    state = (params, rest, opt)
    for i in range(repeats + 3):
        for name, step in (("bare", bare), ("inst", instrumented)):
            t = time.perf_counter()
            out = step(*state, x, y)
            jax.block_until_ready(out)
            if i >= 3:  # warm-up: compile and first runs
                times[name].append(time.perf_counter() - t)
            state = out[:3]
    return float(np.median(times["bare"])), float(np.median(times["inst"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args(argv)
    x = jax.random.normal(jax.random.PRNGKey(0), (a.batch, 16, 16, 3))
    y = jnp.arange(a.batch) % 10
    configs = [("cnn", "residual_bn")] if a.quick else (
        [("cnn", arch) for arch in gf.models.ARCHS] + [("mlp", "residual_bn")])
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {a.batch}")
    print("| model | arch | depth | bare ms | instrumented ms | ratio |")
    print("|---|---|---|---|---|---|")
    ratio = None
    for kind, arch in configs:
        if kind == "cnn":
            model = gf.models.cnn(arch, 50, width=16, rngs=nnx.Rngs(0))
        else:
            model = gf.models.mlp(arch, 50, width=256, in_features=768, num_classes=10,
                                  rngs=nnx.Rngs(0))
        bare, inst = measure(model, x, y, 10 if a.quick else a.repeats)
        print(f"| {kind} | {arch} | 50 | {bare * 1e3:.1f} | {inst * 1e3:.1f} | {inst / bare:.3f} |",
              flush=True)
        if (kind, arch) == ("cnn", "residual_bn"):
            ratio = inst / bare
    print(f"overhead {ratio:.3f}")


if __name__ == "__main__":
    main()
