"""Where a train step's time goes, XLA:CPU (gradflow's bare step) against PyTorch eager, per op kind.

    .venv-peers/bin/python benchmarks/step_profile.py        # needs the `peers` extra; ~1 minute

One core, one thread per framework (the process is pinned to one core, XLA gets its
single-thread flags), so that every kernel runs inside the op that the profilers time. The
depth-50 plain and residual_bn CNNs of `benchmarks/peers.py` (width 16, batch 32 of 16x16x3,
SGD momentum 0.9), the same weights in both frameworks, malloc keeping freed memory
(`gradflow.host_memory`) for both.

- gradflow: `jax.profiler` traces 5 bare train steps (`train_steps`) with XLA's per-thunk
  trace events on; each event is mapped to its HLO instruction in the compiled module, and from
  there to a kind: forward convolution, input-gradient convolution, weight-gradient
  convolution (by what the instruction computes), layout transposes (fusions with a
  transpose, often with the bias and ReLU fused in), reductions, other fusions (elementwise:
  bias, ReLU, BN, the optimizer), other.
  "Between ops" is the step's wall time that no op covers (the runtime's dispatch).
- PyTorch: `torch.profiler` over 5 eager steps (zero_grad, forward, loss, backward, SGD step,
  loss.item()); self CPU time per aten op, grouped the same way (`convolution_backward` does
  both gradients in one op); "framework" is the step's wall time not inside an aten op's self
  time (Python, autograd's engine, dispatch).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = ("--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 "
                           "--xla_cpu_enable_xprof_traceme=true")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])

from gradflow.host_memory import reuse_freed_memory  # noqa: E402

reuse_freed_memory()
sys.path.insert(0, os.path.dirname(__file__))
import peers  # noqa: E402  (the mirror, the weights copy, the torch step)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

import gradflow as gf  # noqa: E402
from gradflow.instrument.steps import layout_for, train_steps  # noqa: E402
from gradflow.losses import LOSSES  # noqa: E402

STEPS = 5
KINDS = ("conv forward", "conv input gradient", "conv weight gradient", "conv backward (both)",
         "layout transposes (+ fused elementwise)", "reductions", "other fusions / elementwise", "other ops",
         "between ops")


def _hlo_kinds(hlo: str, kernel_shapes: set[str]) -> dict[str, str]:
    """{instruction name: kind} for the compiled module's entry instructions; a fusion's kind is
    read from the computation it calls."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"(?:ENTRY )?%([\w.\-]+) .*\{\s*$", line)
        if head:
            name = "ENTRY" if line.startswith("ENTRY") else head.group(1)
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)
    kinds = {}
    for line in bodies.get("ENTRY", []):
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
        if not m:
            continue
        name, shape, op = m.groups()
        body = [line]
        if op == "fusion":
            called = re.search(r"calls=%([\w.\-]+)", line)
            body = bodies.get(called.group(1), []) if called else []
        text = "\n".join(body)
        convs = [b for b in body if " convolution(" in b]
        if convs:
            dims = shape.split("[", 1)[-1].split("]", 1)[0]
            if dims in kernel_shapes:  # a kernel-shaped result: the weight gradient
                kinds[name] = "conv weight gradient"
            elif "transpose(jvp" in convs[0]:
                kinds[name] = "conv input gradient"
            else:
                kinds[name] = "conv forward"
        elif op == "fusion" and " reduce(" in text:
            kinds[name] = "reductions"
        elif op == "fusion" and " transpose(" in text:  # possibly with elementwise ops fused in
            kinds[name] = "layout transposes (+ fused elementwise)"
        elif op == "fusion":
            kinds[name] = "other fusions / elementwise"
        elif op not in ("parameter", "constant", "tuple", "get-tuple-element", "bitcast"):
            kinds[name] = "other ops"
    return kinds


