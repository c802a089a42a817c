"""Build, first probe (trace + compile + run) and second probe times against depth.

    python benchmarks/depth_scaling.py --model cnn --depths 50,200,1000 --stacks unrolled,scan

Each configuration runs in a fresh process so compile caches and memory do not carry over;
peak memory is the child's max RSS.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import jax, jax.numpy as jnp
from flax import nnx
import gradflow as gf
model_kind, arch, depth, stack, width, batch = sys.argv[1:7]
depth, width, batch = int(depth), int(width), int(batch)
t1 = time.perf_counter()
if model_kind == "cnn":
    m = gf.models.cnn(arch, depth, width=width, stack=stack, rngs=nnx.Rngs(0))
    x = jnp.ones((batch, 16, 16, 3))
else:
    m = gf.models.mlp(arch, depth, width=width, in_features=64, num_classes=10, stack=stack,
                      rngs=nnx.Rngs(0))
    x = jnp.ones((batch, 64))
y = jnp.arange(batch) % 10
t2 = time.perf_counter()
s = gf.probe(m, (x, y))
t3 = time.perf_counter()
s = gf.probe(m, (x, y))
t4 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, build_s=t2 - t1, first_probe_s=t3 - t2,
                      probe_s=t4 - t3, rows=len(s.layers),
                      peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      backend=jax.default_backend())))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn", choices=["cnn", "mlp"])
    p.add_argument("--arch", default="residual_bn")
    p.add_argument("--depths", default="50,200,1000")
    p.add_argument("--stacks", default="unrolled,scan")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--timeout", type=float, default=600)
    a = p.parse_args(argv)
    print("| model | arch | depth | stack | build s | first probe s | probe s | rows | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for depth in a.depths.split(","):
        for stack in a.stacks.split(","):
            args = [a.model, a.arch, depth, stack, str(a.width), str(a.batch)]
            try:
                out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True,
                                     text=True, timeout=a.timeout, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(f"| {a.model} | {a.arch} | {depth} | {stack} | {r['build_s']:.1f} | "
                      f"{r['first_probe_s']:.1f} | {r['probe_s']:.2f} | {r['rows']} | "
                      f"{r['peak_rss_gib']:.2f} |", flush=True)
            except subprocess.TimeoutExpired:
                print(f"| {a.model} | {a.arch} | {depth} | {stack} | timeout > {a.timeout:.0f} s |"
                      " | | | |", flush=True)


if __name__ == "__main__":
    main()
