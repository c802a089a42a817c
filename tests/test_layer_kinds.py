"""Every weight-layer kind (nnx.Linear, LinearGeneral, Einsum, Conv, ConvTranspose, Embed) is a row
with every metric; attention is four rows. References are functional re-implementations of each
forward pass with a zero perturbation added to every call's output, differentiated with
`jax.grad` (no gradflow code), and norms taken with numpy in float64."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import gradflow as gf
from gradflow.instrument.measure import _parameter_rows
from gradflow.losses import cross_entropy

TOKENS = jax.random.randint(jax.random.PRNGKey(0), (4, 5), 0, 11)
LABELS = jnp.array([0, 1, 2, 0])
X_VEC = jax.random.normal(jax.random.PRNGKey(2), (6, 10))
Y = jnp.array([0, 1, 2, 3, 4, 0])


def norm(a):
    return np.linalg.norm(np.asarray(a, np.float64).ravel())


def value(v):
    return v.get_value()


def act_stats(a):
    """[mean, std, dead fraction] (a unit, the last axis, is dead when zero everywhere)."""
    a = np.asarray(a, np.float64)
    return [a.mean(), a.std(), np.mean(np.all(a.reshape(-1, a.shape[-1]) == 0, axis=0))]


def check_rows(snap, g_weights, weights, g_eps, rtol=1e-5):
    np.testing.assert_allclose(snap["grad_norm"], [norm(g) for g in g_weights], rtol=rtol)
    np.testing.assert_allclose(snap["error_norm"], [norm(g) for g in g_eps], rtol=rtol)
    np.testing.assert_allclose(snap["weight_norm"], [norm(w) for w in weights], rtol=rtol)


class Block(nnx.Module):
    def __init__(self, rngs):
        self.ln = nnx.LayerNorm(8, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8,
                                           decode=False, rngs=rngs)

    def __call__(self, x):
        return x + self.attn(self.ln(x))


class TinyTransformer(nnx.Module):
    """Embed -> pre-LN self-attention block -> mean over the sequence -> Linear head."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(11, 8, rngs=rngs)
        self.block = Block(rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, tokens):
        return self.head(jnp.mean(self.block(self.embed(tokens)), axis=1))


def transformer_reference(model, tokens):
    """(loss, [dL/dW], [dL/dz], forward tensors) in call order: embed, query, key, value, out,
    head."""
    attn, ln = model.block.attn, model.block.ln
    projs = [attn.query, attn.key, attn.value, attn.out]
    w = [value(model.embed.embedding)] + [value(p.kernel) for p in projs] + [
        value(model.head.kernel)]
    b = [value(p.bias) for p in projs] + [value(model.head.bias)]
    scale, shift = value(ln.scale), value(ln.bias)

    def forward(w, eps):
        h = jnp.take(w[0], tokens, axis=0) + eps[0]
        mu = h.mean(-1, keepdims=True)
        n = (h - mu) / jnp.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * scale + shift
        q, k, v = (jnp.einsum("blf,fhd->blhd", n, w[i]) + b[i - 1] + eps[i] for i in (1, 2, 3))
        att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q / 2.0, k), axis=-1)  # sqrt(4)
        mixed = jnp.einsum("bhqk,bkhd->bqhd", att, v)
        o = jnp.einsum("blhd,hdf->blf", mixed, w[4]) + b[3] + eps[4]
        pooled = jnp.mean(h + o, axis=1)
        logits = pooled @ w[5] + b[4] + eps[5]
        return cross_entropy(logits, LABELS), (n, q, k, mixed, pooled, logits)

    shapes = [(4, 5, 8)] + [(4, 5, 2, 4)] * 3 + [(4, 5, 8), (4, 3)]
    eps = [jnp.zeros(s) for s in shapes]
    (g_w, g_eps), tensors = jax.jit(jax.grad(forward, argnums=(0, 1), has_aux=True))(w, eps)
    return w, g_w, g_eps, tensors