def profile_gradflow(model, x, y) -> dict:
    """ms per step by kind for gradflow's compiled bare step."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(peers.LR, momentum=peers.MOMENTUM)
    _, bare = train_steps(graphdef, layout_for(graphdef, params, rest, x),
                          *LOSSES["cross_entropy"], tx)
    state = (params, rest, tx.init(params))
    kernel_shapes = {",".join(map(str, a.shape)) for a in jax.tree.leaves(params) if a.ndim == 4}
    kernel_shapes |= {",".join(map(str, (s[2], s[0], s[1], s[3]))) for s in
                      (tuple(map(int, k.split(","))) for k in kernel_shapes)}
    kinds = _hlo_kinds(bare.lower(*state, x, y).compile().as_text(), kernel_shapes)
    for _ in range(3):
        state = bare(*state, x, y)[:3]
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(STEPS):
                state = jax.block_until_ready(bare(*state, x, y)[:3])
        wall = (time.perf_counter() - t) / STEPS
        path = sorted(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True))[-1]
        events = [e for e in json.load(gzip.open(path))["traceEvents"] if e.get("ph") == "X"]
    steps = [e for e in events if e["name"].startswith("ThunkExecutor::Execute (wait")]
    out, step_ms = collections.Counter(), []
    for s in steps[-STEPS:]:
        t0, t1 = s["ts"], s["ts"] + s["dur"]
        covered = 0.0
        for e in events:
            kind = kinds.get(e["name"])
            if kind and t0 <= e["ts"] <= t1:
                out[kind] += e["dur"] / 1e3 / STEPS
                covered += e["dur"] / 1e3
        out["between ops"] += (s["dur"] / 1e3 - covered) / STEPS
        step_ms.append(s["dur"] / 1e3)
    return {"kinds": dict(out), "step_ms": float(np.median(step_ms)), "wall_ms": wall * 1e3}


TORCH_KINDS = {"aten::convolution_backward": "conv backward (both)",
               "aten::mkldnn_convolution": "conv forward", "aten::convolution": "conv forward",
               "aten::_convolution": "conv forward", "aten::conv2d": "conv forward",
               "aten::sum": "reductions", "aten::mean": "reductions",
               "aten::copy_": "layout transposes (+ fused elementwise)",
               "aten::contiguous": "layout transposes (+ fused elementwise)"}


def profile_torch(net, xt, yt) -> dict:
    """ms per step by kind for PyTorch's eager step (self CPU time of each aten op)."""
    step = peers.torch_step(net, xt, yt, log_norms=False)
    for _ in range(3):
        step()
    t = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(STEPS):
            step()
    wall = (time.perf_counter() - t) / STEPS * 1e3
    out = collections.Counter()
    for e in prof.key_averages():
        if e.key.startswith("aten::"):
            out[TORCH_KINDS.get(e.key, "other fusions / elementwise")] += e.self_cpu_time_total / 1e3 / STEPS
    out["between ops"] = wall - sum(out.values())
    t = time.perf_counter()
    for _ in range(STEPS * 4):
        step()
    return {"kinds": dict(out), "wall_ms": (time.perf_counter() - t) / STEPS / 4 * 1e3,
            "profiled_wall_ms": wall}


def main():
    torch.set_num_threads(1)
    ds = gf.data.synthetic(seed=0)
    x, y = ds.x_train[:peers.BATCH], ds.y_train[:peers.BATCH]
    results = {}
    for arch in ("plain", "residual_bn"):
        model = gf.models.cnn(arch, peers.DEPTH, width=peers.WIDTH, rngs=nnx.Rngs(0))
        net = peers.TorchCNN(arch, peers.DEPTH, peers.WIDTH)
        peers.copy_weights(model, net)
        xt, yt = peers._to_torch(x, net), torch.from_numpy(np.asarray(y)).long()
        g, t = profile_gradflow(model, jax.numpy.asarray(x), jax.numpy.asarray(y)), profile_torch(net, xt, yt)
        results[arch] = {"gradflow": g, "torch": t}
        print(f"\n{arch} CNN, depth {peers.DEPTH}, one core: ms per step by kind")
        print("| kind | gradflow (XLA:CPU) | PyTorch eager |")
        print("|---|---|---|")
        for kind in KINDS:
            a, b = g["kinds"].get(kind, 0.0), t["kinds"].get(kind, 0.0)
            if a or b:
                print(f"| {kind} | {a:.1f} | {b:.1f} |")
        print(f"| step (unprofiled wall) | {g['step_ms']:.1f} | {t['wall_ms']:.1f} |", flush=True)
    out = os.path.join(os.path.dirname(__file__), "step_profile.json")
    with open(out, "w") as f:
        json.dump({"command": "python benchmarks/step_profile.py", "machine": peers.machine(),
                   "load_average": os.getloadavg(), "results": results}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
