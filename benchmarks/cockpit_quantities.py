"""Cockpit and gradflow on the same quantities: agreement on identical weights, and cost per step.

    pip install -e ".[peers]"                       # torch 2.13 (CPU), cockpit-for-pytorch, backpack
    python benchmarks/cockpit_quantities.py         # agreement on 5 networks, speed at depth 50
    python benchmarks/cockpit_quantities.py --quick # the small MLP only, under a minute

Networks without BatchNorm (BackPACK's per-example gradients are not per-example under BatchNorm
in training mode): `gf.models.mlp("plain", 4, width=32)` on the flattened images, and
`gf.models.cnn(arch, depth, width=16)` for arch plain and residual at depth 10 and 50. Each is
mirrored in PyTorch as an `nn.Sequential` of BackPACK-supported modules (residual blocks as
BackPACK's `Parallel(branch, Identity)` followed by a ReLU; pooling as `AdaptiveAvgPool2d`), with
the weights copied from the gradflow model (`peers.copy_weights`) and one forward pass compared.
One batch of the built-in synthetic set (batch 32, 16x16x3), mean cross-entropy.

Agreement. Cockpit tracks NormTest, InnerTest, OrthoTest, MeanGSNR, HessMaxEV, HessTrace and
GradHist1d at step 0 (per-example losses handed in, the loss extended by BackPACK); gradflow
runs `gf.probe(model, (x, y), noise=True, curvature=True, histograms=True)`. Independent
float64 references: the noise quantities from an explicit per-example loop in PyTorch float64,
the two eigenvalues of largest magnitude from scipy's Lanczos (`eigsh`) on float64
Hessian-vector products, the trace from BackPACK's exact diagonal in float64 (and, for the MLP,
gradflow's exact trace, one Hessian-vector product per parameter). Cockpit's HessTrace is the
exact diagonal of the Hessian (`diag_h`) where BackPACK has it; BackPACK's DiagHessian has no
rule for branching (`SumModule`), so for residual networks HessTrace uses `diag_ggn_exact`,
which for piecewise-linear networks has the same diagonal (each weight enters the output
linearly; checked on the plain networks, where both run). GradHist1d runs with 20,000 bins on
(-10, 10) so that its bin edges include the decades 1e-3 ... 10 of gradflow's per-example
histogram (`example_grad_hist`): counts are compared per decade.

Speed. After each configuration's first step (compiles; timed apart), `--rounds` interleaved
rounds (as in peers.py: a shuffled order per round, medians of wall and process CPU time per
step) of full train steps, SGD lr 0.01 momentum 0.9, each configuration training its own copy:

- `torch bare`:  zero_grad, forward, loss, backward, step, loss.item();
- `cockpit`:     the same with the seven quantities tracked at every step (GradHist1d with its
                 default 100 bins), per-example losses handed in, create_graph as Cockpit asks;
- `gradflow bare`: `nnx.value_and_grad` in an `nnx.jit` step with `nnx.Optimizer`;
- `gradflow noise`, `gradflow curvature`, `gradflow all`: the same step with
  `gf.value_and_grad(loss_fn, noise=..., curvature=..., histograms=...)`: noise (and
  histograms) only, curvature only, and all of them.

Writes `--out` (default benchmarks/cockpit_quantities.json; with --quick only when given).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# peers imports torch, BackPACK and Cockpit and sets the thread count from --threads
from peers import (BATCH, LR, MOMENTUM, TorchCNN, TorchResidualBlock, _to_torch,  # noqa: E402
                   copy_weights, cockpit_step, machine, summarize, time_interleaved, torch_step)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from backpack import backpack, extend  # noqa: E402
from backpack.custom_module.branching import Parallel  # noqa: E402
from backpack.extensions import DiagGGNExact, DiagHessian  # noqa: E402
from cockpit import Cockpit, quantities as cq  # noqa: E402
from cockpit.utils import schedules  # noqa: E402
from scipy.sparse.linalg import LinearOperator, eigsh  # noqa: E402

import jax  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import gradflow as gf  # noqa: E402
from gradflow import data as gf_data  # noqa: E402
from gradflow.quantities import curvature as gf_curv  # noqa: E402

WIDTH, MLP_WIDTH, MLP_DEPTH = 16, 32, 4
EPSILON = 1e-5  # MeanGSNR's stabiliser, both sides
HIST_RANGE, HIST_BINS = (-10.0, 10.0), 20_000  # edges at multiples of 1e-3
DECADES = ("<1e-3", "1e-3..1e-2", "1e-2..1e-1", "1e-1..1", "1..10", ">=10")
NOISE = ("norm_test", "inner_test", "ortho_test", "mean_gsnr")
BARE = {"torch bare": "torch bare", "cockpit": "torch bare", "gradflow bare": "gradflow bare",
        "gradflow noise": "gradflow bare", "gradflow curvature": "gradflow bare",
        "gradflow all": "gradflow bare"}


# --- models: gradflow, its PyTorch mirror, and that mirror as BackPACK's nn.Sequential ---------

class TorchLinearUnit(nn.Module):
    """Linear -> optional ReLU, named as peers.TorchUnit (so peers.copy_weights maps it)."""

    def __init__(self, fin, fout, act=True):
        super().__init__()
        self.layer = nn.Linear(fin, fout)
        self.act = nn.ReLU() if act else None


class TorchMLP(nn.Module):
    """The parameter layout of gf.models.mlp("plain", depth, width) (stem, blocks, head)."""

    def __init__(self, depth, width, in_features, num_classes=10):
        super().__init__()
        self.stem = TorchLinearUnit(in_features, width)
        self.blocks = nn.ModuleList(TorchLinearUnit(width, width) for _ in range(depth - 2))
        self.head = nn.Linear(width, num_classes)


def _unit(u) -> list:
    return [u.layer] + ([nn.ReLU()] if u.act is not None else [])


def sequential(net) -> nn.Sequential:
    """The mirror as an nn.Sequential of BackPACK modules, sharing its parameters."""
    mods = [nn.Flatten()] if isinstance(net, TorchMLP) else []
    mods += _unit(net.stem)
    for b in net.blocks:
        if isinstance(b, TorchResidualBlock):
            branch = nn.Sequential(*_unit(b.unit1), *_unit(b.unit2))
            mods += [Parallel(branch, nn.Identity()), nn.ReLU()]
        else:
            mods += _unit(b)
    if isinstance(net, TorchCNN):
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*mods, net.head)


def build(case: str):
    """(gradflow model, factory of fresh weight-identical Sequential mirrors, torch input,
    description)."""
    if case == "mlp":
        model = gf.models.mlp("plain", MLP_DEPTH, width=MLP_WIDTH, in_features=16 * 16 * 3,
                              num_classes=10, stack="unrolled", rngs=nnx.Rngs(0))
        arch, depth = "plain", MLP_DEPTH

        def make():
            net = TorchMLP(MLP_DEPTH, MLP_WIDTH, 16 * 16 * 3)
            copy_weights(model, net)
            return sequential(net)
        desc = f"MLP plain, depth {MLP_DEPTH}, width {MLP_WIDTH}"
        return model, make, "nhwc", desc
    arch, depth = case.rsplit("_", 1)
    depth = int(depth)
    model = gf.models.cnn(arch, depth, width=WIDTH, rngs=nnx.Rngs(0))

    def make():
        net = TorchCNN(arch, depth, WIDTH)
        copy_weights(model, net)
        return sequential(net)
    return model, make, "nchw", f"CNN {arch}, depth {depth}, width {WIDTH}"


def torch_input(x, layout: str, dtype=torch.float32):
    """The batch as the mirror takes it: NCHW for CNNs, the NHWC images for the MLP (its
    Flatten then gives gradflow's feature order)."""
    t = _to_torch(x) if layout == "nchw" else torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    return t.to(dtype)


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


# --- agreement -------------------------------------------------------------------------------

def cockpit_values(net, xt, yt, residual: bool) -> dict:
    """Cockpit's seven quantities at step 0 on the extended mirror."""
    every = schedules.linear(1)
    curv = "diag_ggn_exact" if residual else "diag_h"
    quants = [cq.NormTest(every), cq.InnerTest(every), cq.OrthoTest(every), cq.MeanGSNR(every),
              cq.HessMaxEV(every), cq.HessTrace(every, curvature=curv),
              cq.GradHist1d(every, bins=HIST_BINS, range=HIST_RANGE)]
    net = extend(net)
    loss_fn_t = extend(nn.CrossEntropyLoss(reduction="mean"))
    cockpit = Cockpit(net.parameters(), quantities=quants)
    out = net(xt)
    loss, losses = loss_fn_t(out, yt), nn.CrossEntropyLoss(reduction="none")(out, yt)
    torch.manual_seed(0)
    with cockpit(0, info={"batch_size": xt.shape[0], "individual_losses": losses, "loss": loss}):
        loss.backward(create_graph=cockpit.create_graph(0))
    o = cockpit.get_output()[0]  # {quantity class name: value} at step 0
    hist = o["GradHist1d"]
    return {"norm_test": o["NormTest"], "inner_test": o["InnerTest"],
            "ortho_test": o["OrthoTest"], "mean_gsnr": o["MeanGSNR"],
            "hess_max_ev": float(o["HessMaxEV"]), "hess_trace": float(sum(o["HessTrace"])),
            "hess_trace_curvature": curv,
            "decades": cockpit_decades(np.asarray(hist["hist"], np.float64),
                                       np.asarray(hist["edges"], np.float64))}


def cockpit_decades(hist, edges) -> list:
    """GradHist1d's counts regrouped by |bin centre| into DECADES (edges are multiples of 1e-3,
    so every bin lies in one decade; the outer bins also hold the values clipped at ±10)."""
    c = np.abs((edges[:-1] + edges[1:]) / 2)
    bounds = [0, 1e-3, 1e-2, 1e-1, 1, 10, np.inf]
    return [float(hist[(c >= lo) & (c < hi)].sum()) for lo, hi in zip(bounds[:-1], bounds[1:])]


def gradflow_decades(example_grad_hist) -> list:
    """gradflow's per-example counts (bins: <1e-24, decades 1e-24 ... 1e8, >=1e8) in DECADES."""
    h = np.asarray(example_grad_hist, np.float64).sum(0)
    return [float(h[:22].sum()), float(h[22]), float(h[23]), float(h[24]), float(h[25]),
            float(h[26:].sum())]


@contextlib.contextmanager
def default_dtype(dtype):
    """BackPACK's pooling derivatives build their helper convolutions in the default dtype."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def reference_f64(make, x, y, layout: str) -> dict:
    """Independent float64 values: the noise quantities from an explicit per-example loop, the
    two largest-magnitude Hessian eigenvalues (Lanczos on Hessian-vector products) and the
    exact trace (BackPACK's diagonal, in float64)."""
    net = make().double()
    xt, yt = torch_input(x, layout, torch.float64), torch.from_numpy(np.asarray(y)).long()
    params = [p for p in net.parameters()]
    rows = []
    for n in range(xt.shape[0]):
        loss = nn.functional.cross_entropy(net(xt[n:n + 1]), yt[n:n + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    G = torch.stack(rows).numpy()  # (B, P) per-example gradients
    B = G.shape[0]
    g = G.mean(0)
    gg = g @ g
    proj = G @ g
    ortho = G - np.outer(proj / gg, g)
    out = {"norm_test": np.sqrt(((G - g) ** 2).sum() / (B - 1) / B / gg),
           "inner_test": np.sqrt(np.var(proj, ddof=1) / B / gg ** 2),
           "ortho_test": np.sqrt((ortho ** 2).sum() / (B - 1) / B / gg),
           "mean_gsnr": np.mean(g ** 2 / ((G ** 2).mean(0) - g ** 2 + EPSILON))}
    # Hessian of the mean loss: Lanczos (scipy eigsh) on float64 Hessian-vector products
    loss = nn.functional.cross_entropy(net(xt), yt)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    sizes = [p.numel() for p in params]
    count = [0]

    def matvec(v):
        count[0] += 1
        vs = [torch.from_numpy(np.array(c)).reshape(p.shape)
              for c, p in zip(np.split(np.asarray(v, np.float64).ravel(), np.cumsum(sizes)[:-1]),
                              params)]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).numpy()

    n = sum(sizes)
    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    ev = eigsh(op, k=2, which="LM", tol=1e-8, return_eigenvectors=False,
               v0=np.random.default_rng(0).standard_normal(n))
    ev = sorted(ev, key=abs, reverse=True)
    out |= {"hess_max_ev": float(ev[0]), "hess_ev2": float(ev[1]), "lanczos_products": count[0]}
    # exact trace: BackPACK's Hessian diagonal (the GGN's for residual nets) in float64
    ext_net = extend(net)
    lf = extend(nn.CrossEntropyLoss())
    ext = DiagGGNExact() if any(isinstance(m, Parallel) for m in net.modules()) else DiagHessian()
    with backpack(ext), default_dtype(torch.float64):
        lf(ext_net(xt), yt).backward()
    field = "diag_ggn_exact" if isinstance(ext, DiagGGNExact) else "diag_h"
    out["hess_trace"] = float(sum(getattr(p, field).sum() for p in net.parameters()))
    return {k: float(v) if not isinstance(v, int) else v for k, v in out.items()}


def exact_trace_gradflow(model, x, y) -> float:
    """gradflow's exact trace: one Hessian-vector product per parameter (small models only)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n = sum(int(np.size(a)) for a in jax.tree.leaves(params))

    @jax.jit
    def run(params):
        loss = lambda p: gf.losses.cross_entropy(nnx.merge(graphdef, p, rest, copy=True)(x), y)
        return gf_curv.trace(loss, params, exact_below=n, chunk=512).value
    return float(run(params))


def diag_h_vs_ggn(make, x, y, layout) -> float:
    """|tr diag_h - tr diag_ggn_exact| / |tr diag_h| on a plain mirror (float64)."""
    net = extend(make().double())
    xt, yt = torch_input(x, layout, torch.float64), torch.from_numpy(np.asarray(y)).long()
    lf = extend(nn.CrossEntropyLoss())
    with backpack(DiagHessian(), DiagGGNExact()), default_dtype(torch.float64):
        lf(net(xt), yt).backward()
    h = float(sum(p.diag_h.sum() for p in net.parameters()))
    ggn = float(sum(p.diag_ggn_exact.sum() for p in net.parameters()))
    return abs(h - ggn) / abs(h)


def agreement(case: str, x, y, exact_mlp_trace: bool) -> dict:
    model, make, layout, desc = build(case)
    net = make()
    xt, yt = torch_input(x, layout), torch.from_numpy(np.asarray(y)).long()
    with torch.no_grad():
        ref_logits = net(xt).numpy()
    logits = np.asarray(nnx.clone(model)(x))
    mirror = float(np.max(np.abs(logits - ref_logits)) / np.max(np.abs(logits)))
    if mirror > 1e-3:
        raise RuntimeError(f"{case}: mirror's logits differ by {mirror:.1e} (relative)")
    n_params = sum(p.numel() for p in net.parameters())
    t = time.perf_counter()
    ck = cockpit_values(net, xt, yt, residual=any(isinstance(m, Parallel) for m in net.modules()))
    t_ck = time.perf_counter() - t
    t = time.perf_counter()
    snap = gf.probe(model, (x, y), noise=True, curvature=True, histograms=True)
    t_gf = time.perf_counter() - t
    gfv = {k: float(snap[k]) for k in NOISE + ("hess_max_ev", "hess_trace", "hess_trace_se",
                                               "hess_max_ev_converged")}
    gfv["decades"] = gradflow_decades(snap["example_grad_hist"])
    t = time.perf_counter()
    ref = reference_f64(make, x, y, layout)
    t_ref = time.perf_counter() - t
    out = {"case": case, "description": desc, "params": n_params, "mirror_rel_logit_diff": mirror,
           "cockpit": ck, "gradflow": gfv, "reference_f64": ref,
           "seconds": {"cockpit": t_ck, "gradflow_probe": t_gf, "reference": t_ref}}
    if not any(isinstance(m, Parallel) for m in net.modules()):
        out["diag_h_vs_diag_ggn_exact"] = diag_h_vs_ggn(make, x, y, layout)
    if case == "mlp" and exact_mlp_trace:
        out["gradflow"]["hess_trace_exact"] = exact_trace_gradflow(model, x, y)
    return out


def rel(a, b) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def print_agreement(r: dict) -> None:
    ck, g, ref = r["cockpit"], r["gradflow"], r["reference_f64"]
    print(f"\n{r['description']}, {r['params']:,} parameters (mirror's logits agree to "
          f"{r['mirror_rel_logit_diff']:.0e} relative)")
    print("| quantity | Cockpit | gradflow | float64 reference | gradflow vs Cockpit | "
          "Cockpit vs ref. | gradflow vs ref. |")
    print("|---|---|---|---|---|---|---|")
    for k in NOISE + ("hess_max_ev",):
        print(f"| {k} | {ck[k]:.6g} | {g[k]:.6g} | {ref[k]:.6g} | {rel(g[k], ck[k]):.1e} | "
              f"{rel(ck[k], ref[k]):.1e} | {rel(g[k], ref[k]):.1e} |")
    se = g["hess_trace_se"]
    print(f"| hess_trace | {ck['hess_trace']:.6g} ({ck['hess_trace_curvature']}) | "
          f"{g['hess_trace']:.6g} ± {se:.3g} | {ref['hess_trace']:.6g} | "
          f"{rel(g['hess_trace'], ck['hess_trace']):.1e} ({(g['hess_trace'] - ck['hess_trace']) / se:+.2f} SE) | "
          f"{rel(ck['hess_trace'], ref['hess_trace']):.1e} | "
          f"{rel(g['hess_trace'], ref['hess_trace']):.1e} |")
    if "hess_trace_exact" in g:
        print(f"| hess_trace, gradflow exact | | {g['hess_trace_exact']:.6g} | "
              f"{ref['hess_trace']:.6g} | {rel(g['hess_trace_exact'], ck['hess_trace']):.1e} | | "
              f"{rel(g['hess_trace_exact'], ref['hess_trace']):.1e} |")
    for name, a, b in zip(DECADES, ck["decades"], g["decades"]):
        print(f"| per-example \\|g\\| {name} | {a:,.0f} | {b:,.0f} | | "
              f"{rel(b, a) if a else float(b != a):.1e} | | |")
    print(f"| per-example \\|g\\| total | {sum(ck['decades']):,.0f} | {sum(g['decades']):,.0f} | "
          f"{32 * r['params']:,} | | | |")
    print(f"second eigenvalue (float64): {ref['hess_ev2']:.6g}, |λ2/λ1| = "
          f"{abs(ref['hess_ev2'] / ref['hess_max_ev']):.3f}; gradflow's eigenvalue iteration "
          f"converged: {bool(g['hess_max_ev_converged'])}"
          + (f"; tr(diag_h) vs tr(diag_ggn_exact): {r['diag_h_vs_diag_ggn_exact']:.1e}"
             if "diag_h_vs_diag_ggn_exact" in r else ""), flush=True)


# --- speed -----------------------------------------------------------------------------------

def speed_quantities(residual: bool) -> list:
    every = schedules.linear(1)
    return [cq.NormTest(every), cq.InnerTest(every), cq.OrthoTest(every), cq.MeanGSNR(every),
            cq.HessMaxEV(every),
            cq.HessTrace(every, curvature="diag_ggn_exact" if residual else "diag_h"),
            cq.GradHist1d(every)]


def gradflow_step(model, x, y, **quantities):
    """A user's nnx.jit train step; bare (nnx.value_and_grad) without `quantities`."""
    model = nnx.clone(model)
    opt = nnx.Optimizer(model, optax.sgd(LR, momentum=MOMENTUM), wrt=nnx.Param)
    grad_fn = (gf.value_and_grad(loss_fn, **quantities) if quantities
               else nnx.value_and_grad(loss_fn))

    @nnx.jit
    def step(model, opt, x, y):
        out = grad_fn(model, x, y)
        opt.update(model, out[1])
        return out[0], (out[2] if quantities else None)

    def run():
        loss, snap = jax.device_get(step(model, opt, x, y))  # the user sees the numbers
        return float(loss)
    return run


def speed(case: str, x, y, rounds: int, steps: int, configs_wanted) -> dict:
    model, make, layout, desc = build(case)
    xt, yt = torch_input(x, layout), torch.from_numpy(np.asarray(y)).long()
    residual = "residual" in case
    makers = {
        "torch bare": lambda: torch_step(make(), xt, yt, False),
        "cockpit": lambda: cockpit_step(make(), xt, yt, speed_quantities(residual)),
        "gradflow bare": lambda: gradflow_step(model, x, y),
        "gradflow noise": lambda: gradflow_step(model, x, y, noise=True, histograms=True),
        "gradflow curvature": lambda: gradflow_step(model, x, y, curvature=True),
        "gradflow all": lambda: gradflow_step(model, x, y, noise=True, curvature=True,
                                              histograms=True)}
    configs = {k: makers[k]() for k in makers if k in configs_wanted}
    first = {}
    for name, fn in configs.items():  # compile and first step, reported apart
        t = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Exceeded maximum number")
        times = time_interleaved(configs, rounds, steps, warmup=0)  # warmed up above
    rows = summarize(times, {k: BARE[k] for k in configs}, "torch bare")
    return {"case": case, "description": desc, "first_step_s": first, "rows": rows}


def print_speed(r: dict) -> None:
    rows = r["rows"]
    print(f"\n{r['description']}: ms per train step, median")
    print("| configuration | ms per step (p25-p75) | CPU ms per step | × own bare (wall / CPU) "
          "| first step, s |")
    print("|---|---|---|---|---|")
    for name, v in rows.items():
        own = "—" if BARE[name] == name else (
            f"{v['overhead'] + 1:.2f}× / {v['cpu_overhead'] + 1:.2f}×")
        print(f"| {name} | {v['ms']:.1f} ({v['p25_ms']:.1f}-{v['p75_ms']:.1f}) | "
              f"{v['cpu_ms']:.1f} | {own} | {r['first_step_s'][name]:.1f} |")
    if "cockpit" in rows and "gradflow all" in rows:
        print(f"gradflow all / cockpit: {rows['gradflow all']['ms'] / rows['cockpit']['ms']:.3f} "
              f"(wall), {rows['gradflow all']['cpu_ms'] / rows['cockpit']['cpu_ms']:.3f} (CPU)",
              flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="the MLP only (agreement and speed, 2 rounds): a smoke run")
    p.add_argument("--agree", default="mlp,plain_10,residual_10,plain_50,residual_50",
                   help="networks for agreement: mlp, <arch>_<depth> (arch plain or residual)")
    p.add_argument("--speed", default="plain_50,residual_50", help="networks for speed")
    p.add_argument("--rounds", type=int, default=1,
                   help="timed rounds after the first (compiling) step of every configuration")
    p.add_argument("--steps", type=int, default=1, help="timed steps per configuration per round")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (as peers.py)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.quick:
        agree, fast, rounds, steps = ["mlp"], ["mlp"], 2, 1
    else:
        agree, fast = ([c for c in v.split(",") if c] for v in (a.agree, a.speed))
        rounds, steps = a.rounds, a.steps
    out = a.out or (None if a.quick else os.path.join(os.path.dirname(__file__),
                                                     "cockpit_quantities.json"))
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ds = gf_data.synthetic(seed=0)
    x, y = ds.x_train[:BATCH], ds.y_train[:BATCH]
    info = machine()
    load = {"before": os.getloadavg()}
    print(f"{info['cpu']}, {info['cores']} cores; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), jax {jax.__version__}, cockpit "
          f"{info['versions']['cockpit']}, backpack {info['versions']['backpack']}; "
          f"load average {load['before'][0]:.2f}", flush=True)
    t0 = time.perf_counter()
    agreements, speeds = [], []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Extension saving to")
        for case in agree:
            agreements.append(agreement(case, x, y, exact_mlp_trace=not a.quick))
            print_agreement(agreements[-1])
    load["after_agreement"] = os.getloadavg()
    t_agree = time.perf_counter() - t0
    print(f"\nbatch {BATCH}, 16x16x3, SGD lr {LR} momentum {MOMENTUM}; {rounds} rounds x {steps} "
          "steps per configuration after each one's first (compiling) step; load average "
          f"{load['after_agreement'][0]:.2f}", flush=True)
    configs = list(BARE)
    for case in fast:
        speeds.append(speed(case, x, y, rounds, steps, configs))
        print_speed(speeds[-1])
    load["after"] = os.getloadavg()
    total = time.perf_counter() - t0
    print(f"\nload average {load['before'][0]:.2f} before, {load['after_agreement'][0]:.2f} after "
          f"the agreement part, {load['after'][0]:.2f} after; {total:.0f} s "
          f"(agreement {t_agree:.0f} s)")
    if out:
        record = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                  "command": "python benchmarks/cockpit_quantities.py " + " ".join(
                      sys.argv[1:] if argv is None else argv),
                  "machine": info, "torch_threads": torch.get_num_threads(), "loadavg": load,
                  "seconds": total, "batch": BATCH, "lr": LR, "momentum": MOMENTUM,
                  "rounds": rounds, "steps_per_round": steps,
                  "agreement": agreements, "speed": speeds}
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
