"""The overhead and depth measurements on an accelerator, in one short run (< 10 minutes).

    pip install -e ".[cuda]" && python benchmarks/gpu.py --out benchmarks/gpu_results.json

Prints the device, then the instrumented/bare step ratio for the depth-50 CNN of each arch and
an MLP, build + first-probe + probe times at depths 50, 1,000 and 10,000 (scanned, as
`stack="auto"` picks off CPU), and the forward+backward time of one standard against one
depthwise-separable 3x3 conv layer at several widths (`--separable-widths`). Runs on CPU too
(for checking the script), more slowly.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

import gradflow as gf
from gradflow.experiments.conv_timing import time_convs
from overhead import measure


def depth_row(kind: str, depth: int) -> dict:
    t0 = time.perf_counter()
    if kind == "cnn":
        model = gf.models.cnn("residual_bn", depth, width=16, rngs=nnx.Rngs(0))
        x = jnp.ones((32, 16, 16, 3))
    else:
        model = gf.models.mlp("residual_bn", depth, width=256, in_features=64, num_classes=10,
                              rngs=nnx.Rngs(0))
        x = jnp.ones((32, 64))
    y = jnp.arange(32) % 10
    t1 = time.perf_counter()
    gf.probe(model, (x, y))
    t2 = time.perf_counter()
    gf.probe(model, (x, y))
    t3 = time.perf_counter()
    return {"model": kind, "depth": depth, "build_s": t1 - t0, "first_probe_s": t2 - t1,
            "probe_s": t3 - t2}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_results.json")
    p.add_argument("--depths", default="50,1000,10000")
    p.add_argument("--separable-widths", default="16,64,256,1024")
    a = p.parse_args(argv)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), {jax.device_count()} device(s)")
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 16, 16, 3))
    y = jnp.arange(32) % 10
    results = {"device": device.device_kind, "backend": jax.default_backend(), "overhead": [],
               "depth": [], "separable": []}
    for arch in gf.models.ARCHS:
        bare, inst = measure(gf.models.cnn(arch, 50, width=16, rngs=nnx.Rngs(0)), x, y, 30)
        results["overhead"].append({"arch": arch, "bare_ms": bare * 1e3, "inst_ms": inst * 1e3,
                                    "ratio": inst / bare})
        print(f"overhead cnn {arch:12s} bare {bare * 1e3:8.2f} ms  instrumented "
              f"{inst * 1e3:8.2f} ms  ratio {inst / bare:.3f}", flush=True)
    for depth in map(int, a.depths.split(",")):
        for kind in ("cnn", "mlp"):
            row = depth_row(kind, depth)
            results["depth"].append(row)
            print(f"depth {kind} {depth:6d}: build {row['build_s']:.1f} s, first probe "
                  f"{row['first_probe_s']:.1f} s, probe {row['probe_s']:.3f} s", flush=True)
    for width in map(int, a.separable_widths.split(",")):
        t = time_convs(width, batch=32, size=16, repeats=20, warmup=3)
        results["separable"].append({"width": width, "standard_ms": t["standard"] * 1e3,
                                     "separable_ms": t["separable"] * 1e3})
        print(f"conv 3x3 width {width:5d}, batch 32, 16x16, forward+backward: standard "
              f"{t['standard'] * 1e3:8.2f} ms, separable {t['separable'] * 1e3:8.2f} ms", flush=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
