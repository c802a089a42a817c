"""Two XLA:CPU reproductions for upstream reports: JAX only, a few lines each, one core.

    python benchmarks/xla_cpu_repro.py      # ~20 s

1. `conv`: one 3x3 convolution (batch 32, 16x16, 16 -> 16 channels, NHWC/HWIO, 'SAME') forward,
   input gradient and weight gradient, each jitted alone; ms per call and GFLOP/s. PyTorch's
   oneDNN kernels for the same layer: `benchmarks/conv_layer.py` (needs torch).
2. `faults`: the jitted gradient of a chain of 50 such convolutions with ReLU: minor page faults
   and ms per call, with glibc's malloc as it is (XLA:CPU's temporaries are `mmap`ed afresh each
   run) and after `gradflow.host_memory.reuse_freed_memory()`, each in a fresh process.
"""
from __future__ import annotations

import os
import subprocess
import sys

ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

CONV = """
import time, jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
x, w = jnp.ones((32, 16, 16, 16)), jnp.ones((3, 3, 16, 16)) * 0.1
ops = {"forward": (jax.jit(conv), (x, w)),
       "input gradient": (jax.jit(lambda w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]), (w, x)),
       "weight gradient": (jax.jit(lambda x, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]), (x, x))}
for name, (f, args) in ops.items():
    jax.block_until_ready(f(*args))
    t = time.perf_counter()
    for _ in range(200):
        jax.block_until_ready(f(*args))
    ms = (time.perf_counter() - t) / 200 * 1e3
    print(f"conv {name}: {ms:.3f} ms, {2 * 32 * 16 * 16 * 9 * 16 * 16 / ms / 1e6:.0f} GFLOP/s")
"""

FAULTS = """
import resource, sys, time
if sys.argv[1] == "reuse":
    from gradflow.host_memory import reuse_freed_memory; reuse_freed_memory()
import jax, jax.numpy as jnp
def loss(ws, x):
    for w in ws:
        x = jax.nn.relu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return jnp.mean(x ** 2)
f, ws, x = jax.jit(jax.grad(loss)), jnp.ones((50, 3, 3, 16, 16)) * 0.05, jnp.ones((32, 16, 16, 16))
jax.block_until_ready(f(ws, x))
t, f0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    jax.block_until_ready(f(ws, x))
print(f"50-conv gradient, malloc {sys.argv[1]}: {(time.perf_counter() - t) / 20 * 1e3:.1f} ms, "
      f"{(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20:,.0f} page faults per call")
"""


def main():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["XLA_FLAGS"] = ONE_THREAD
    pin = ["taskset", "-c", "0"] if sys.platform.startswith("linux") else []
    print(subprocess.run([*pin, sys.executable, "-c", CONV], env=env, capture_output=True,
                         text=True, check=True).stdout, end="")
    for mode in ("default", "reuse"):
        print(subprocess.run([*pin, sys.executable, "-c", FAULTS, mode], env=env,
                             capture_output=True, text=True, check=True).stdout, end="")


if __name__ == "__main__":
    main()
