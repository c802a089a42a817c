"""What per-layer norms cost at least on a memory-bound step: the depth-50 residual_bn MLP of
`benchmarks/overhead.py`, gf.train's bare step against the same step plus the plainest possible
norms.

    python benchmarks/norm_floor.py              # about a minute
    python benchmarks/norm_floor.py --rounds 20

Steps (each `jax.jit`, all from the same parameters, each updating its own copy; SGD lr 0.01
momentum 0.9, batches of 32 built-in images flattened):

    bare          gf.train's bare step (gradflow.instrument.steps.train_steps)
    instrumented  gf.train's instrumented step (every metric, update_ratio included)
    +g            the bare step returning one plain float32 sum of squares per row of the
                  gradients (no probes, no underflow guard)
    +g+w          ... and of the weights
    +g+w+u        ... and of the optimizer's updates (which the bare step never materializes)
    +g+w+u guard  the same three with gradflow's underflow guard (`row_norms`: a `lax.cond`
                  takes the rescaled sums only when a plain sum is tiny)

Interleaved rounds of 20 steps each (the order reversed every round); medians, printed as
ratios to the bare step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradflow as gf
from gradflow.instrument import norms
from gradflow.instrument import steps as train_steps_module
from gradflow.instrument.measure import apply


def plain_norms(operands):
    """`norms.underflow_safe_norms` without its guard: one plain sum of squares each."""
    return [jnp.sqrt(jnp.sum(jnp.square(a.astype(jnp.float32)), axis=axes)).reshape(-1)
            for a, axes in operands]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    model = gf.models.mlp("residual_bn", 50, width=256, in_features=768, num_classes=10,
                          rngs=nnx.Rngs(0))
    ds = gf.data.synthetic(seed=0, n_train=128, n_test=8)
    xs = [jnp.asarray(ds.x_train[i * 32:(i + 1) * 32]).reshape(32, -1) for i in range(4)]
    ys = [jnp.asarray(ds.y_train[i * 32:(i + 1) * 32]) for i in range(4)]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(0.01, momentum=0.9)
    loss_fn = gf.losses.cross_entropy
    layout = train_steps_module.layout_for(graphdef, params, rest, xs[0], model)
    instrumented, bare = train_steps_module.train_steps(graphdef, layout, loss_fn, None, tx)

    def with_norms(which: str, guard: bool):
        def step(params, rest, opt_state, x, y):
            def objective(params, rest):
                out, _, new_rest = apply(graphdef, params, rest, x, probes=False)
                return loss_fn(out, y), new_rest

            (loss, new_rest), grads = jax.value_and_grad(objective, has_aux=True)(params, rest)
            updates, opt_state = tx.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            parts = {"g": grads, "w": params, "u": updates}
            out = {"loss": loss} | {k: norms.row_norms(parts[k], layout) for k in which}
            return new_params, new_rest, opt_state, out

        def traced(*a):  # the guard swapped out while the step is traced (its first call)
            original = norms.underflow_safe_norms
            if not guard:
                norms.underflow_safe_norms = plain_norms
            try:
                return jitted(*a)
            finally:
                norms.underflow_safe_norms = original

        jitted = jax.jit(step)
        return traced

    variants = {"bare": bare, "instrumented": instrumented, "+g": with_norms("g", False),
                "+g+w": with_norms("gw", False), "+g+w+u": with_norms("gwu", False),
                "+g+w+u guard": with_norms("gwu", True)}
    state = {v: (params, rest, tx.init(params)) for v in variants}

    def one(v, i):
        t = time.perf_counter()
        out = variants[v](*state[v], xs[i % 4], ys[i % 4])
        jax.block_until_ready(out)
        state[v] = out[:3]
        return time.perf_counter() - t

    for i in range(3):  # compile and warm up
        for v in variants:
            one(v, i)
    times = {v: [] for v in variants}
    order = list(variants)
    for r in range(args.rounds):
        for i in range(20):
            for v in (order if r % 2 == 0 else order[::-1]):
                times[v].append(one(v, i))
    med = {v: float(np.median(t)) for v, t in times.items()}
    print(f"depth-50 residual_bn MLP, width 256, batch 32; {os.cpu_count()} CPUs, jax "
          f"{jax.__version__}, load average {os.getloadavg()[0]:.2f}")
    print("| step | ms | × bare |\n|---|---|---|")
    for v in variants:
        print(f"| {v} | {1e3 * med[v]:.2f} | {med[v] / med['bare']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
