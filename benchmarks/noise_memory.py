"""Peak memory of the gradient-noise probe (chunked per-example gradients) against the plain
probe, each in its own process.

    python benchmarks/noise_memory.py                 # depth-50 CNN and a width-1024 MLP
    python benchmarks/noise_memory.py --quick         # tiny models, checks that it runs

Each case runs twice in a fresh child process: `gf.probe(model, batch)` and
`gf.probe(model, batch, noise=True)`; the child reports its peak resident memory
(`ru_maxrss`) and the probe's wall time (compilation included). The per-example gradients are
taken in chunks sized to 256 MiB (`gradflow.quantities.noise.chunk_size`), so the noise probe's
extra memory stays near that bound whatever the batch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = {  # name: (builder source, input shape, batch)
    "cnn residual_bn depth 50 width 16": (
        'gf.models.cnn("residual_bn", 50, width=16, rngs=nnx.Rngs(0))', (16, 16, 3), 32),
    "mlp residual_bn depth 10 width 1024": (
        'gf.models.mlp("residual_bn", 10, width=1024, in_features=768, num_classes=10, '
        'rngs=nnx.Rngs(0))', (768,), 32),
}
QUICK = {"cnn plain depth 6 width 4": ('gf.models.cnn("plain", 6, width=4, rngs=nnx.Rngs(0))',
                                       (16, 16, 3), 8)}

CHILD = """
import resource, time, json, sys
import jax, jax.numpy as jnp
from flax import nnx
import gradflow as gf
from gradflow.instrument.norms import flat_arrays
model = {build}
x = jax.random.normal(jax.random.PRNGKey(0), ({batch},) + {shape}); y = jnp.arange({batch}) % 10
t = time.perf_counter()
snap = gf.probe(model, (x, y), noise={noise})
jax.block_until_ready(snap["grad_norm"])
n = sum(a.size for a in flat_arrays(nnx.state(model, nnx.Param)).values())
print(json.dumps({{"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t, "params": int(n)}}))
"""


def child(build, shape, batch, noise) -> dict:
    code = CHILD.format(build=build, shape=tuple(shape), batch=batch, noise=noise)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    print("| model | params | batch | probe peak MiB | noise probe peak MiB | extra MiB | "
          "probe s | noise probe s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (build, shape, batch) in (QUICK if a.quick else CASES).items():
        plain, noisy = (child(build, shape, batch, n) for n in (False, True))
        print(f"| {name} | {plain['params']:,} | {batch} | {plain['peak_mib']:.0f} | "
              f"{noisy['peak_mib']:.0f} | {noisy['peak_mib'] - plain['peak_mib']:.0f} | "
              f"{plain['seconds']:.1f} | {noisy['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
