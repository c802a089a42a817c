"""Layers a user's model runs inside nnx.scan, jax.lax.scan, nnx.fori_loop and nnx.remat, with
nothing registered: one row per layer and iteration with every metric, each against a functional
re-implementation that unrolls the loop in Python, adds a zero perturbation to every layer's
output and differentiates with `jax.grad` (no gradflow code); gradients bit for bit those of
nnx.value_and_grad. A layer under an nnx.vmap call still cannot be probed: one warning."""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_layer_kinds import LABELS, TOKENS, act_stats, norm, value
from test_user_loop import _same

import gradflow as gf
from _backend import ON_CPU
from gradflow.losses import cross_entropy

D, L = 8, 3  # width, blocks
X = jax.random.normal(jax.random.key(1), (6, 4))
METRICS = ("grad_norm", "error_norm", "act_mean", "act_std", "dead_frac", "weight_norm")


def _stacked(make_block, n=L):
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return make_block(rngs)

    return make


class TBlock(nnx.Module):
    """Pre-LN block: self-attention, then a relu MLP, both residual."""

    def __init__(self, rngs):
        self.ln1, self.ln2 = nnx.LayerNorm(D, rngs=rngs), nnx.LayerNorm(D, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=D, qkv_features=D,
                                           decode=False, rngs=rngs)
        self.up, self.down = nnx.Linear(D, 16, rngs=rngs), nnx.Linear(16, D, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.down(nnx.relu(self.up(self.ln2(x))))


class ScannedTransformer(nnx.Module):
    """Embed -> L blocks made by nnx.vmap, run by nnx.scan (optionally under nnx.remat) -> mean
    over the sequence -> Linear head."""

    def __init__(self, rngs, remat=False):
        self.embed = nnx.Embed(11, D, rngs=rngs)
        self.blocks = _stacked(TBlock)(rngs)
        self.head = nnx.Linear(D, 3, rngs=rngs)
        self.remat = remat

    def __call__(self, tokens):
        def body(x, block):
            return block(x)

        run = nnx.scan(nnx.remat(body) if self.remat else body,
                       in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        return self.head(jnp.mean(run(self.embed(tokens), self.blocks), axis=1))


def _lm_loss(model, tokens, labels):
    return cross_entropy(model(tokens), labels)


def _layer_norm(h, scale, bias):
    mu = h.mean(-1, keepdims=True)
    return (h - mu) / jnp.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * scale + bias


@functools.cache  # the same weights (nnx.Rngs(0)) with and without remat: computed once
def _transformer_reference_once():
    return _transformer_reference(ScannedTransformer(nnx.Rngs(0)))


def _transformer_reference(model):
    """{row name: (‖∂L/∂W‖, ‖∂L/∂z‖, ‖W‖, [mean, std, dead] of what the row passes on)} of the
    blocks unrolled in a Python loop. Without activation modules, a row passes on the next row's
    input, or its own output where the next row reads the same input (query, key) and at the
    end (the convention of unrolled models, see gradflow/instrument/recorder.py)."""
    b = model.blocks
    projs = ("query", "key", "value", "out")
    w = {"embed": value(model.embed.embedding), "head": value(model.head.kernel),
         **{p: value(getattr(b.attn, p).kernel) for p in projs},
         "up": value(b.up.kernel), "down": value(b.down.kernel)}
    bias = {p: value(getattr(b.attn, p).bias) for p in projs} | {
        "up": value(b.up.bias), "down": value(b.down.bias), "head": value(model.head.bias)}
    ln = [(value(n.scale), value(n.bias)) for n in (b.ln1, b.ln2)]
    rows = ["embed"] + [f"blocks/{i}/{n}" for i in range(L)
                        for n in ("attn/query", "attn/key", "attn/value", "attn/out", "up",
                                  "down")] + ["head"]

    def forward(w, eps):
        passed = {}  # row -> what it passes on
        h = jnp.take(w["embed"], TOKENS, axis=0) + eps["embed"]
        last = "embed"
        for i in range(L):
            pre = f"blocks/{i}/"
            n1 = _layer_norm(h, ln[0][0][i], ln[0][1][i])
            passed[last] = n1
            q, k, v = (jnp.einsum("blf,fhd->blhd", n1, w[p][i]) + bias[p][i]
                       + eps[pre + "attn/" + p] for p in ("query", "key", "value"))
            att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q / 2.0, k), axis=-1)
            mixed = jnp.einsum("bhqk,bkhd->bqhd", att, v)
            o = jnp.einsum("blhd,hdf->blf", mixed, w["out"][i]) + bias["out"][i] + eps[
                pre + "attn/out"]
            h = h + o
            n2 = _layer_norm(h, ln[1][0][i], ln[1][1][i])
            u = n2 @ w["up"][i] + bias["up"][i] + eps[pre + "up"]
            r = nnx.relu(u)
            h = h + r @ w["down"][i] + bias["down"][i] + eps[pre + "down"]
            passed |= {pre + "attn/query": q, pre + "attn/key": k, pre + "attn/value": mixed,
                       pre + "attn/out": n2, pre + "up": r}
            last = pre + "down"
        pooled = jnp.mean(h, axis=1)
        logits = pooled @ w["head"] + bias["head"] + eps["head"]
        passed |= {last: pooled, "head": logits}
        return cross_entropy(logits, LABELS), passed

    shapes = {"embed": (4, 5, D), "head": (4, 3)} | {
        f"blocks/{i}/{n}": s for i in range(L) for n, s in (
            ("attn/query", (4, 5, 2, 4)), ("attn/key", (4, 5, 2, 4)),
            ("attn/value", (4, 5, 2, 4)), ("attn/out", (4, 5, D)), ("up", (4, 5, 16)),
            ("down", (4, 5, D)))}
    eps = {r: jnp.zeros(s) for r, s in shapes.items()}
    (g_w, g_eps), passed = jax.jit(jax.grad(forward, argnums=(0, 1), has_aux=True))(w, eps)
    ref = {}
    for r in rows:
        key, i = (r, None) if "/" not in r else (r.split("/", 2)[2].split("/")[-1], int(
            r.split("/")[1]))
        gw, ww = (g_w[key], w[key]) if i is None else (g_w[key][i], w[key][i])
        ref[r] = (norm(gw), norm(g_eps[r]), norm(ww), act_stats(passed[r]))
    return ref


