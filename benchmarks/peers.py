"""Peers: gradflow's train step against PyTorch eager, PyTorch with norm logging, and Cockpit.

    pip install -e ".[peers]"                # torch 2.13 (CPU), cockpit-for-pytorch, backpack-for-pytorch
    python benchmarks/peers.py               # depth-50 residual_bn and plain CNNs + the MLP, minutes
    python benchmarks/peers.py --quick       # residual_bn CNN only, fewer rounds, under a minute

One process, one model per architecture: the zoo's `gf.models.cnn(arch, 50, width=16)` (and
`gf.models.mlp(arch, 50, width=256)` for `--mlps`, its blocks scanned as on CPU by default) and a
PyTorch module mirroring it layer for layer (stem 3x3 conv or Linear -> hidden units / v1
residual blocks -> global average pooling for the CNN -> Linear; BN without bias before it),
started from the same weights (copied from the gradflow model and checked by comparing one
forward pass). Same data (one batch of the
built-in synthetic set, batch 32, 16x16x3), same loss (mean cross-entropy), same optimizer (SGD,
lr 0.01, momentum 0.9). Configurations, each training its own copy:

- `torch bare`         PyTorch eager: zero_grad, forward, loss, backward, step, loss.item();
- `torch norm logging` the same, then `norms[name] = p.grad.norm().item()` for every parameter;
- `cockpit economy`    the same under Cockpit's "economy" quantities (BackPACK-extended model and
                       loss, per-example losses handed in, create_graph as Cockpit asks);
- `gradflow bare`      the compiled bare step (`gradflow.steps.train_steps`), loss and accuracy;
- `gradflow instrumented` the compiled instrumented step, its per-layer statistics fetched to host.

After one warm-up round (compiles, first runs; excluded), `--rounds` rounds run every
configuration for `--steps` timed steps each, in a freshly shuffled order per round; the median
wall-clock ms per step is reported with its overhead over the configuration's own bare step
(PyTorch bare for the PyTorch peers, gradflow bare for gradflow) and its ratio to PyTorch bare,
and the same for the process's CPU time per step (steadier than wall time when other processes
share the cores; it includes threads that spin while waiting). PyTorch runs with
`torch.set_num_threads(--threads)`; XLA:CPU uses its own thread pool over all cores, or one
thread with `--threads 1`. With `--malloc reuse` (the default) the process first calls
`gradflow.host_memory.reuse_freed_memory()`, as `python -m gradflow.run` does; it applies to
torch as well. The load average before and after is printed and saved.
Writes `--out` (default benchmarks/peers.json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import sys
import time
import warnings

PEERS_HINT = "peers benchmark needs: pip install -e '.[peers]' (torch, cockpit-for-pytorch, backpack-for-pytorch)"


def _early_options(argv):
    """--threads and --malloc, read before JAX and torch are imported: XLA:CPU takes its thread
    settings at start-up, and malloc's options must be set before the threads first allocate."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--threads", type=int, default=2)
    pre.add_argument("--malloc", choices=("reuse", "default"), default="reuse")
    return pre.parse_known_args(argv)[0]


# XLA:CPU runs one step on a thread pool over all cores; with --threads 1 it gets one thread, as
# torch does, so that both frameworks use the same number of cores.
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
# The flags alone leave XLA's runtime pool running on every core (CPU time exceeded wall time),
# so the process is also pinned to `--threads` cores: neither framework can use more.
EARLY = _early_options(sys.argv[1:])
THREADS = EARLY.threads
if THREADS == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
if hasattr(os, "sched_setaffinity") and THREADS < len(os.sched_getaffinity(0)):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:THREADS])

from gradflow.host_memory import reuse_freed_memory  # noqa: E402 (imports JAX, no backend yet)

# as `python -m gradflow.run` does, before any computation; the whole process, torch included
MALLOC_REUSE = EARLY.malloc == "reuse" and reuse_freed_memory()

try:
    import torch
    from torch import nn
    with warnings.catch_warnings():  # cockpit imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        from backpack import extend
        from cockpit import Cockpit
        from cockpit.utils.configuration import configuration
except ImportError as e:
    sys.exit(f"{PEERS_HINT}; missing: {e.name}")

import jax
import numpy as np
import optax
from flax import nnx