def test_tiny_transformer_rows_match_reference():
    model = TinyTransformer(nnx.Rngs(0))
    snap = gf.probe(model, (TOKENS, LABELS))
    assert snap.layers == ("embed", "block/attn/query", "block/attn/key", "block/attn/value",
                           "block/attn/out", "head") and snap.meta["probed"]
    w, g_w, g_eps, tensors = transformer_reference(model, TOKENS)
    check_rows(snap, g_w, w, g_eps)
    # No activation modules: a row reports the next layer's input, or its own output where the
    # next layer reads the same input (query, key) and for the last row.
    n, q, k, mixed, pooled, logits = tensors
    ref = np.array([act_stats(t) for t in (n, q, k, mixed, pooled, logits)])
    got = np.stack([snap["act_mean"], snap["act_std"], snap["dead_frac"]], axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


class TiedLM(nnx.Module):
    """Embedding, a Linear mixer, and the embedding's `attend` as the output head."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(11, 8, rngs=rngs)
        self.mix = nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, tokens):
        return self.embed.attend(jnp.tanh(self.mix(jnp.mean(self.embed(tokens), axis=1))))


def test_weight_tied_head_is_a_row_of_the_embedding():
    model = TiedLM(nnx.Rngs(1))
    labels = jnp.array([3, 7, 10, 0])
    snap = gf.probe(model, (TOKENS, labels))
    assert snap.layers == ("embed", "mix", "embed/attend")
    emb, k, bias = value(model.embed.embedding), value(model.mix.kernel), value(model.mix.bias)

    def loss(emb, k, eps):
        h = jnp.mean(jnp.take(emb, TOKENS, axis=0) + eps[0], axis=1)
        z = h @ k + bias + eps[1]
        return cross_entropy(jnp.tanh(z) @ emb.T + eps[2], labels)

    eps = [jnp.zeros((4, 5, 8)), jnp.zeros((4, 8)), jnp.zeros((4, 11))]
    g_emb, g_k, g_eps = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(emb, k, eps)
    # both rows of the shared embedding report its whole gradient, as any layer called twice
    check_rows(snap, [g_emb, g_k, g_emb], [emb, k, emb], g_eps)


class EinsumNet(nnx.Module):
    """Einsum layers: one with its own equation, one given the equation at call time."""

    def __init__(self, rngs):
        self.heads = nnx.Einsum("nd,hdk->nhk", (2, 10, 4), (2, 4), rngs=rngs)
        self.merge = nnx.Einsum("ab,bc->ac", (8, 5), (5,), rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.heads(x)).reshape(x.shape[0], 8)
        return self.merge(h, einsum_str="nf,fc->nc")


def test_einsum_rows_match_reference():
    model = EinsumNet(nnx.Rngs(2))
    snap = gf.probe(model, (X_VEC, Y))
    assert snap.layers == ("heads", "merge") and snap.meta["probed"]
    w = [value(model.heads.kernel), value(model.merge.kernel)]
    b = [value(model.heads.bias), value(model.merge.bias)]

    def loss(w, eps):
        z = jnp.einsum("nd,hdk->nhk", X_VEC, w[0]) + b[0] + eps[0]
        h = jax.nn.relu(z).reshape(6, 8)
        return cross_entropy(h @ w[1] + b[1] + eps[1], Y)

    g_w, g_eps = jax.jit(jax.grad(loss, argnums=(0, 1)))(
        w, [jnp.zeros((6, 2, 4)), jnp.zeros((6, 5))])
    check_rows(snap, g_w, w, g_eps)


class ProjMix(nnx.Module):
    def __init__(self, rngs):
        self.proj = nnx.LinearGeneral(8, (2, 4), rngs=rngs)
        self.mix = nnx.Einsum("blhd,hdf->blf", (2, 4, 8), rngs=rngs)

    def __call__(self, x):
        return x + self.mix(jnp.tanh(self.proj(x)))


class StackedNet(nnx.Module):
    """Embeddings stacked with nnx.vmap (summed), LinearGeneral/Einsum blocks applied with
    nnx.scan: calls inside the transforms cannot be probed."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def embeds(rngs):
            return nnx.Embed(11, 8, rngs=rngs)

        @nnx.split_rngs(splits=2)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def blocks(rngs):
            return ProjMix(rngs)

        self.embeds, self.blocks = embeds(rngs), blocks(rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, tokens):
        h = nnx.vmap(lambda e, t: e(t), in_axes=(0, None))(self.embeds, tokens).sum(0)

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(h, block):
            return block(h)

        return self.head(jnp.mean(run(h, self.blocks), axis=1))


def test_stacked_new_kinds_get_one_row_per_slice():
    model = StackedNet(nnx.Rngs(3))
    rows = _parameter_rows(model)
    # (modules made by nnx.vmap list their attributes alphabetically: mix before proj)
    assert sorted((r.kernel_path, r.index or 0) for r in rows) == sorted(
        [(("embeds", "embedding"), i) for i in range(3)]
        + [(("blocks", "proj", "kernel"), i) for i in range(2)]
        + [(("blocks", "mix", "kernel"), i) for i in range(2)] + [(("head", "kernel"), 0)])
    snap = gf.probe(model, (TOKENS, LABELS))
    assert snap.layers == tuple(r.name for r in rows) and not snap.meta["probed"]
    emb, pk, mk, hk = (value(v) for v in (model.embeds.embedding, model.blocks.proj.kernel,
                                          model.blocks.mix.kernel, model.head.kernel))
    pb, hb = value(model.blocks.proj.bias), value(model.head.bias)

    def loss(emb, pk, mk, hk):
        h = sum(jnp.take(emb[i], TOKENS, axis=0) for i in range(3))
        for i in range(2):
            z = jnp.tanh(jnp.einsum("blf,fhd->blhd", h, pk[i]) + pb[i])
            h = h + jnp.einsum("blhd,hdf->blf", z, mk[i])
        return cross_entropy(jnp.mean(h, axis=1) @ hk + hb, LABELS)

    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(emb, pk, mk, hk)
    names = ["embeds/{}", "blocks/proj/{}", "blocks/mix/{}"]
    grads = {n.format(i): a[i] for n, a in zip(names, g) for i in range(a.shape[0])}
    weights = {n.format(i): a[i] for n, a in zip(names, (emb, pk, mk))
               for i in range(a.shape[0])}
    grads["head"], weights["head"] = g[3], hk
    assert sorted(snap.layers) == sorted(grads)
    np.testing.assert_allclose(snap["grad_norm"], [norm(grads[n]) for n in snap.layers],
                               rtol=1e-5)
    np.testing.assert_allclose(snap["weight_norm"], [norm(weights[n]) for n in snap.layers],
                               rtol=1e-5)
    assert np.all(np.isnan(snap["error_norm"]))


def test_every_kind_is_a_weight_layer_with_its_parameter():
    from gradflow.instrument.registry import kind_of, weight_kind
    # built abstractly (nnx.eval_shape: shapes only, no initializer runs)
    layers = {nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0))): ("kernel", 2),
              nnx.eval_shape(lambda: nnx.LinearGeneral(2, (3, 4), rngs=nnx.Rngs(0))): (
                  "kernel", 3),
              nnx.eval_shape(lambda: nnx.Einsum("ab,bcd->acd", (2, 3, 4), rngs=nnx.Rngs(0))): (
                  "kernel", 3),
              nnx.eval_shape(lambda: nnx.Conv(2, 3, (3, 3), rngs=nnx.Rngs(0))): ("kernel", 4),
              nnx.eval_shape(lambda: nnx.ConvTranspose(2, 3, (3,), rngs=nnx.Rngs(0))): (
                  "kernel", 3),
              nnx.eval_shape(lambda: nnx.Embed(5, 3, rngs=nnx.Rngs(0))): ("embedding", 2)}
    assert set(map(type, layers)) == set(gf.instrument.WEIGHT_LAYERS)
    for m, (param, ndim) in layers.items():
        kind = weight_kind(m)
        assert kind_of(m) == "weight" and (kind.param, kind.ndim(m)) == (param, ndim)
        assert getattr(m, param).get_value().ndim == ndim
