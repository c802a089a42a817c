"""Warm-started largest-eigenvalue measurements during training: Lanczos from the previous
Ritz vector (what `gf.train(curvature_every=)` runs) against power iteration from the previous
eigenvector, both against a tight reference.

    python benchmarks/warm_start.py                    # depth-50 plain CNN, ~2 minutes
    python benchmarks/warm_start.py --arch residual_bn

`gf.models.cnn(arch, 50, width=16)` trains with SGD (lr 0.01, momentum 0.9) on one batch of 32
built-in images; every `--every` steps, at the same parameters and on the same batch (BatchNorm on
batch statistics, as gradflow measures), three measurements of the Hessian's eigenvalue of
largest magnitude: Lanczos with its Ritz vector (`max_eigenvalue(method="lanczos",
ritz_vector=True)`) and power iteration, each started from its own previous vector (the first
time from the same random vector), each to gradflow's rtol 1e-3 and at most `--max-iter`
products (gradflow's `CURVATURE_MAX_ITER`, 20), and the reference, Lanczos from a random start
to rtol 1e-7 (at most 60). Prints products used, relative error and whether each converged.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gradflow.host_memory import reuse_freed_memory

reuse_freed_memory()

import gradflow as gf  # noqa: E402
from gradflow.probe import split_model  # noqa: E402
from gradflow.quantities import curvature  # noqa: E402
from gradflow.quantities.examples import training_loss  # noqa: E402
from gradflow.quantities.training import CURVATURE_MAX_ITER  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="plain")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--max-iter", type=int, default=CURVATURE_MAX_ITER)
    a = p.parse_args(argv)
    ds = gf.data.synthetic(seed=0)
    x, y = jnp.asarray(ds.x_train[:32]), jnp.asarray(ds.y_train[:32])
    model = gf.models.cnn(a.arch, 50, width=16, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
    graphdef = split_model(model)[0]

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: gf.losses.cross_entropy(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    @jax.jit
    def measure(params, rest, v_lanczos, v_power):
        loss = training_loss(graphdef, rest, gf.losses.cross_entropy, x, y)
        return (curvature.max_eigenvalue(loss, params, v0=v_lanczos, max_iter=a.max_iter,
                                         method="lanczos", ritz_vector=True),
                curvature.max_eigenvalue(loss, params, v0=v_power, max_iter=a.max_iter),
                curvature.max_eigenvalue(loss, params, max_iter=60, rtol=1e-7,
                                         method="lanczos", key=jax.random.key(1)))

    print(f"{a.arch} depth 50, at most {a.max_iter} products\n| step | reference λ₁ | "
          "Lanczos products | Lanczos error | power products | power error |\n|---|---|---|---|---|---|")
    v_lanczos = v_power = None
    for step in range(a.steps + 1):
        if step % a.every == 0:
            _, params, rest = split_model(model)
            if v_lanczos is None:
                v_lanczos = v_power = curvature.random_direction(params)
            lz, pw, ref = measure(params, rest, v_lanczos, v_power)
            v_lanczos, v_power, want = lz.vector, pw.vector, float(ref.value)
            err = lambda e: (f"{abs(float(e.value) - want) / abs(want):.1e}"
                             + ("" if bool(e.converged) else " (not converged)"))
            print(f"| {step} | {want:.6g} | {int(lz.iterations)} | {err(lz)} | "
                  f"{int(pw.iterations)} | {err(pw)} |", flush=True)
        train_step(model, optimizer)


if __name__ == "__main__":
    main()
