"""User loop: a train step through `gf.value_and_grad` against the same step through
`nnx.value_and_grad`.

    python benchmarks/user_loop.py                 # all five cases, a few minutes on 2 cores
    python benchmarks/user_loop.py --quick         # tiny models, checks that it runs (< 1 minute)
    python benchmarks/user_loop.py --breakdown --rounds 3 --steps 10     # where the time goes
    python benchmarks/user_loop.py --cases mlp,transformer                # some cases only

Each case builds two identical models, each with its own `nnx.Optimizer`, and two `nnx.jit`
steps, written as a user writes them:

    (A) bare:     loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
                  optimizer.update(model, grads); return loss
    (B) measured: loss, grads, snap = gf.value_and_grad(loss_fn)(model, x, y)
                  return gf.update_ratio(snap, optimizer.update(model, grads))
    (C) grads:    the same without `gf.update_ratio`: optimizer.update(model, grads);
                  return snap (what `gf.value_and_grad` alone costs)

Both are compiled first (the first call: trace + compile + one step) and warmed up, then timed
step by step (`jax.block_until_ready` on the step's outputs) interleaved: in each round every
variant takes one step in turn (A, B, A, B, ... for `--steps` steps; the order reverses every
round). Reported: the median ms per step over all rounds, the ratios B / A and C / A of the
medians, the lowest and highest per-round ratio B / A, and the median process CPU time per step (all threads; less
sensitive than wall time to other processes on the machine). The two models see the same
batches, so their weights should stay equal; the largest weight difference at the end is
reported as a check.

Cases: depth-50 CNNs `gf.models.cnn(arch, 50, width=16)` for arch plain and residual_bn on
batches of 32 built-in synthetic 16x16x3 images, SGD with momentum; the depth-50 width-256
residual_bn MLP of benchmarks/overhead.py (768 inputs: the same images, flattened), SGD with
momentum; a 4-block pre-LayerNorm transformer (token and position Embed, causal
nnx.MultiHeadAttention with 4 heads and 64 qkv features, a 64 -> 256 -> 64 GELU MLP, a final
LayerNorm and a Linear head; sequence 64, batch 16, vocabulary 64, next-token cross-entropy),
Adam; and the model of examples/char_transformer.py at its default size (4 blocks stacked with
nnx.vmap and run by nnx.scan, registered with gf.instrument.register_scanned_stack; d 64, 4
heads, context 64, batch 32 of its generated text, AdamW).

`--breakdown` adds local variants of the measured step, built in this script from gradflow's
internal pieces and timed interleaved with A and B (gradflow's files are not changed; one_sum
swaps `gradflow.instrument.tap.square_sums` in this process while its step is traced):

    split:   the model split and merged as gf.value_and_grad does it, nothing measured
    norms:   + grad_norm, weight_norm and update_ratio (no probes)
    taps:    + the error taps (error_norm), no activation statistics
    acts:    + activation statistics (act_mean, act_std, dead_frac), no error taps
    all:     taps and activation statistics: B's per-row metrics, without gf's wrapper and
             without its `grad_norm:<path>` scalars for normalization layers
    one_sum: B traced with one plain sum of squares per norm instead of gradflow's two (plain
             and rescaled by 2^80, exact below 1e-19): what the underflow-safe sum costs

Prints a markdown table and the load average before and after, and writes
benchmarks/user_loop.json (`--out`; with `--quick` or `--breakdown`, only where `--out` is
given).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradflow as gf

CASES = ("cnn_plain", "cnn_residual_bn", "mlp", "transformer", "char_transformer")
BREAKDOWN = ("split", "norms", "taps", "acts", "all", "one_sum")


# -- models and data --------------------------------------------------------------------------

class Block(nnx.Module):
    """Pre-LayerNorm transformer block: causal self-attention and a GELU MLP, both residual."""

    def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, qkv_features=d,
                                           decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.up = nnx.Linear(d, 4 * d, rngs=rngs)
        self.down = nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.down(nnx.gelu(self.up(self.ln2(x))))


class Transformer(nnx.Module):
    """Token + position Embed -> blocks (a plain Python loop) -> LayerNorm -> Linear head."""

    def __init__(self, vocab: int, d: int, blocks: int, heads: int, seq: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Embed(seq, d, rngs=rngs)
        self.blocks = nnx.List([Block(d, heads, rngs) for _ in range(blocks)])
        self.ln = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.pos(jnp.arange(tokens.shape[1]))
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


def cross_entropy(model, x, y):
    """Mean softmax cross-entropy: classes for images, the next token for sequences."""
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def image_batches(batch: int, n: int = 4):
    ds = gf.data.synthetic(seed=0, n_train=batch * n, n_test=8)
    return [(jnp.asarray(ds.x_train[i * batch:(i + 1) * batch]),
             jnp.asarray(ds.y_train[i * batch:(i + 1) * batch])) for i in range(n)]


def token_batches(batch: int, seq: int, vocab: int, n: int = 4):
    tokens = jax.random.randint(jax.random.PRNGKey(0), (n, batch, seq + 1), 0, vocab)
    return [(tokens[i, :, :-1], tokens[i, :, 1:]) for i in range(n)]


def case_spec(name: str, quick: bool):
    """(description, make_model(), make_tx(), loss_fn, batches)."""
    if name.startswith("cnn_"):
        arch, depth, width = name[4:], (6 if quick else 50), (8 if quick else 16)
        return (f"cnn {arch}, depth {depth}, width {width}, batch 32, SGD momentum",
                lambda: gf.models.cnn(arch, depth, width=width, rngs=nnx.Rngs(0)),
                lambda: optax.sgd(0.01, momentum=0.9), cross_entropy, image_batches(32))
    if name == "mlp":
        depth, width = (6, 32) if quick else (50, 256)
        return (f"mlp residual_bn, depth {depth}, width {width}, batch 32, SGD momentum",
                lambda: gf.models.mlp("residual_bn", depth, width=width, in_features=768,
                                      num_classes=10, rngs=nnx.Rngs(0)),
                lambda: optax.sgd(0.01, momentum=0.9), cross_entropy, image_batches(32))
    if name == "transformer":
        blocks, seq = (1, 16) if quick else (4, 64)
        return (f"transformer, {blocks} blocks, d 64, 4 heads, seq {seq}, batch 16, Adam",
                lambda: Transformer(64, 64, blocks, 4, seq, nnx.Rngs(0)),
                lambda: optax.adam(1e-3), cross_entropy, token_batches(16, seq, 64))
    if name == "char_transformer":
        ex = _char_transformer_example()
        ctx, d, heads, blocks, batch = (32, 32, 2, 2, 8) if quick else (64, 64, 4, 4, 32)
        text = ex.make_text(3000, seed=0)
        chars = sorted(set(text + ex.make_text(300, seed=1)))
        data = np.array([chars.index(c) for c in text], np.int32)
        rng = np.random.default_rng(0)
        batches = [tuple(map(jnp.asarray, ex.windows(data, ctx, batch, rng))) for _ in range(4)]
        desc = (f"examples/char_transformer.py, {blocks} scanned blocks, d {d}, {heads} heads, "
                f"context {ctx}, batch {batch}, AdamW")
        return (desc,
                lambda: ex.CharLM(len(chars), ctx, d, heads, blocks, rngs=nnx.Rngs(0)),
                lambda: optax.adamw(3e-3, weight_decay=0.01), ex.loss_fn, batches)
    raise ValueError(f"unknown case {name!r}; cases: {', '.join(CASES)}")


def _char_transformer_example():
    """examples/char_transformer.py as a module (importing it registers its scanned stack)."""
    examples = str(Path(__file__).resolve().parent.parent / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    import char_transformer
    return char_transformer


# -- the steps ----------------------------------------------------------------------------------

def bare_step(loss_fn):
    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss
    return step


def measured_step(loss_fn):
    grad_fn = gf.value_and_grad(loss_fn)

    @nnx.jit
    def step(model, optimizer, x, y):
        _, grads, snap = grad_fn(model, x, y)
        return gf.update_ratio(snap, optimizer.update(model, grads))
    return step


def grads_step(loss_fn):
    grad_fn = gf.value_and_grad(loss_fn)

    @nnx.jit
    def step(model, optimizer, x, y):
        _, grads, snap = grad_fn(model, x, y)
        optimizer.update(model, grads)
        return snap
    return step


def one_sum_step(loss_fn):
    """The measured step traced with one plain sum of squares where gradflow takes two (plain
    and rescaled by 2^80, `gradflow.instrument.tap.square_sums`): what the underflow-safe second
    sum costs. Its norms read 0 below ~1e-19; for timing only."""
    from gradflow.instrument import norms, tap

    def square_sum(a, axis=None):
        s = jnp.sum(jnp.square(a.astype(jnp.float32)), axis=axis)
        return jnp.stack([s, s], axis=-1)

    step = measured_step(loss_fn)

    def call(*args):  # the swap is in place while the step is traced (its first call)
        originals = tap.square_sums, norms.square_sums
        tap.square_sums = norms.square_sums = square_sum
        try:
            return step(*args)
        finally:
            tap.square_sums, norms.square_sums = originals
    return call


def local_step(loss_fn, variant: str):
    """A local copy of the measured step with pieces removed (see the module docstring)."""
    if variant == "one_sum":
        return one_sum_step(loss_fn)
    from gradflow.instrument.measure import apply_call, discover_call, row_norms
    from gradflow.instrument.steps import abstract
    from gradflow.instrument.tap import error_norm_from

    probes = variant in ("taps", "acts", "all")
    taps, acts = variant in ("taps", "all"), variant in ("acts", "all")
    norms = variant != "split"

    @nnx.jit
    def step(model, optimizer, x, y):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        layout = discover_call(graphdef, abstract(params), abstract(rest),
                               lambda m, x, y: loss_fn(m, x, y), model, abstract(x), abstract(y))
        n = len(layout)

        def differentiated(params, dummies, rest):
            loss, rec, new_rest = apply_call(graphdef, params, rest, lambda m: loss_fn(m, x, y),
                                             dummies if taps else None, probes=probes)
            a = rec.act_stats() if acts else jnp.zeros((n, 3), jnp.float32)
            return loss, (new_rest, a)

        (loss, (new_rest, a)), (grads, sums) = jax.value_and_grad(
            differentiated, argnums=(0, 1), has_aux=True)(
                params, jnp.zeros((n, 2), jnp.float32), rest)
        nnx.update(model, new_rest)
        updates = optimizer.update(model, grads)
        out = {"loss": loss}
        if norms:
            w = row_norms(params, layout)
            out |= {"grad_norm": row_norms(grads, layout), "weight_norm": w,
                    "update_ratio": row_norms(updates, layout) / w}
        if taps:
            out["error_norm"] = error_norm_from(sums)
        if acts:
            out["acts"] = a
        return out
    return step


# -- timing -------------------------------------------------------------------------------------

def run_case(name: str, quick: bool, rounds: int, steps: int, warmup: int, breakdown: bool):
    desc, make_model, make_tx, loss_fn, batches = case_spec(name, quick)
    variants = {"bare": bare_step(loss_fn), "measured": measured_step(loss_fn),
                "grads": grads_step(loss_fn)}
    if breakdown:
        variants |= {v: local_step(loss_fn, v) for v in BREAKDOWN}
    state = {}
    for v in variants:
        model = make_model()
        state[v] = (model, nnx.Optimizer(model, make_tx(), wrt=nnx.Param))
    n_params = sum(a.size for a in jax.tree.leaves(nnx.state(state["bare"][0], nnx.Param)))

    def one(v, i):
        x, y = batches[i % len(batches)]
        t, c = time.perf_counter(), time.process_time()
        out = variants[v](*state[v], x, y)
        jax.block_until_ready(out)
        return time.perf_counter() - t, time.process_time() - c

    compile_s = {v: one(v, 0)[0] for v in variants}  # first call: trace + compile + one step
    for i in range(warmup):
        for v in variants:
            one(v, i + 1)
    times = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    per_round = {v: [] for v in variants}
    order = list(variants)
    k = warmup + 1
    for r in range(rounds):
        now = {v: [] for v in variants}
        for _ in range(steps):
            for v in (order if r % 2 == 0 else order[::-1]):
                wall, c = one(v, k)
                now[v].append(wall)
                cpu[v].append(c)
            k += 1
        for v in variants:
            times[v] += now[v]
            per_round[v].append(float(np.median(now[v])))
    diff = max(float(jnp.max(jnp.abs(a - b))) for v in ("measured", "grads") for a, b in zip(
        jax.tree.leaves(nnx.state(state["bare"][0], nnx.Param)),
        jax.tree.leaves(nnx.state(state[v][0], nnx.Param))))
    med = {v: float(np.median(times[v])) for v in variants}
    round_ratio = [m / b for m, b in zip(per_round["measured"], per_round["bare"])]
    return {"case": name, "description": desc, "parameters": int(n_params),
            "ms_per_step": {v: 1e3 * med[v] for v in variants},
            "cpu_ms_per_step": {v: 1e3 * float(np.median(cpu[v])) for v in variants},
            "ratio": med["measured"] / med["bare"],
            "ratio_grads": med["grads"] / med["bare"],
            "ratio_by_round": round_ratio,
            "ms_by_round": {v: [1e3 * t for t in per_round[v]] for v in variants},
            "first_call_s": compile_s, "timed_steps_each": rounds * steps,
            "max_weight_difference": diff}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models and few steps")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first call")
    p.add_argument("--breakdown", action="store_true",
                   help="also time local variants of the measured step with pieces removed")
    p.add_argument("--out", default=None,
                   help="JSON file (default: benchmarks/user_loop.json; none with --quick or "
                        "--breakdown)")
    a = p.parse_args(argv)
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            p.error(f"unknown case {c!r}; cases: {', '.join(CASES)}")
    rounds, steps = (2, 3) if a.quick else (a.rounds, a.steps)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} cores, jax {jax.__version__}; load average before "
          f"{' '.join(f'{x:.2f}' for x in load_before)}", flush=True)
    print(f"{rounds} rounds x {steps} steps per variant, interleaved, after {a.warmup} warm-up")
    results = []
    for c in cases:
        res = run_case(c, a.quick, rounds, steps, a.warmup, a.breakdown)
        results.append(res)
        print(f"  {c}: {res['description']}, {res['parameters']:,} parameters; max weight "
              f"difference bare vs measured / grads {res['max_weight_difference']:.1e}", flush=True)
    load_after = os.getloadavg()
    print()
    print("| case | bare ms/step | grads ms/step (ratio) | measured ms/step | ratio | "
          "ratio by round | CPU ms/step bare / grads / measured (ratios) | "
          "first call s (bare / measured) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ms, cm, fc = r["ms_per_step"], r["cpu_ms_per_step"], r["first_call_s"]
        rr = r["ratio_by_round"]
        print(f"| {r['case']} | {ms['bare']:.1f} | {ms['grads']:.1f} ({r['ratio_grads']:.3f}) | "
              f"{ms['measured']:.1f} | {r['ratio']:.3f} | {min(rr):.2f}–{max(rr):.2f} | "
              f"{cm['bare']:.1f} / {cm['grads']:.1f} / {cm['measured']:.1f} "
              f"({cm['grads'] / cm['bare']:.3f} / {cm['measured'] / cm['bare']:.3f}) | "
              f"{fc['bare']:.1f} / {fc['measured']:.1f} |")
    if a.breakdown:
        names = ["bare", *BREAKDOWN, "grads", "measured"]
        print()
        print("Breakdown, ms/step (ratio to bare); second line CPU ms/step (ratio to bare)")
        print()
        print("| case | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for r in results:
            for key in ("ms_per_step", "cpu_ms_per_step"):
                ms = r[key]
                label = r["case"] if key == "ms_per_step" else "(CPU)"
                print(f"| {label} | " + " | ".join(
                    f"{ms[v]:.1f} ({ms[v] / ms['bare']:.2f})" for v in names) + " |")
    print()
    print(f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{' '.join(f'{x:.2f}' for x in load_after)}; {time.perf_counter() - t0:.0f} s")
    args = sys.argv[1:] if argv is None else list(argv)
    out = {"command": " ".join(["python benchmarks/user_loop.py", *args]),
           "machine": {"cpu": _cpu_name(),
                       "cores": os.cpu_count(), "backend": jax.default_backend(),
                       "jax": jax.__version__},
           "rounds": rounds, "steps": steps, "warmup": a.warmup,
           "load_average_before": load_before, "load_average_after": load_after,
           "results": results}
    default = None if a.quick or a.breakdown else Path(__file__).with_name("user_loop.json")
    path = a.out or default
    if path is not None:
        Path(path).write_text(json.dumps(out, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