import gradflow as gf
from gradflow import data as gf_data
from gradflow.losses import LOSSES
from gradflow.instrument.steps import layout_for, train_steps

DEPTH, WIDTH, MLP_WIDTH, BATCH, LR, MOMENTUM = 50, 16, 256, 32, 0.01, 0.9
TORCH_BARE, GF_BARE = "torch bare", "gradflow bare"
OWN_BARE = {"torch bare": TORCH_BARE, "torch norm logging": TORCH_BARE,
            "cockpit economy": TORCH_BARE, "gradflow bare": GF_BARE,
            "gradflow instrumented": GF_BARE}


# --- the PyTorch mirror of gf.models.cnn(arch, depth, width) ----------------------------------

class TorchUnit(nn.Module):
    """conv 3x3 or Linear (bias unless BN) -> optional BatchNorm -> optional ReLU, as gradflow's
    Unit."""

    def __init__(self, cin, cout, *, norm: bool, act: bool, dense: bool = False):
        super().__init__()
        self.layer = (nn.Linear(cin, cout, bias=not norm) if dense else
                      nn.Conv2d(cin, cout, 3, padding=1, bias=not norm))
        # flax momentum 0.99 (weight of the old value) is torch momentum 0.01; same epsilon
        bn = nn.BatchNorm1d if dense else nn.BatchNorm2d
        self.norm = bn(cout, eps=1e-5, momentum=0.01) if norm else None
        self.act = nn.ReLU() if act else None

    def forward(self, x):
        x = self.layer(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x) if self.act is not None else x


class TorchResidualBlock(nn.Module):
    """relu(unit2(unit1(x)) + x), He et al. v1, as gradflow's ResidualBlock with equal shapes."""

    def __init__(self, width, *, norm: bool, dense: bool = False):
        super().__init__()
        self.unit1 = TorchUnit(width, width, norm=norm, act=True, dense=dense)
        self.unit2 = TorchUnit(width, width, norm=norm, act=False, dense=dense)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.unit2(self.unit1(x)) + x)


class TorchCNN(nn.Module):
    """stem -> hidden blocks -> global average pooling -> Linear (NCHW inputs); with `dense`,
    the mirror of gf.models.mlp instead: Linear units on the inputs flattened in gradflow's
    (NHWC) order, no pooling."""

    def __init__(self, arch: str, depth: int, width: int, num_classes: int = 10, *,
                 dense: bool = False, in_features: int = 3):
        super().__init__()
        norm, residual = arch in ("bn", "residual_bn"), arch in ("residual", "residual_bn")
        n_blocks = gf.models.networks.hidden_blocks(arch, depth)
        self.dense = dense
        self.stem = TorchUnit(in_features, width, norm=norm, act=True, dense=dense)
        self.blocks = nn.ModuleList(
            TorchResidualBlock(width, norm=norm, dense=dense) if residual else
            TorchUnit(width, width, norm=norm, act=True, dense=dense) for _ in range(n_blocks))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x.flatten(1) if self.dense else x)
        for block in self.blocks:
            x = block(x)
        return self.head(x if self.dense else x.mean(dim=(2, 3)))


def _torch_name(path) -> str:
    """A gradflow state path -> the mirror's parameter/buffer name ("blocks.{}." and the rest
    for a scanned stack's arrays, whose leading axis is the block)."""
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    keys = [k for k in keys if k != "value"]
    if keys[:3] == ["stages", "0", "rest"]:
        keys = keys[3:]
    if keys[0] == "block":  # scanned: one array over every block
        keys = ["blocks", "{}"] + keys[1:]
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
            "var": "running_var"}[keys[-1]]
    return ".".join(keys[:-1] + [leaf])


