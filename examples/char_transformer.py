"""A character-level transformer language model, blocks under `nnx.scan`, measured by gradflow
in your own `nnx.jit` training loop.

What it shows: a decoder-only transformer (token and position `nnx.Embed`, L pre-norm blocks of
causal `nnx.MultiHeadAttention` and an MLP, a `nnx.Linear` head) whose blocks are created with
`nnx.vmap` under `nnx.split_rngs` and applied with `nnx.scan` -- Flax's scan-over-layers
pattern. Layers inside `nnx.scan` are out of reach of per-call probes, so the `Blocks` module
is registered with `gf.instrument.register_scanned_stack`: every layer of every block is then a
row with every metric (`blocks/3/attn/query`, ..., `blocks/3/mlp_out`). The loop is yours:
`nnx.Optimizer` with `optax.adamw`, a measured step (`gf.value_and_grad` + `gf.update_ratio`)
every k steps and a plain `nnx.value_and_grad` step otherwise, `gf.History().append`. The text
is generated here from a small random grammar; no downloads.

Run (from the repository root):

    python examples/char_transformer.py                # under a minute on 2 CPU cores
    python examples/char_transformer.py --quick --out /tmp/lm   # a few steps, tiny model

It writes history.npz, figures, summary.json and report.html into --out (default runs/...).
"""
from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradflow as gf
from _report import parse_args, train_loop, write_report  # examples/_report.py

WORDS = {  # a tiny grammar: "<subject> <verb> <object><ending>"
    "subject": ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher",
                "her brother", "the farmer"],
    "verb": ["sees", "likes", "follows", "finds", "draws", "calls", "watches", "helps"],
    "object": ["the red ball", "a green tree", "the river", "a quiet house", "the moon",
               "his sister", "the garden", "a yellow boat"],
    "ending": [".", " today.", " again.", " at night.", " in the rain."],
}


def make_text(n_sentences: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    pick = lambda k: WORDS[k][rng.integers(len(WORDS[k]))]
    return " ".join(f"{pick('subject')} {pick('verb')} {pick('object')}{pick('ending')}"
                    for _ in range(n_sentences))


class Block(nnx.Module):
    """x + attn(LN(x)) with a causal mask, then x + MLP(LN(x))."""

    def __init__(self, d: int, heads: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.mlp_in = nnx.Linear(d, 4 * d, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x), mask=nnx.make_causal_mask(x[..., 0]))
        return x + self.mlp_out(nnx.gelu(self.mlp_in(self.ln2(x))))


# Registered: measured steps run the scan themselves, with probes in every block. `names`
# makes the rows `blocks/<i>/...` (the default would be `blocks/layers/<i>/...`).
@gf.instrument.register_scanned_stack(block=lambda m: m.layers, length=lambda m: m.n,
                                      names=lambda i: (i,))
class Blocks(nnx.Module):
    """`n` Blocks with their parameters stacked on a leading axis, applied with nnx.scan."""

    def __init__(self, n: int, d: int, heads: int, *, rngs: nnx.Rngs):
        self.n = n

        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs):
            return Block(d, heads, rngs=rngs)

        self.layers = create(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def forward(x, block):
            return block(x)

        return forward(x, self.layers)


class CharLM(nnx.Module):
    def __init__(self, vocab: int, context: int, d: int, heads: int, n_blocks: int, *,
                 rngs: nnx.Rngs):
        self.tok = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Embed(context, d, rngs=rngs)
        self.blocks = Blocks(n_blocks, d, heads, rngs=rngs)
        self.ln = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, ids):  # (batch, T) int -> (batch, T, vocab) logits
        x = self.tok(ids) + self.pos(jnp.arange(ids.shape[-1]))
        return self.head(self.ln(self.blocks(x)))


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


grad_fn = gf.value_and_grad(loss_fn)  # a drop-in for nnx.value_and_grad, plus a Snapshot


@nnx.jit
def measured_step(model, optimizer, x, y):
    _, grads, snap = grad_fn(model, x, y)  # loss, grads, Snapshot (it holds the loss)
    return gf.update_ratio(snap, optimizer.update(model, grads))


@nnx.jit
def step(model, optimizer, x, y):  # the usual step
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_loss(model, x, y):
    return loss_fn(model, x, y)


def windows(data: np.ndarray, context: int, batch: int, rng):
    starts = rng.integers(0, len(data) - context - 1, batch)
    idx = starts[:, None] + np.arange(context)
    return data[idx], data[idx + 1]


def sample(model, stoi, itos, prompt: str, n: int, context: int) -> str:
    """Greedy continuation of `prompt`, one character per call on a fixed-size window."""
    forward = nnx.jit(lambda m, ids: m(ids))
    ids = [stoi[c] for c in prompt]
    for _ in range(n):
        window = ids[-context:]
        logits = forward(model, jnp.asarray([window + [0] * (context - len(window))]))
        ids.append(int(jnp.argmax(logits[0, len(window) - 1])))
    return "".join(itos[i] for i in ids)


def main():
    args = parse_args(__doc__, "char_transformer")
    cfg = (dict(context=32, d=32, heads=2, n_blocks=2, batch=8, steps=6, every=2) if args.quick
           else dict(context=64, d=64, heads=4, n_blocks=4, batch=32, steps=200, every=20))
    cfg["steps"] = args.steps or cfg["steps"]
    text, held_text = make_text(3000, seed=0), make_text(300, seed=1)
    chars = sorted(set(text + held_text))
    stoi, itos = {c: i for i, c in enumerate(chars)}, dict(enumerate(chars))
    data, held = (np.array([stoi[c] for c in t], np.int32) for t in (text, held_text))

    model = CharLM(len(chars), cfg["context"], cfg["d"], cfg["heads"], cfg["n_blocks"],
                   rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=0.01), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    batches = iter(lambda: windows(data, cfg["context"], cfg["batch"], rng), None)
    history, losses = train_loop(model, optimizer, batches, cfg["steps"], cfg["every"],
                                 measured_step, step,
                                 {"arch": f"char transformer, {cfg['n_blocks']} scanned blocks"})
    xh, yh = windows(held, cfg["context"], 64, np.random.default_rng(1))
    held_loss = float(eval_loss(model, xh, yh))
    seconds = time.perf_counter() - t0
    continuation = sample(model, stoi, itos, "the cat ", 24 if args.quick else 60, cfg["context"])

    if not np.isfinite(history["error_norm"]).all():  # NaN: a layer the probes did not reach
        raise SystemExit("error_norm is not finite everywhere: Blocks not registered, or diverged")
    write_report(
        args.out, "Character-level transformer, blocks under nnx.scan",
        f"{cfg['n_blocks']} pre-norm blocks (causal MultiHeadAttention + MLP, width {cfg['d']}) "
        f"applied with nnx.scan, registered with gf.instrument.register_scanned_stack; vocab "
        f"{len(chars)} characters of generated sentences; adamw, measured every "
        f"{cfg['every']} steps in the user's own nnx.jit loop.",
        history, losses,
        {"example": "char_transformer", "quick": args.quick, **cfg, "vocab": len(chars),
         "held_out_loss": held_loss, "seconds": seconds, "sample": continuation},
        f"held-out loss {held_loss:.3f}", held_out_loss=held_loss,
        text_block=f"greedy sample: {continuation}")


if __name__ == "__main__":
    main()
