"""Largest Hessian eigenvalue: power iteration (gradflow's `hess_max_ev`) against Lanczos, per
Hessian-vector product.

    python benchmarks/lanczos_vs_power.py                 # depth-50 plain CNN, ~1.5 minutes
    python benchmarks/lanczos_vs_power.py --arch residual_bn

The training loss of `gf.models.cnn(arch, 50, width=16)` at init on one batch of 32 built-in
images (BatchNorm on batch statistics); one jitted Hessian-vector product
(`gradflow.quantities.curvature.hvp`) on the flattened parameters, called from Python; both
methods start from the same standard-normal vector. Power iteration as `max_eigenvalue` runs
it: Rayleigh quotient of the unit iterate, stopping rule |λₖ − λₖ₋₁| ≤ 1e-3 |λₖ|. Lanczos: the
three-term recurrence without reorthogonalization (two vectors of memory, like power
iteration), the Ritz value of largest magnitude of the k×k tridiagonal matrix, the same stopping
rule. The reference λ₁ is Lanczos after `--iters` products. Prints, for each method, the
products used at the stopping rule, the estimate there and its relative error.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from gradflow.host_memory import reuse_freed_memory

reuse_freed_memory()

import gradflow as gf  # noqa: E402
from gradflow.losses import LOSSES  # noqa: E402
from gradflow.quantities import curvature  # noqa: E402

RTOL = 1e-3


def power(matvec, v0, iters):
    """Estimates λ after each product, as gradflow's power iteration forms them."""
    v, out = v0 / jnp.linalg.norm(v0), []
    for _ in range(iters):
        w = matvec(v)
        out.append(float(v @ w))
        v = w / jnp.linalg.norm(w)
    return out


def lanczos(matvec, v0, iters):
    """The Ritz value of largest magnitude after each product (no reorthogonalization)."""
    q, q_prev, beta, alphas, betas, out = v0 / jnp.linalg.norm(v0), 0 * v0, 0.0, [], [], []
    for _ in range(iters):
        w = matvec(q)
        alphas.append(float(q @ w))
        w = w - alphas[-1] * q - beta * q_prev
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        ev = np.linalg.eigvalsh(t)
        out.append(float(ev[np.argmax(np.abs(ev))]))
        beta = float(jnp.linalg.norm(w))
        betas.append(beta)
        q_prev, q = q, w / beta
    return out


def stop(estimates):
    """(products, estimate) at the first |λₖ − λₖ₋₁| ≤ RTOL |λₖ|, or the last one."""
    for k in range(1, len(estimates)):
        if abs(estimates[k] - estimates[k - 1]) <= RTOL * abs(estimates[k]):
            return k + 1, estimates[k]
    return len(estimates), estimates[-1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="plain")
    p.add_argument("--iters", type=int, default=60, help="products per method")
    a = p.parse_args(argv)
    ds = gf.data.synthetic(seed=0)
    x, y = jnp.asarray(ds.x_train[:32]), jnp.asarray(ds.y_train[:32])
    graphdef, params, rest = nnx.split(gf.models.cnn(a.arch, 50, width=16, rngs=nnx.Rngs(0)),
                                       nnx.Param, ...)
    loss_fn = LOSSES["cross_entropy"][0]

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
    ref = runs["Lanczos"][-1]
    print(f"{a.arch} CNN, depth 50: λ₁ ≈ {ref:.7g} (Lanczos, {a.iters} products); "
          f"{per_product * 1e3:.0f} ms per product")
    print("| method | products at the stopping rule | estimate | relative error | after 10 / 20 / 30 products |")
    print("|---|---|---|---|---|")
    for name, est in runs.items():
        k, value = stop(est)
        later = " / ".join(f"{abs(est[i] - ref) / abs(ref):.1e}" for i in (9, 19, 29))
        print(f"| {name} | {k} | {value:.7g} | {abs(value - ref) / abs(ref):.1e} | {later} |")


if __name__ == "__main__":
    main()
