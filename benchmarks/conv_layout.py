"""Convolutions inside loops on XLA:CPU: as JAX derives them, with
`gradflow.conv_layout.canonical_convs`, and straight-line; Hessian-vector products in a loop and
train steps of scanned CNNs.

    python benchmarks/conv_layout.py                       # products, ~3 minutes on 2 cores
    python benchmarks/conv_layout.py --archs plain --products 4
    python benchmarks/conv_layout.py --steps --depths 50,200   # train steps, ~3 minutes

XLA:CPU puts convolutions into the layout its fast kernels take only in the top-level
computation; inside a `while` body (`lax.while_loop`, `lax.fori_loop`, `lax.map`) the backward
convolutions JAX derives run on a naive loop nest (JAX issue 12868). Per CNN (width 16, batch
32 of 16x16x3, mean cross-entropy, `gradflow.host_memory` on) and per product form
(forward-over-reverse: `jax.linearize` of `jax.grad`; reverse-over-reverse: `jax.vjp` of
`jax.grad`), one jitted function runs `--products` normalized products of the linearized loss:
in a `lax.fori_loop` as is, in the loop with `canonical_convs` on its body, and unrolled in
straight-line code. Compile time (first call) and ms per product (best of 3 calls); the
results of the three agree (max relative difference printed).

`--steps`: gradflow's bare and instrumented train steps (`train_steps`, SGD momentum 0.9) of
the CNNs at `--depths`, blocks unrolled, blocks under `lax.scan` with the steps as JAX derives
them, and scanned with `canonical_convs` (as gradflow runs them); first call (trace + compile +
one step) and the median of 5 steps.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from gradflow.host_memory import reuse_freed_memory

reuse_freed_memory()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import gradflow as gf  # noqa: E402
from gradflow.conv_layout import canonical_convs  # noqa: E402


def products(arch: str, mode: str, form: str, k: int):
    """A jitted function (params, v) -> v after `k` normalized products."""
    model = gf.models.cnn(arch, 50, width=16, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(0), (32, 16, 16, 3))
    y = jnp.arange(32) % 10

    def loss(p):
        logits = nnx.merge(graphdef, p, rest, copy=True)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def run(p, v):
        if mode == "forward":
            _, matvec = jax.linearize(jax.grad(loss), p)
        else:
            _, pull = jax.vjp(jax.grad(loss), p)
            matvec = lambda u: pull(u)[0]

        def step(_, u):
            w = matvec(u)
            norm = jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(w)))
            return jax.tree.map(lambda a: a / norm, w)

        if form == "unrolled":
            for i in range(k):
                v = step(i, v)
            return v
        return jax.lax.fori_loop(0, k, canonical_convs(step) if form == "canonical" else step, v)

    return jax.jit(run), params


def steps(arch: str, depth: int):
    """Prints and returns the train-step rows of one CNN."""
    import optax

    from gradflow.instrument.steps import layout_for, train_steps
    from gradflow.losses import LOSSES

    x = jax.random.normal(jax.random.key(0), (32, 16, 16, 3))
    y = jnp.arange(32) % 10
    rows = []
    for stack, form in (("unrolled", "unrolled"), ("scan", "loop"), ("scan", "canonical")):
        model = gf.models.cnn(arch, depth, width=16, stack=stack, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx = optax.sgd(0.01, momentum=0.9)
        compiled = train_steps(graphdef, layout_for(graphdef, params, rest, x),
                               *LOSSES["cross_entropy"], tx)
        for name, step in zip(("instrumented", "bare"), compiled):
            if form == "loop":  # the step as JAX derives it, without the rewrite
                step = jax.jit(step.__wrapped__.__wrapped__)
            state = (params, rest, tx.init(params))
            t = time.perf_counter()
            out = jax.block_until_ready(step(*state, x, y))
            first = time.perf_counter() - t
            times = []
            for _ in range(5):
                t = time.perf_counter()
                out = jax.block_until_ready(step(*out[:3], x, y))
                times.append(time.perf_counter() - t)
            ms = sorted(times)[2] * 1e3
            rows.append(dict(arch=arch, depth=depth, step=name, form=form, first_s=first, ms=ms))
            print(f"| {arch} | {depth} | {name} | {form} | {first:.1f} | {ms:.0f} |", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="plain,residual_bn")
    p.add_argument("--modes", default="forward,reverse")
    p.add_argument("--products", type=int, default=4)
    p.add_argument("--steps", action="store_true", help="train steps of scanned CNNs instead")
    p.add_argument("--depths", default="50")
    p.add_argument("--out", default=None, help="write the rows as JSON")
    a = p.parse_args(argv)
    rows = []
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    if a.steps:
        print("| CNN | depth | step | form | first call s | ms per step |")
        print("|---|---|---|---|---|---|")
        rows = [r for arch in a.archs.split(",") for d in a.depths.split(",")
                for r in steps(arch, int(d))]
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if a.out:
            with open(a.out, "w") as f:
                json.dump(rows, f, indent=1)
        return
    print("| CNN | product | form | compile s | ms per product |")
    print("|---|---|---|---|---|")
    for arch in a.archs.split(","):
        for mode in a.modes.split(","):
            results = {}
            for form in ("loop", "canonical", "unrolled"):
                fn, params = products(arch, mode, form, a.products)
                v0 = jax.tree.map(jnp.ones_like, params)
                t = time.perf_counter()
                results[form] = jax.block_until_ready(fn(params, v0))
                first = time.perf_counter() - t
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    jax.block_until_ready(fn(params, v0))
                    times.append(time.perf_counter() - t)
                ms = min(times) / a.products * 1e3
                rows.append(dict(arch=arch, mode=mode, form=form, compile_s=first, ms=ms))
                print(f"| {arch} | {mode} | {form} | {first:.1f} | {ms:.0f} |", flush=True)
            ref = jax.tree.leaves(results["unrolled"])
            for form in ("loop", "canonical"):
                diff = max(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r)))
                           for g, r in zip(jax.tree.leaves(results[form]), ref))
                print(f"  {arch} {mode}: {form} vs unrolled, max relative difference {diff:.1e}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
