"""Page faults and step time of XLA:CPU train steps, with and without `gradflow.host_memory`.

    python benchmarks/host_memory.py                # ~6 minutes on 2 cores
    python benchmarks/host_memory.py --rounds 1     # ~3 minutes

Each configuration runs in a fresh process, once with glibc's malloc as it is (it `mmap`s every
block above 32 MiB, unmaps it on free and trims its arenas' heaps) and once after
`gradflow.host_memory.reuse_freed_memory()` (called first, as `python -m gradflow.run` does),
alternating A, B, A, B for `--rounds` rounds; `--huge-pages` adds a third process started with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (the same blocks on transparent huge pages instead).
Per process: compile, 3 warm-up steps, then 20 timed steps; median ms per step and minor page
faults per step (`getrusage`); the table shows the median over rounds.

Configurations:
- `repro`: a JAX-only reproduction, no gradflow and no Flax: the gradient of a chain of 50
  3x3 convolutions (16 channels, batch 32, 16x16) with ReLU, jitted (the minimal case for an
  upstream report);
- gradflow's bare and instrumented train steps (`train_steps`, SGD momentum 0.9, batch 32 of
  16x16x3 images) of the depth-50 plain and residual_bn CNNs (width 16) and the depth-50
  width-256 residual_bn MLP of `benchmarks/overhead.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CASES = ("repro", "cnn_plain", "cnn_residual_bn", "mlp_residual_bn")
TUNABLE = "glibc.malloc.hugetlb=1"


def child(case: str, reuse: bool) -> dict:
    """Times one configuration in this process; returns {step name: (ms, faults per step)}."""
    if reuse:
        from gradflow.host_memory import reuse_freed_memory
        assert reuse_freed_memory()
    import resource
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    def timed(step, state, args, update):
        for _ in range(3):
            out = step(*state, *args)
            state = out[:len(state)] if update else state
        jax.block_until_ready(state)
        times, f0 = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            t = time.perf_counter()
            out = jax.block_until_ready(step(*state, *args))
            times.append(time.perf_counter() - t)
            state = out[:len(state)] if update else state
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20
        return float(np.median(times) * 1e3), faults

    key = jax.random.PRNGKey(0)
    if case == "repro":
        x = jax.random.normal(key, (32, 16, 16, 16))
        ws = 0.1 * jax.random.normal(key, (50, 3, 3, 16, 16))

        def loss(ws, x):
            for w in ws:
                x = jax.nn.relu(jax.lax.conv_general_dilated(
                    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
            return jnp.mean(x ** 2)

        return {"grad": timed(jax.jit(jax.grad(loss)), (ws,), (x,), update=False)}

    import optax
    from flax import nnx

    import gradflow as gf
    from gradflow.instrument.steps import layout_for, train_steps
    from gradflow.losses import LOSSES

    kind, arch = case.split("_", 1)
    x = jax.random.normal(key, (32, 16, 16, 3))
    y = jnp.arange(32) % 10
    if kind == "cnn":
        model = gf.models.cnn(arch, 50, width=16, rngs=nnx.Rngs(0))
    else:
        model = gf.models.mlp(arch, 50, width=256, in_features=768, num_classes=10,
                              rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(0.01, momentum=0.9)
    instrumented, bare = train_steps(graphdef, layout_for(graphdef, params, rest, x),
                                     *LOSSES["cross_entropy"], tx)
    state = (params, rest, tx.init(params))
    return {name: timed(step, state, (x, y), update=True)
            for name, step in (("bare", bare), ("instrumented", instrumented))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--huge-pages", action="store_true",
                   help="also run with glibc's transparent-huge-page tunable instead")
    p.add_argument("--out", default=None, help="write the results as JSON")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        case, mode = a.child.split(":")
        print(json.dumps(child(case, mode == "reuse")))
        return
    base = {k: v for k, v in os.environ.items()
            if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    envs = {"default malloc": (base, "default"), "reuse": (base, "reuse")}
    if a.huge_pages:
        envs["huge pages"] = (base | {"GLIBC_TUNABLES": TUNABLE}, "default")
    results: dict = {}
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for case in a.cases.split(","):
        for _ in range(a.rounds):
            for env_name, (env, mode) in envs.items():
                out = subprocess.run([sys.executable, __file__, "--child", f"{case}:{mode}"], env=env,
                                     capture_output=True, text=True, check=True)
                for step, (ms, faults) in json.loads(out.stdout.splitlines()[-1]).items():
                    results.setdefault((case, step), {}).setdefault(env_name, []).append(
                        (ms, faults))
    print("| case | step | default ms | faults/step | reuse ms | faults/step | speed-up |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for (case, step), by_env in results.items():
        med = {e: (statistics.median(m for m, _ in v), statistics.median(f for _, f in v))
               for e, v in by_env.items()}
        (d_ms, d_f), (h_ms, h_f) = med["default malloc"], med["reuse"]
        rows.append(dict(case=case, step=step, default_ms=d_ms, default_faults=d_f,
                         reuse_ms=h_ms, reuse_faults=h_f, runs=by_env))
        extra = ""
        if "huge pages" in med:
            n_ms, n_f = rows[-1]["huge_pages_ms"], rows[-1]["huge_pages_faults"] = med["huge pages"]
            extra = f" huge pages: {n_ms:.1f} ms, {n_f:,.0f} faults/step"
        print(f"| {case} | {step} | {d_ms:.1f} | {d_f:,.0f} | {h_ms:.1f} | {h_f:,.0f} | "
              f"{d_ms / h_ms:.2f}x |{extra}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": "python benchmarks/host_memory.py " + " ".join(argv or sys.argv[1:]),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
