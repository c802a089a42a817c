"""Where a curvature measurement's time goes on the depth-50 CNNs: one gradient, one
Hessian-vector product, Lanczos to rtol 1e-3 from a random start, Hutchinson's trace, and the
whole `gf.value_and_grad(loss_fn, curvature=True)` train step.

    python benchmarks/curvature_parts.py                      # plain and residual, about 3 minutes
    python benchmarks/curvature_parts.py --archs residual --rounds 5

Model `gf.models.cnn(arch, 50, width=16)`, one batch of 32 built-in synthetic images (16x16x3),
mean cross-entropy: the networks of `benchmarks/cockpit_quantities.py`. Each part is jitted
alone, run once to compile, then `--rounds` times interleaved with the others; medians.

    grad           jax.grad of the loss (a train step without the update)
    hvp            jax.linearize of jax.grad, then one product: what one product costs
                   when it is the only one
    lanczos        gradflow.quantities.curvature.max_eigenvalue(method="lanczos", rtol=1e-3),
                   from a random start (what gf.value_and_grad and gf.probe run); its products
                   are printed
    trace          gradflow.quantities.curvature.trace(samples=8) with the rows' block traces
                   (what gf.value_and_grad and gf.probe run)
    bare step      nnx.value_and_grad and optimizer.update (SGD, momentum 0.9) in nnx.jit
    curvature step the same step through gf.value_and_grad(loss_fn, curvature=True)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np
import optax
from flax import nnx

import gradflow as gf
from gradflow.instrument.measure import discover_call
from gradflow.quantities import curvature
from gradflow.quantities.rows import row_segments


def parts(arch: str):
    """{name: a function of no arguments that runs the part and blocks}, and a function giving
    Lanczos' product count and value."""
    model = gf.models.cnn(arch, 50, width=16, rngs=nnx.Rngs(0))
    ds = gf.data.synthetic(seed=0, n_train=32, n_test=8)
    x, y = jax.numpy.asarray(ds.x_train[:32]), jax.numpy.asarray(ds.y_train[:32])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        return gf.losses.cross_entropy(nnx.merge(graphdef, p, rest, copy=True)(x), y)

    def loss_fn(m, x, y):
        return gf.losses.cross_entropy(m(x), y)

    segments = row_segments(params, discover_call(graphdef, params, rest,
                                                  lambda m, x: m(x), model, x))
    v0 = curvature.random_direction(params)
    jitted = {
        "grad": jax.jit(jax.grad(loss)),
        "hvp": jax.jit(lambda p: curvature.hvp(loss, p, v0)),
        "lanczos": jax.jit(lambda p: curvature.max_eigenvalue(loss, p, v0=v0, method="lanczos")),
        "trace": jax.jit(lambda p: curvature.trace(loss, p, samples=8, segments=segments)),
    }
    out = {k: (lambda f=f: jax.block_until_ready(f(params))) for k, f in jitted.items()}
    grad_fn = gf.value_and_grad(loss_fn, curvature=True)
    for name, measured in (("bare step", False), ("curvature step", True)):
        m = gf.models.cnn(arch, 50, width=16, rngs=nnx.Rngs(0))
        opt = nnx.Optimizer(m, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)

        @nnx.jit
        def step(m, opt, x, y, measured=measured):
            if measured:
                loss, grads, snap = grad_fn(m, x, y)
            else:
                (loss, grads), snap = nnx.value_and_grad(loss_fn)(m, x, y), None
            opt.update(m, grads)
            return loss, snap

        out[name] = lambda step=step, m=m, opt=opt: jax.block_until_ready(step(m, opt, x, y))

    def note():  # after the first calls, so that their times include compiling
        eig = jitted["lanczos"](params)
        return (f"lanczos: {int(eig.iterations)} products, converged {bool(eig.converged)}, "
                f"hess_max_ev {float(eig.value):.6g}")
    return out, note


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="plain,residual")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?") if os.path.exists("/proc/cpuinfo") else "?"
    print(f"{cpu}, {os.cpu_count()} CPUs, jax {jax.__version__}, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    for arch in args.archs.split(","):
        fns, note = parts(arch)
        first = {}
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            first[k] = time.perf_counter() - t
        times = {k: [] for k in fns}
        for r in range(args.rounds):
            for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                t = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t)
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        print(f"\n{arch} 50 ({note()})\n| part | ms | × grad | first call, s |\n|---|---|---|---|")
        for k, v in med.items():
            print(f"| {k} | {v:.0f} | {v / med['grad']:.2f} | {first[k]:.1f} |")
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
