"""One 3x3 conv layer of the peers' CNN, XLA against PyTorch, on one core: where the step goes.

    .venv-peers/bin/python benchmarks/conv_layer.py     # needs the `peers` extra (torch)

Batch 32 of 16x16, 16 channels in and out, 'same' padding: forward, input gradient and weight
gradient, each jitted alone in XLA (also under a few XLA:CPU compile options) and run eagerly in
PyTorch; medians of 50 calls after one warm-up. The process is pinned to one core and both
frameworks get one thread.
"""
from __future__ import annotations

import os
import time

os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

try:
    import torch  # noqa: E402
    import torch.nn.functional as F  # noqa: E402
except ImportError:
    raise SystemExit("conv_layer needs torch: pip install -e '.[peers]'")

B, H, C = 32, 16, 16
OPTIONS = {"default": {}, "xla_cpu_use_onednn": {"xla_cpu_use_onednn": True},
           "xla_cpu_use_xnnpack": {"xla_cpu_use_xnnpack": True},
           "xla_cpu_enable_fast_math": {"xla_cpu_enable_fast_math": True}}


def median_ms(fn, n=50) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def xla_times(x, w, g, options) -> tuple[float, float, float]:
    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    fns = [lambda x, w, g: conv(x, w),
           lambda x, w, g: jax.vjp(lambda v: conv(v, w), x)[1](g)[0],
           lambda x, w, g: jax.vjp(lambda k: conv(x, k), w)[1](g)[0]]
    out = []
    for f in fns:
        c = jax.jit(f).lower(x, w, g).compile(compiler_options=options)
        out.append(median_ms(lambda: jax.block_until_ready(c(x, w, g))))
    return tuple(out)


def torch_times(x, w, g) -> tuple[float, float, float]:
    torch.set_num_threads(1)
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    wt = torch.tensor(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    gt = torch.tensor(g).permute(0, 3, 1, 2).contiguous()

    def fwd():
        with torch.no_grad():
            return F.conv2d(xt, wt, padding=1)

    def grad(*wrt):
        return torch.autograd.grad(F.conv2d(xt, wt, padding=1), wrt, gt)

    f = median_ms(fwd)
    fx = median_ms(lambda: grad(xt))
    fxw = median_ms(lambda: grad(xt, wt))
    return f, fx - f, fxw - fx  # autograd runs the forward too: differences isolate each part


def main():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, H, H, C), np.float32)
    w = (0.1 * rng.standard_normal((3, 3, C, C))).astype(np.float32)
    g = rng.standard_normal((B, H, H, C), np.float32)
    print(f"one core; batch {B}, {H}x{H}, {C}->{C} channels, 3x3; torch {torch.__version__}, "
          f"jax {jax.__version__}")
    print("| framework | forward ms | input gradient ms | weight gradient ms | total ms |")
    print("|---|---|---|---|---|")
    rows = [("torch (oneDNN)", torch_times(x, w, g))]
    rows += [(f"XLA {name}", xla_times(x, w, g, opts)) for name, opts in OPTIONS.items()]
    for name, t in rows:
        print(f"| {name} | {t[0]:.2f} | {t[1]:.2f} | {t[2]:.2f} | {sum(t):.2f} |", flush=True)


if __name__ == "__main__":
    main()