def copy_weights(model: nnx.Module, net: nn.Module) -> None:
    """Load the gradflow model's parameters and BN statistics into the mirror (shapes checked)."""
    target = dict(net.named_parameters()) | dict(net.named_buffers())
    leaves = [leaf for kind in (nnx.Param, nnx.BatchStat)
              for leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, kind))]
    names = set()
    arrays = []
    for path, value in leaves:
        name, a = _torch_name(path), np.asarray(value)
        arrays += ([(name.format(i), a[i]) for i in range(a.shape[0])] if "{}" in name
                   else [(name, a)])
    for name, a in arrays:
        if a.ndim == 4:  # conv kernel HWIO -> OIHW
            a = a.transpose(3, 2, 0, 1)
        elif a.ndim == 2:  # linear kernel (in, out) -> (out, in)
            a = a.T
        if target[name].shape != a.shape:
            raise ValueError(f"{name}: gradflow {a.shape} vs torch {tuple(target[name].shape)}")
        with torch.no_grad():
            target[name].copy_(torch.from_numpy(np.array(a)))
        names.add(name)
    missing = {n for n in target if not n.endswith("num_batches_tracked")} - names
    if missing:
        raise ValueError(f"mirror has tensors gradflow lacks: {sorted(missing)[:5]}")


def check_mirror(model, net, x) -> float:
    """Max |logit difference| / max |logit| of one training-mode forward pass (BN on batch
    statistics)."""
    logits = np.asarray(nnx.clone(model)(x), np.float64)
    with torch.no_grad():
        ref = net.train()(_to_torch(x, net)).numpy()
    return float(np.max(np.abs(logits - ref)) / np.max(np.abs(logits)))


def _to_torch(x, net=None) -> torch.Tensor:
    """NHWC images as the mirror takes them: NCHW for a CNN, as they are for an MLP."""
    x = np.asarray(x)
    return torch.from_numpy(np.ascontiguousarray(
        x if getattr(net, "dense", False) else x.transpose(0, 3, 1, 2)))


# --- the configurations: each a closure running one train step to completion ------------------

def torch_step(net, xt, yt, log_norms: bool):
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    net.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        if log_norms:  # the usual per-layer logging loop
            norms = {}
            for name, p in net.named_parameters():
                norms[name] = p.grad.norm().item()
        opt.step()
        return loss.item()

    return step


def cockpit_step(net, xt, yt, quantities=None):
    """A Cockpit train step; `quantities` default to Cockpit's "economy" configuration."""
    net = extend(net)
    loss_fn = extend(nn.CrossEntropyLoss(reduction="mean"))
    individual_loss_fn = nn.CrossEntropyLoss(reduction="none")
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    if quantities is None:
        quantities = configuration("economy")
    cockpit = Cockpit(net.parameters(), quantities=quantities)
    net.train()
    global_step = [0]

    def step():
        opt.zero_grad(set_to_none=True)
        out = net(xt)
        loss, losses = loss_fn(out, yt), individual_loss_fn(out, yt)
        i = global_step[0]
        info = {"batch_size": xt.shape[0], "individual_losses": losses, "loss": loss,
                "optimizer": opt}
        with cockpit(i, info=info):
            loss.backward(create_graph=cockpit.create_graph(i))
        opt.step()
        global_step[0] += 1
        return loss.item()

    return step


def gradflow_steps(model, x, y):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(LR, momentum=MOMENTUM)
    instrumented, bare = train_steps(graphdef, layout_for(graphdef, params, rest, x),
                                     *LOSSES["cross_entropy"], tx)
    states = {"bare": (params, rest, tx.init(params)), "inst": (params, rest, tx.init(params))}

    def make(kind, fn):
        def step():
            out = fn(*states[kind], x, y)
            measured = jax.device_get(out[3])  # the user sees the numbers, like .item()
            states[kind] = out[:3]
            return float(measured["loss"])
        return step

    return make("bare", bare), make("inst", instrumented)


# --- timing ----------------------------------------------------------------------------------

def time_interleaved(configs: dict, rounds: int, steps: int, seed: int = 0,
                     warmup: int = 1) -> dict:
    """Per configuration, (wall, process CPU) seconds of each timed step; the first `warmup`
    rounds are not kept. CPU time counts every thread of the process, spin-waiting ones
    included."""
    times = {name: [] for name in configs}
    order, rng = list(configs), random.Random(seed)
    for r in range(rounds + warmup):
        rng.shuffle(order)
        for name in order:
            for _ in range(steps):
                t, c = time.perf_counter(), time.process_time()
                loss = configs[name]()
                dt, dc = time.perf_counter() - t, time.process_time() - c
                if not np.isfinite(loss):
                    raise RuntimeError(f"{name}: non-finite loss in round {r}")
                if r >= warmup:
                    times[name].append((dt, dc))
    return times