def _check(snap, ref, rtol=2e-5):
    assert snap.layers == tuple(ref) and snap.meta["probed"]
    for m in METRICS:
        assert np.isfinite(snap[m]).all(), m
    got = np.stack([snap["grad_norm"], snap["error_norm"], snap["weight_norm"]], axis=1)
    want = np.array([r[:3] for r in ref.values()])
    np.testing.assert_allclose(got, want, rtol=rtol)
    acts = np.stack([snap["act_mean"], snap["act_std"], snap["dead_frac"]], axis=1)
    np.testing.assert_allclose(acts, np.array([r[3] for r in ref.values()]), rtol=1e-4,
                               atol=1e-6)


def _close(t1, t2) -> bool:
    """Equal to float32 rounding, entries near zero relative to the largest gradient entry."""
    a, b = jax.tree.leaves(t1), jax.tree.leaves(t2)
    scale = max(float(jnp.max(jnp.abs(v))) for v in b)
    return len(a) == len(b) and all(
        bool(np.allclose(u, v, rtol=1e-5, atol=1e-6 * scale)) for u, v in zip(a, b))


def _measured(model_fn, loss_fn, *args):
    """gf.value_and_grad's snapshot, after checking its loss and grads against
    nnx.value_and_grad's (bit for bit on CPU; off CPU the two programs may fuse and round
    differently: to float32 rounding) and that it does not warn."""
    l1, g1 = nnx.value_and_grad(loss_fn)(model_fn(), *args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l2, g2, snap = gf.value_and_grad(loss_fn)(model_fn(), *args)
    if ON_CPU:
        assert bool(l1 == l2) and _same(g1, g2)
    else:
        assert np.isclose(float(l1), float(l2), rtol=1e-6) and _close(g1, g2)
    return snap


@pytest.mark.parametrize("remat", [False, True])
def test_vmap_made_blocks_run_by_nnx_scan_get_a_row_per_layer_and_block(remat):
    make = lambda: ScannedTransformer(nnx.Rngs(0), remat=remat)
    snap = _measured(make, _lm_loss, TOKENS, LABELS)
    _check(snap, _transformer_reference_once())
    assert jax.lax.scan is gf.instrument.transforms._ORIGINAL["scan"]  # interception undone


class Blk(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.lin(x))


class LaxScanNet(nnx.Module):
    """Stacked blocks applied with a plain jax.lax.scan over their split state."""

    def __init__(self, rngs):
        self.blocks, self.head = _stacked(Blk)(rngs), nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        graphdef, state = nnx.split(self.blocks)

        def body(x, s):
            block = nnx.merge(graphdef, s)
            return block(x), nnx.state(block)

        x, state = jax.lax.scan(body, x, state)
        nnx.update(self.blocks, state)
        return self.head(x)


class ForiNet(nnx.Module):
    """One layer applied three times by nnx.fori_loop (weights shared by the iterations)."""

    def __init__(self, rngs):
        self.blk, self.head = Blk(rngs), nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        _, x = nnx.fori_loop(0, L, lambda i, c: (c[0], c[0](c[1])), (self.blk, x))
        return self.head(x)


@nnx.remat
def _run_block(block, x):  # checkpointed when defined, long before gradflow runs
    return block(x)


class RematNet(nnx.Module):
    def __init__(self, rngs):
        self.b1, self.b2, self.head = Blk(rngs), Blk(rngs), nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(_run_block(self.b2, _run_block(self.b1, x)))


def _mse(model, x):
    return jnp.mean(model(x) ** 2)


def _chain_reference(kernels, biases, head_k, head_b, names, grad_of):
    """Rows of tanh(x W_i + b_i) for i in order, then the head; grad_of maps a row to the
    kernel (index) its gradient and weight norms are taken of."""
    def forward(ks, hk, eps):
        h, passed = X, []
        for j, (k, bb) in enumerate(zip(ks, biases)):
            z = h @ k + bb + eps[j]
            h = jnp.tanh(z)
            passed.append(h)
        out = h @ hk + head_b + eps[-1]
        return jnp.mean(out ** 2), passed + [out]

    eps = [jnp.zeros((6, 4))] * len(kernels) + [jnp.zeros((6, 2))]
    (g_k, g_h, g_eps), passed = jax.jit(jax.grad(forward, argnums=(0, 1, 2), has_aux=True))(
        list(kernels), head_k, eps)
    g_all, w_all = [sum(g_k[j] for j in grad_of(r)) for r in range(len(kernels))] + [g_h], \
        list(kernels) + [head_k]
    return {n: (norm(g_all[j]), norm(g_eps[j]), norm(w_all[j]), act_stats(passed[j]))
            for j, n in enumerate(names)}


def test_a_plain_lax_scan_over_stacked_weights_gets_a_row_per_iteration():
    make = lambda: LaxScanNet(nnx.Rngs(0))
    snap = _measured(make, _mse, X)
    m = make()
    ks, bs = value(m.blocks.lin.kernel), value(m.blocks.lin.bias)
    ref = _chain_reference([ks[i] for i in range(L)], [bs[i] for i in range(L)],
                           value(m.head.kernel), value(m.head.bias),
                           [f"blocks/{i}/lin" for i in range(L)] + ["head"], lambda r: [r])
    _check(snap, ref)


def test_nnx_fori_loop_gives_one_row_per_call_of_the_shared_layer():
    make = lambda: ForiNet(nnx.Rngs(0))
    snap = _measured(make, _mse, X)
    m = make()
    k, b = value(m.blk.lin.kernel), value(m.blk.lin.bias)
    # every row of a layer called several times reports its whole kernel's gradient
    ref = _chain_reference([k] * L, [b] * L, value(m.head.kernel), value(m.head.bias),
                           ["blk/lin", "blk/lin#2", "blk/lin#3", "head"], lambda r: range(L))
    _check(snap, ref)


def test_nnx_remat_blocks_are_rows_as_without_remat():
    make = lambda: RematNet(nnx.Rngs(0))
    snap = _measured(make, _mse, X)
    m = make()
    ref = _chain_reference([value(m.b1.lin.kernel), value(m.b2.lin.kernel)],
                           [value(m.b1.lin.bias), value(m.b2.lin.bias)], value(m.head.kernel),
                           value(m.head.bias), ["b1/lin", "b2/lin", "head"], lambda r: [r])
    _check(snap, ref)


class Ensemble(nnx.Module):
    """Stacked layers applied side by side by an nnx.vmap call: still not probed."""

    def __init__(self, rngs):
        self.members = _stacked(lambda r: nnx.Linear(4, 4, rngs=r))(rngs)

    def __call__(self, x):
        return nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(self.members, x).mean(0)


def test_what_cannot_be_probed_is_said_once_and_keeps_parameter_metrics():
    model = Ensemble(nnx.Rngs(0))
    with pytest.warns(UserWarning, match="nnx.vmap") as caught:
        _, grads, snap = gf.value_and_grad(_mse)(model, X)
    assert len([w for w in caught if "gradflow" in str(w.message)]) == 1
    assert snap.layers == ("members/0", "members/1", "members/2") and not snap.meta["probed"]
    assert np.isnan(snap["error_norm"]).all() and np.isnan(snap["act_mean"]).all()
    kernels = np.asarray(value(grads["members"]["kernel"]), np.float64)
    np.testing.assert_allclose(snap["grad_norm"], np.linalg.norm(kernels, axis=(1, 2)),
                               rtol=1e-5)
    assert jax.vmap is gf.instrument.transforms._ORIGINAL["vmap"]
