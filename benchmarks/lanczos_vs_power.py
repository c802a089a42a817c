"""Largest Hessian eigenvalue: power iteration (gradflow's `hess_max_ev`) against Lanczos, per
Hessian-vector product.

    python benchmarks/lanczos_vs_power.py                 # depth-50 plain CNN, ~1.5 minutes
    python benchmarks/lanczos_vs_power.py --arch residual_bn
    python benchmarks/lanczos_vs_power.py --train-steps 60 --iters 100   # after 60 SGD steps

The training loss of `gf.models.cnn(arch, 50, width=16)` at init on one batch of 32 built-in
images (BatchNorm on batch statistics); one jitted Hessian-vector product
(`gradflow.quantities.curvature.hvp`) on the flattened parameters, called from Python; both
methods start from the same standard-normal vector. Power iteration as `max_eigenvalue` runs
it: θ the Rayleigh quotient of the unit iterate v, residual ‖Hv − θv‖. Lanczos: the three-term
recurrence without reorthogonalization (two vectors of memory, like power iteration), θ the
Ritz value of largest magnitude of the k×k tridiagonal matrix, residual β_{k+1}|s_k| (s its
eigenvector there). Two stopping rules with rtol 1e-3: gradflow's, residual ≤ rtol |θ|, and
Cockpit's, |θₖ − θₖ₋₁| ≤ rtol |θₖ|. The reference λ₁ is Lanczos after `--iters` products.
Prints, for each method and rule, the products used, the estimate there and its relative error.

`--train-steps N`: first N steps of SGD (lr 0.01, momentum 0.9, `nnx.Optimizer`) on batches of
32 of `gf.data.synthetic(seed=0, n_train=256)`, batch i % 8 at step i (as
`benchmarks/user_loop_curvature.py` trains), then the loss on batch N % 8.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree

from gradflow.host_memory import reuse_freed_memory

reuse_freed_memory()

import gradflow as gf  # noqa: E402
from gradflow.losses import LOSSES  # noqa: E402
from gradflow.quantities import curvature  # noqa: E402

RTOL = 1e-3


def power(matvec, v0, iters):
    """(θ, residual) after each product, as gradflow's power iteration forms them."""
    v, out = v0 / jnp.linalg.norm(v0), []
    for _ in range(iters):
        w = matvec(v)
        theta = float(v @ w)
        out.append((theta, float(jnp.linalg.norm(w - theta * v))))
        v = w / jnp.linalg.norm(w)
    return out


def lanczos(matvec, v0, iters):
    """(θ, residual) of the Ritz value of largest magnitude after each product (no
    reorthogonalization)."""
    q, q_prev, beta, alphas, betas, out = v0 / jnp.linalg.norm(v0), 0 * v0, 0.0, [], [], []
    for _ in range(iters):
        w = matvec(q)
        alphas.append(float(q @ w))
        w = w - alphas[-1] * q - beta * q_prev
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        ev, vectors = np.linalg.eigh(t)
        top = np.argmax(np.abs(ev))
        beta = float(jnp.linalg.norm(w))
        out.append((float(ev[top]), beta * abs(vectors[-1, top])))
        betas.append(beta)
        q_prev, q = q, w / beta
    return out


def stop(steps, rule):
    """(products, estimate) where `rule` ("residual" or "change") first holds, or the last."""
    for k, (theta, residual) in enumerate(steps):
        if rule == "residual":
            done = residual <= RTOL * abs(theta)
        else:
            done = k > 0 and abs(theta - steps[k - 1][0]) <= RTOL * abs(theta)
        if done:
            return k + 1, theta
    return len(steps), steps[-1][0]


def trained(model, loss_fn, steps: int):
    """Trains `model` in place for `steps` SGD steps; returns the batch measured after them."""
    ds = gf.data.synthetic(seed=0, n_train=32 * 8, n_test=8)
    batches = [(jnp.asarray(ds.x_train[i * 32:(i + 1) * 32]),
                jnp.asarray(ds.y_train[i * 32:(i + 1) * 32])) for i in range(8)]
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: loss_fn(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    for i in range(steps):
        step(model, optimizer, *batches[i % 8])
    return batches[steps % 8]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="plain")
    p.add_argument("--iters", type=int, default=60, help="products per method")
    p.add_argument("--train-steps", type=int, default=0, help="SGD steps before measuring")
    a = p.parse_args(argv)
    loss_fn = LOSSES["cross_entropy"][0]
    model = gf.models.cnn(a.arch, 50, width=16, rngs=nnx.Rngs(0))
    if a.train_steps:
        x, y = trained(model, loss_fn, a.train_steps)
    else:
        ds = gf.data.synthetic(seed=0)
        x, y = jnp.asarray(ds.x_train[:32]), jnp.asarray(ds.y_train[:32])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        model = nnx.merge(graphdef, p, rest, copy=True)
        return loss_fn(model(x), y)

    flat, unravel = ravel_pytree(params)
    matvec = jax.jit(lambda v: ravel_pytree(curvature.hvp(loss, params, unravel(v)))[0])
    v0 = jax.random.normal(jax.random.key(0), flat.shape)
    jax.block_until_ready(matvec(v0))
    t = time.perf_counter()
    runs = {"power iteration": power(matvec, v0, a.iters), "Lanczos": lanczos(matvec, v0, a.iters)}
    per_product = (time.perf_counter() - t) / (2 * a.iters)
    ref = runs["Lanczos"][-1][0]
    print(f"{a.arch} CNN, depth 50, after {a.train_steps} SGD steps: λ₁ ≈ {ref:.7g} (Lanczos, "
          f"{a.iters} products); "
          f"{per_product * 1e3:.0f} ms per product")
    print("| method | stopping rule | products | estimate | relative error | after 10 / 20 / 30 products |")
    print("|---|---|---|---|---|---|")
    for name, steps in runs.items():
        later = " / ".join(f"{abs(steps[i][0] - ref) / abs(ref):.1e}" for i in (9, 19, 29))
        for rule, label in (("residual", "residual (gradflow)"), ("change", "last change (Cockpit)")):
            k, value = stop(steps, rule)
            print(f"| {name} | {label} | {k} | {value:.7g} | {abs(value - ref) / abs(ref):.1e} "
                  f"| {later} |")


if __name__ == "__main__":
    main()