def summarize(times: dict, own_bare: dict = OWN_BARE, reference: str = TORCH_BARE) -> dict:
    """Median (and quartile) ms per step and CPU ms per step of each configuration, with its
    overhead over its own bare step (`own_bare[name]`) and its ratio to `reference`."""
    wall = {name: np.array([w for w, _ in t]) for name, t in times.items()}
    cpu = {name: np.array([c for _, c in t]) for name, t in times.items()}
    med = {name: float(np.median(t)) for name, t in wall.items()}
    cmed = {name: float(np.median(t)) for name, t in cpu.items()}
    rows = {}
    for name in times:
        own = own_bare[name]
        rows[name] = {"ms": med[name] * 1e3,
                      "p25_ms": float(np.percentile(wall[name], 25)) * 1e3,
                      "p75_ms": float(np.percentile(wall[name], 75)) * 1e3,
                      "cpu_ms": cmed[name] * 1e3,
                      "n": len(wall[name]),
                      "own_bare": own,
                      "overhead": med[name] / med[own] - 1,
                      "cpu_overhead": cmed[name] / cmed[own] - 1,
                      "vs_torch_bare": med[name] / med[reference],
                      "cpu_vs_torch_bare": cmed[name] / cmed[reference]}
    return rows


def run_arch(arch: str, x, y, rounds: int, steps: int, kind: str = "cnn") -> dict:
    """Times every configuration on one architecture: `kind` "cnn" (depth 50, width 16) or
    "mlp" (depth 50, width 256, the inputs flattened, as in `benchmarks/overhead.py`)."""
    if kind == "cnn":
        model = gf.models.cnn(arch, DEPTH, width=WIDTH, rngs=nnx.Rngs(0))
        mirror = lambda: TorchCNN(arch, DEPTH, WIDTH)  # noqa: E731
    else:
        in_features = int(np.prod(x.shape[1:]))
        model = gf.models.mlp(arch, DEPTH, width=MLP_WIDTH, in_features=in_features,
                              num_classes=10, rngs=nnx.Rngs(0))
        mirror = lambda: TorchCNN(arch, DEPTH, MLP_WIDTH, dense=True,  # noqa: E731
                                  in_features=in_features)
    nets = {}
    for name in ("torch bare", "torch norm logging", "cockpit economy"):
        nets[name] = mirror()
        copy_weights(model, nets[name])
    n_torch = sum(p.numel() for p in nets[TORCH_BARE].parameters())
    n_gf = sum(int(np.size(a)) for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
    if n_torch != n_gf:
        raise RuntimeError(f"mirror has {n_torch} parameters, gradflow {n_gf}")
    diff = check_mirror(model, nets[TORCH_BARE], x)
    if diff > 1e-3:
        raise RuntimeError(f"mirror's logits differ from gradflow's by {diff:.1e} (relative)")
    xt, yt = _to_torch(x, nets[TORCH_BARE]), torch.from_numpy(np.asarray(y)).long()
    gf_bare, gf_inst = gradflow_steps(model, x, y)
    configs = {"torch bare": torch_step(nets["torch bare"], xt, yt, False),
               "torch norm logging": torch_step(nets["torch norm logging"], xt, yt, True),
               "cockpit economy": cockpit_step(nets["cockpit economy"], xt, yt),
               "gradflow bare": gf_bare, "gradflow instrumented": gf_inst}
    with warnings.catch_warnings():
        # BackPACK: BN in training mode mixes samples (per-example gradients of BN nets are not
        # per-example); containers "have parameters" (their children's); a full backward hook
        # fires on module outputs since the input needs no gradient. None changes the timing.
        for message in ("Encountered BatchNorm module in training mode",
                        "Extension saving to .* does not have an extension for Module",
                        "Full backward hook is firing"):
            warnings.filterwarnings("ignore", message=message)
        times = time_interleaved(configs, rounds, steps)
    return {"arch": arch, "kind": kind, "params": n_gf, "mirror_rel_logit_diff": diff,
            "width": WIDTH if kind == "cnn" else MLP_WIDTH, "rows": summarize(times)}


def print_table(result: dict) -> None:
    print(f"\n{result['arch']} {result['kind'].upper()}, depth {DEPTH}, width {result['width']}, "
          f"{result['params']:,} parameters "
          f"(mirror's logits agree to {result['mirror_rel_logit_diff']:.0e} relative)")
    print("| framework / config | ms per step (p25-p75) | CPU ms per step | overhead over own bare "
          "(wall / CPU) | vs PyTorch bare (wall / CPU) |")
    print("|---|---|---|---|---|")
    for name, r in result["rows"].items():
        over = "—" if name == r["own_bare"] else (
            f"{r['overhead'] * 100:+.0f}% / {r['cpu_overhead'] * 100:+.0f}% ({r['own_bare']})")
        print(f"| {name} | {r['ms']:.1f} ({r['p25_ms']:.1f}-{r['p75_ms']:.1f}) | {r['cpu_ms']:.1f} | "
              f"{over} | {r['vs_torch_bare']:.2f}x / {r['cpu_vs_torch_bare']:.2f}x |", flush=True)


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib.metadata import version
    versions = {"python": platform.python_version()} | {
        name: version(dist) for name, dist in (
            ("torch", "torch"), ("jax", "jax"), ("flax", "flax"), ("optax", "optax"),
            ("cockpit", "cockpit-for-pytorch"), ("backpack", "backpack-for-pytorch"))}
    return {"cpu": cpu, "cores": os.cpu_count(), "versions": versions}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="residual_bn only, 5 rounds of 2 steps")
    p.add_argument("--archs", default="residual_bn,plain",
                   help="comma-separated: residual_bn, bn, plain, residual (default residual_bn,plain)")
    p.add_argument("--mlps", default="residual_bn",
                   help="comma-separated MLP archs (depth 50, width 256); '' for none")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration per round")
    p.add_argument("--threads", type=int, default=2,
                   help="torch.set_num_threads; 1 also makes XLA:CPU single-threaded (default 2)")
    p.add_argument("--malloc", choices=("reuse", "default"), default="reuse",
                   help="reuse: malloc keeps freed memory, as `python -m gradflow.run` sets it "
                        "(gradflow.host_memory; the whole process, torch included); default: "
                        "glibc's own behaviour")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "peers.json"))
    a = p.parse_args(argv)
    archs = ["residual_bn"] if a.quick else a.archs.split(",")
    mlps = [] if a.quick else [m for m in a.mlps.split(",") if m]
    bad = [arch for arch in archs + mlps if arch not in gf.models.ARCHS]
    if bad:
        p.error(f"--archs: {bad[0]!r} is not one of {', '.join(gf.models.ARCHS)}")
    for flag in ("rounds", "steps", "threads"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag} must be a positive integer")
    rounds, steps = (5, 2) if a.quick else (a.rounds, a.steps)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ds = gf_data.synthetic(seed=0)
    x, y = ds.x_train[:BATCH], ds.y_train[:BATCH]
    info = machine()
    load_before = os.getloadavg()
    xla_threads = "1 thread" if a.threads == 1 else "its default thread pool"
    print(f"{info['cpu']}, {info['cores']} cores; torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, jax {jax.__version__} ({jax.default_backend()}, "
          f"{xla_threads}); malloc {'reusing freed memory' if MALLOC_REUSE else 'as glibc sets it'}; "
          f"load average {load_before[0]:.2f}")
    print(f"batch {BATCH}, 16x16x3, SGD lr {LR} momentum {MOMENTUM}; {rounds} rounds x {steps} "
          "steps per configuration after 1 warm-up round; median")
    t0 = time.perf_counter()
    results = []
    for kind, arch in [("cnn", arch) for arch in archs] + [("mlp", arch) for arch in mlps]:
        results.append(run_arch(arch, x, y, rounds, steps, kind))
        print_table(results[-1])
    load_after = os.getloadavg()
    print(f"\nload average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"{time.perf_counter() - t0:.0f} s")
    record = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "python benchmarks/peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": info, "torch_threads": torch.get_num_threads(),
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc_reuse": bool(MALLOC_REUSE),
              "loadavg_before": load_before, "loadavg_after": load_after,
              "batch": BATCH, "depth": DEPTH, "width": WIDTH, "lr": LR, "momentum": MOMENTUM,
              "rounds": rounds, "steps_per_round": steps, "results": results}
    with open(a.out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
