"""Data-parallel overhead on simulated CPU devices: the same train step on one device (the
default path, no mesh) and sharded over 1, 2 and 4 devices of a `data` mesh.

    python benchmarks/devices.py            # depth-20 residual_bn CNN and depth-50 MLP, batch 32
    python benchmarks/devices.py --quick    # the CNN only, 10 repetitions
    python benchmarks/devices.py --cnn-depth 50   # the default run's depth (compiles ~4x longer)

The script starts JAX with 4 simulated CPU devices (--xla_force_host_platform_device_count).
They share this machine's cores, so the figures are what sharding costs here (partitioned
programs, cross-device reductions, placing each batch), not a speed-up. Each step is timed as
`gf.train` runs it: the numpy batch placed (jnp.asarray, or device_put with the batch sharding),
then the compiled step, waited on. After warm-up the settings run interleaved (for each
repetition: every setting's bare then instrumented step) and the median is reported.
"""
from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):  # before JAX starts: the device count is fixed then
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_FLAG}=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import gradflow as gf  # noqa: E402
from gradflow import distributed  # noqa: E402
from gradflow.losses import LOSSES  # noqa: E402
from gradflow.probe import as_batch  # noqa: E402
from gradflow.instrument.steps import layout_for, train_steps

SETTINGS = ("default", 1, 2, 4)  # "default": one device, no mesh (what a 1-device machine runs)


class Setting:
    """One placement of the same model's bare and instrumented steps and their state."""

    def __init__(self, name, graphdef, layout, params, rest, tx):
        self.name = name
        self.mesh = None if name == "default" else distributed.data_mesh(name)
        inst, bare = train_steps(graphdef, layout, *LOSSES["cross_entropy"], tx)
        state = (params, rest, tx.init(params))
        if self.mesh is not None:
            inst, bare = (distributed.sharded(f, self.mesh, 3) for f in (inst, bare))
            state = distributed.replicate(state, self.mesh)
        self.steps, self.state = {"bare": bare, "inst": inst}, state
        self.times = {"bare": [], "inst": []}
        self.compile_s = 0.0

    def run(self, kind, x, y, record: bool):
        t = time.perf_counter()
        xs, ys = as_batch((x, y), self.mesh)
        out = self.steps[kind](*self.state, xs, ys)
        jax.block_until_ready(out)
        dt = time.perf_counter() - t
        if record:
            self.times[kind].append(dt)
        self.state = out[:3]
        return dt


def build(kind, arch, depth):
    if kind == "cnn":
        return gf.models.cnn(arch, depth, width=16, rngs=nnx.Rngs(0)), (16, 16, 3)
    return gf.models.mlp(arch, depth, width=64, in_features=64, num_classes=10,
                         rngs=nnx.Rngs(0)), (64,)


def measure(kind, arch, depth, batch, repeats):
    model, shape = build(kind, arch, depth)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *shape)).astype(np.float32)
    y = (np.arange(batch) % 10).astype(np.int32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    layout = layout_for(graphdef, params, rest, jax.numpy.asarray(x))
    settings = [Setting(s, graphdef, layout, params, rest, optax.sgd(0.01)) for s in SETTINGS]
    for s in settings:  # first calls: compilation
        s.compile_s = s.run("bare", x, y, False) + s.run("inst", x, y, False)
    for i in range(repeats + 2):
        for s in settings:
            for k in ("bare", "inst"):
                s.run(k, x, y, record=i >= 2)
    return [(s.name, float(np.median(s.times["bare"])), float(np.median(s.times["inst"])),
             s.compile_s) for s in settings]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--cnn-depth", type=int, default=20)
    a = p.parse_args(argv)
    configs = [("cnn", "residual_bn", a.cnn_depth)] + (
        [] if a.quick else [("mlp", "residual_bn", 50)])
    print(f"{jax.device_count()} simulated {jax.default_backend()} devices on {os.cpu_count()} "
          f"cores, batch {a.batch}")
    print("| model | arch | depth | devices | bare ms | instrumented ms | bare / default | "
          "compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, arch, depth in configs:
        rows = measure(kind, arch, depth, a.batch, 10 if a.quick else a.repeats)
        base = rows[0][1]
        for name, bare, inst, comp in rows:
            label = "1 (default, no mesh)" if name == "default" else f"{name} (mesh)"
            print(f"| {kind} | {arch} | {depth} | {label} | {bare * 1e3:.1f} | {inst * 1e3:.1f} "
                  f"| {bare / base:.2f} | {comp:.1f} |", flush=True)


if __name__ == "__main__":
    main()
