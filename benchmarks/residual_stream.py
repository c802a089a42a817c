"""The residual-stream barrier (gradflow/models/materialize.py): train steps with and without it.

    python benchmarks/residual_stream.py            # depth-50 residual and residual_bn CNNs
    python benchmarks/residual_stream.py --repeats 10 --archs residual_bn --stack scan

Both variants of each step are compiled in this process (without the barrier: residual blocks
traced with `materialize` replaced by the identity), then timed interleaved; medians after
warm-up. Also reports compile time and the largest fused computation in the compiled step
(lines of HLO), which grows with depth when XLA recomputes the stream.
"""
from __future__ import annotations

import argparse
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradflow as gf
from gradflow.losses import LOSSES
from gradflow.models import blocks
from gradflow.instrument.steps import layout_for, train_steps


def compiled_steps(arch, depth, stack, x, y, barrier: bool):
    """(compiled bare, compiled instrumented, state, compile s, largest fusion) for one variant."""
    saved = blocks.materialize
    if not barrier:
        blocks.materialize = lambda v: v
    try:
        model = gf.models.cnn(arch, depth, width=16, stack=stack, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx = optax.sgd(0.01)
        state = (params, rest, tx.init(params))
        # a fresh optimizer object per variant: train_steps caches on it, so each variant traces
        inst, bare = train_steps(graphdef, layout_for(graphdef, params, rest, x),
                                 *LOSSES["cross_entropy"], tx)
        t = time.perf_counter()
        out = [f.lower(*state, x, y).compile() for f in (bare, inst)]
        took = time.perf_counter() - t
    finally:
        blocks.materialize = saved
    text = out[0].as_text()
    largest = max(b.count("\n") for b in re.split(r"\n(?=\S)", text)
                  if b.startswith("%fused_computation"))
    return out[0], out[1], state, took, largest


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="residual,residual_bn")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--stack", default="unrolled", choices=["unrolled", "scan"])
    a = p.parse_args(argv)
    x = jax.random.normal(jax.random.PRNGKey(0), (a.batch, 16, 16, 3))
    y = jnp.arange(a.batch) % 10
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {a.batch}, "
          f"depth {a.depth}, {a.stack}; {a.repeats} interleaved repetitions after 3 warm-up")
    print("| arch | barrier | compile s (bare + instrumented) | largest fusion (HLO lines) | "
          "bare ms | instrumented ms |")
    print("|---|---|---|---|---|---|")
    for arch in a.archs.split(","):
        variants = {b: compiled_steps(arch, a.depth, a.stack, x, y, b) for b in (False, True)}
        times = {(b, k): [] for b in variants for k in ("bare", "inst")}
        states = {b: v[2] for b, v in variants.items()}
        for i in range(a.repeats + 3):
            for b, (bare, inst, *_rest) in variants.items():
                for k, step in (("bare", bare), ("inst", inst)):
                    t = time.perf_counter()
                    out = jax.block_until_ready(step(*states[b], x, y))
                    if i >= 3:
                        times[(b, k)].append(time.perf_counter() - t)
                    states[b] = out[:3]
        for b, (_, _, _, took, largest) in variants.items():
            print(f"| {arch} | {'yes' if b else 'no'} | {took:.1f} | {largest} | "
                  f"{np.median(times[(b, 'bare')]) * 1e3:.1f} | "
                  f"{np.median(times[(b, 'inst')]) * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
