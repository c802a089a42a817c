"""Per-layer measurements against independent references (tests/reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf
from gradflow import models as M
from gradflow.losses import cross_entropy
from reference import (TINY_X_IMG, TINY_X_VEC, TINY_Y, reference_probe, tiny_zoo_model)

X_IMG, X_VEC, Y = TINY_X_IMG, TINY_X_VEC, TINY_Y
make = tiny_zoo_model


def test_activation_stats_match_manual_forward():
    model = M.mlp("plain", 4, width=7, in_features=10, num_classes=5, stack="unrolled",
                  rngs=nnx.Rngs(0))
    snap = gf.probe(model, (X_VEC, Y))
    layers = [model.stem.layer] + [b.layer for b in model.stages[0].rest.blocks] + [model.head]
    h, acts = X_VEC, []
    for i, layer in enumerate(layers):
        z = h @ layer.kernel.get_value() + layer.bias.get_value()
        h = jax.nn.relu(z) if i < len(layers) - 1 else z
        acts.append(h)
    np.testing.assert_allclose(snap["act_mean"], [a.mean() for a in acts], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(snap["act_std"], [a.std() for a in acts], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(snap["dead_frac"],
                               [np.mean(np.all(np.asarray(a) == 0, axis=0)) for a in acts])


class UserNet(nnx.Module):
    """A user's model: plain nnx layers and nnx.relu, no gradflow code."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc1 = nnx.Linear(4, 8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn(self.conv(x)))
        h = jnp.mean(h, axis=(1, 2))
        return self.fc2(nnx.relu(self.fc1(h)))


def test_user_model_without_edits():
    model = UserNet(nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model))
    snap = gf.probe(model, (X_IMG, Y))
    # Nothing about the model changed: parameters and BN running statistics.
    jax.tree.map(np.testing.assert_array_equal, before,
                 jax.tree.map(np.asarray, nnx.state(model)))
    assert snap.layers == ("conv", "fc1", "fc2")
    ref_grad, ref_err = reference_probe(model, X_IMG, Y, cross_entropy)
    np.testing.assert_allclose(snap["grad_norm"], ref_grad, rtol=2e-4)
    np.testing.assert_allclose(snap["error_norm"], ref_err, rtol=2e-4)
    # Without Activation modules, a layer's activation statistics are its successor's input.
    h = jnp.mean(nnx.relu(model.bn(model.conv(X_IMG), use_running_average=False)), axis=(1, 2))
    np.testing.assert_allclose(snap["act_mean"][1], nnx.relu(model.fc1(h)).mean(), rtol=1e-5)


class Opaque(nnx.Module):
    """No Linear/Conv: its own parameters, used directly."""

    def __init__(self):
        self.w1 = nnx.Param(jnp.eye(10, 6))
        self.w2 = nnx.Param(jnp.ones((6, 5)) * 0.1)

    def __call__(self, x):
        return jnp.tanh(x @ self.w1) @ self.w2


def test_any_module_gets_weight_gradient_norms():
    model = Opaque()
    snap = gf.probe(model, (X_VEC, Y))
    assert snap.layers == ("w1", "w2") and not snap.meta["probed"]
    g = jax.grad(lambda w1, w2: cross_entropy(jnp.tanh(X_VEC @ w1) @ w2, Y), argnums=(0, 1))(
        model.w1.get_value(), model.w2.get_value())
    np.testing.assert_allclose(snap["grad_norm"], [jnp.linalg.norm(a) for a in g], rtol=1e-5)
    assert np.all(np.isnan(snap["error_norm"]))


def test_probe_leaves_bn_running_stats_and_params_unchanged():
    model = make("cnn", "residual_bn", "scan")
    before = jax.tree.map(np.asarray, nnx.state(model))
    gf.probe(model, (X_IMG, Y))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(model)))


def test_probe_uses_batch_statistics_even_in_eval_mode():
    model = make("mlp", "bn", "unrolled")
    train_mode = gf.probe(model, (X_VEC, Y))["grad_norm"]
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.BatchNorm):
            m.use_running_average = True
    np.testing.assert_array_equal(gf.probe(model, (X_VEC, Y))["grad_norm"], train_mode)


@pytest.mark.parametrize("stack", ["unrolled", "scan"])
def test_instrumented_training_is_bit_identical_to_bare_training(stack):
    from gradflow.instrument.steps import layout_for, train_steps
    batches = [(X_IMG * (i + 1), (Y + i) % 5) for i in range(4)]
    tx = optax.adam(1e-2)
    a, b = make("cnn", "residual_bn", stack), make("cnn", "residual_bn", stack)
    gf.train(a, batches, steps=4, optimizer=tx, log_every=1)  # every step instrumented
    g, params, rest = nnx.split(b, nnx.Param, ...)
    _, bare = train_steps(g, layout_for(g, params, rest, X_IMG), cross_entropy, None, tx)
    opt = tx.init(params)
    for x, y in batches:
        params, rest, opt, _ = bare(params, rest, opt, x, y)
    nnx.update(b, params, rest)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, nnx.state(a)),
                 jax.tree.map(np.asarray, nnx.state(b)))


def test_update_ratio_is_step_over_weight():
    model = make("mlp", "plain", "unrolled")
    w0 = np.asarray(model.stem.layer.kernel.get_value())
    h = gf.train(model, [(X_VEC, Y)], steps=1, optimizer=optax.sgd(0.5))
    w1 = np.asarray(model.stem.layer.kernel.get_value())
    np.testing.assert_allclose(h["update_ratio"][0, 0],
                               np.linalg.norm(w1 - w0) / np.linalg.norm(w0), rtol=1e-5)
    np.testing.assert_allclose(h["weight_norm"][0, 0], np.linalg.norm(w0), rtol=1e-6)


@pytest.mark.parametrize("init,factor", [("lecun", 0.5), ("he", 1.0), ("glorot", 0.5)])
def test_mean_field_error_signal_ratio_per_layer(init, factor):
    """Bias-free ReLU MLP at init: E||dL/dz_l||^2 changes by sigma_w^2/2 per layer toward the
    input (square hidden layers: sigma_w^2 = 1 for lecun and glorot, 2 for he)."""
    width, depth, seeds = 256, 24, 3
    x = jax.random.normal(jax.random.PRNGKey(7), (128, width))
    y = jnp.arange(128) % 10
    slopes = []
    for seed in range(seeds):
        model = M.mlp("plain", depth, width=width, in_features=width, num_classes=10, init=init,
                      use_bias=False, rngs=nnx.Rngs(seed))
        e2 = np.log(gf.probe(model, (x, y))["error_norm"][1:-1] ** 2)  # hidden layers
        slopes.append(np.polyfit(np.arange(e2.size), e2, 1)[0])  # per layer toward the output
    measured = -np.mean(slopes)  # toward the input
    # Each layer's log-ratio fluctuates by ~sqrt(2/width) (finite width); a 20-layer fit over 3
    # seeds has standard error well below 0.03.
    assert abs(measured - np.log(factor)) < 0.05, (measured, np.log(factor))


class UserScanNet(nnx.Module):
    """A user's stack of layers made with nnx.vmap and applied with nnx.scan."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=4)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs):
            return nnx.Linear(10, 10, rngs=rngs)

        self.layers = create(rngs)
        self.head = nnx.Linear(10, 5, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(x, layer):
            return nnx.relu(layer(x))

        return self.head(run(x, self.layers))


def test_user_scanned_stack_reports_each_layer_gradient():
    model = UserScanNet(nnx.Rngs(0))
    snap = gf.probe(model, (X_VEC, Y))
    assert snap.layers == ("layers/0", "layers/1", "layers/2", "layers/3", "head")
    kernels = model.layers.kernel.get_value()
    biases = model.layers.bias.get_value()

    def loss(ks, head_k):
        h = X_VEC
        for k, b in zip(ks, biases):
            h = jax.nn.relu(h @ k + b)
        return cross_entropy(h @ head_k + model.head.bias.get_value(), Y)

    g_stack, g_head = jax.grad(loss, argnums=(0, 1))(kernels, model.head.kernel.get_value())
    ref = [jnp.linalg.norm(g) for g in g_stack] + [jnp.linalg.norm(g_head)]
    np.testing.assert_allclose(snap["grad_norm"], ref, rtol=1e-5)

    def perturbed(eps):  # eps[l] added to layer l's output z_l: dL/deps_l = dL/dz_l
        h = X_VEC
        for k, b, e in zip(kernels, biases, eps[:-1]):
            h = jax.nn.relu(h @ k + b + e)
        out = h @ model.head.kernel.get_value() + model.head.bias.get_value() + eps[-1]
        return cross_entropy(out, Y)

    zeros = [jnp.zeros((X_VEC.shape[0], k.shape[1])) for k in kernels] + [jnp.zeros((6, 5))]
    errors = [jnp.linalg.norm(g) for g in jax.grad(perturbed)(zeros)]
    np.testing.assert_allclose(snap["error_norm"], errors, rtol=1e-5)  # probed inside nnx.scan


def test_tiny_gradients_do_not_underflow():
    """A deep vanishing net's error signal and weight gradients fall below 1e-19, where float32
    squares vanish; both norms must still be right."""
    model = make("mlp", "plain", "unrolled")
    base = gf.probe(model, (X_VEC, Y))
    tiny = gf.probe(model, (X_VEC, Y), loss=lambda out, y: 1e-25 * cross_entropy(out, y))
    assert np.all(1e-25 * base["error_norm"] < 1e-19)  # a plain sum of squares reads 0 here
    np.testing.assert_allclose(tiny["error_norm"], 1e-25 * base["error_norm"], rtol=1e-5)
    assert np.all(1e-25 * base["grad_norm"] < 1e-19)
    np.testing.assert_allclose(tiny["grad_norm"], 1e-25 * base["grad_norm"], rtol=1e-5)


def test_safe_norm_matches_float64_from_1e_36_to_1e_18():
    from gradflow.instrument.tap import safe_norm
    base = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (3, 7, 5)), np.float64)
    for scale in (1e-33, 1e-30, 1e-20, 1.0, 1e18):  # XLA:CPU flushes subnormals (< 1.2e-38)
        a = base * scale * np.array([1.0, 1e-3, 1.0])[:, None, None]  # rows on either side of 1e-19
        want = np.sqrt(np.sum(np.square(a), axis=(1, 2)))
        got = jax.jit(lambda v: safe_norm(v, (1, 2)))(jnp.asarray(a, jnp.float32))
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(safe_norm(jnp.zeros((4,)))) == 0.0
    assert np.isnan(float(safe_norm(jnp.array([1.0, jnp.nan]))))


def test_underflow_safe_norms_exact_on_both_branches():
    """One plain pass when every norm is healthy; the rescaled pass for all when one is tiny."""
    from gradflow.instrument.norms import underflow_safe_norms
    base = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (4, 6, 3)), np.float64)
    fn = jax.jit(lambda a, b: underflow_safe_norms([(a, (1, 2)), (b, None)]))
    for scale_a, scale_b in ((1.0, 1e3), (1.0, 1e-25), (1e-30, 1e10), (0.0, 1.0)):
        a, b = base * scale_a, base[0] * scale_b
        got_a, got_b = fn(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
        np.testing.assert_allclose(got_a, np.sqrt(np.sum(a ** 2, axis=(1, 2))), rtol=1e-5)
        np.testing.assert_allclose(got_b, [np.sqrt(np.sum(b ** 2))], rtol=1e-5)


@gf.instrument.register_activation
class ShiftedReLU(nnx.Module):
    """A user's activation module, registered: relu(x - shift), so some units die."""

    def __init__(self, shift):
        self.shift = shift

    def __call__(self, x):
        return jax.nn.relu(x - self.shift)


class UnregisteredShiftedReLU(nnx.Module):
    """The same activation, not registered."""

    def __init__(self, shift):
        self.shift = shift

    def __call__(self, x):
        return jax.nn.relu(x - self.shift)


class UserActNet(nnx.Module):
    """conv -> act -> pool -> fc1 -> act -> x2 -> fc2: the activations' outputs are not the next
    layer's inputs, so registered and unregistered activations give different statistics."""

    def __init__(self, act_cls, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.act1 = act_cls(0.3)
        self.fc1 = nnx.Linear(4, 8, rngs=rngs)
        self.act2 = act_cls(0.2)
        self.fc2 = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        h = jnp.mean(self.act1(self.conv(x)), axis=(1, 2))
        return self.fc2(2.0 * self.act2(self.fc1(h)))


def _numpy_act_stats(a):
    """[mean, std, dead fraction] over all entries; a unit (last axis) is dead when it is zero
    for every example and position."""
    a = np.asarray(a, np.float64)
    return [a.mean(), a.std(), np.mean(np.all(a.reshape(-1, a.shape[-1]) == 0, axis=0))]


def _user_act_net_tensors(model, shifts=(0.3, 0.2)):
    """Independent numpy forward pass: conv, act1, pooled, fc1, act2, fc2 input, fc2 outputs."""
    x = np.asarray(X_IMG, np.float64)
    k, b = (np.asarray(v.get_value(), np.float64) for v in (model.conv.kernel, model.conv.bias))
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # 3x3, stride 1, SAME
    z0 = sum(np.einsum("nhwc,cf->nhwf", pad[:, i:i + 8, j:j + 8], k[i, j])
             for i in range(3) for j in range(3)) + b
    a1 = np.maximum(z0 - shifts[0], 0.0)
    h = a1.mean(axis=(1, 2))
    z1 = h @ np.asarray(model.fc1.kernel.get_value()) + np.asarray(model.fc1.bias.get_value())
    a2 = np.maximum(z1 - shifts[1], 0.0)
    z2 = 2.0 * a2 @ np.asarray(model.fc2.kernel.get_value()) + np.asarray(
        model.fc2.bias.get_value())
    return z0, a1, h, z1, a2, 2.0 * a2, z2


def test_registered_user_activation_reports_its_output_statistics():
    model = UserActNet(ShiftedReLU, nnx.Rngs(0))
    snap = gf.probe(model, (X_IMG, Y))
    assert snap.layers == ("conv", "fc1", "fc2")
    z0, a1, h, z1, a2, fc2_in, z2 = _user_act_net_tensors(model)
    ref = np.array([_numpy_act_stats(a1), _numpy_act_stats(a2), _numpy_act_stats(z2)])
    assert 0 < ref[0, 2] < 1 or 0 < ref[1, 2] < 1  # dead_frac is really exercised
    got = np.stack([snap["act_mean"], snap["act_std"], snap["dead_frac"]], axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # and they are jax's own statistics of the activation's output, not something else
    np.testing.assert_allclose(snap["act_mean"][:2], [model.act1(model.conv(X_IMG)).mean(),
                                                      a2.mean()], rtol=1e-5)


def test_unregistered_user_activation_is_not_measured():
    registered = UserActNet(ShiftedReLU, nnx.Rngs(0))
    model = UserActNet(UnregisteredShiftedReLU, nnx.Rngs(0))
    snap = gf.probe(model, (X_IMG, Y))
    z0, a1, h, z1, a2, fc2_in, z2 = _user_act_net_tensors(model)
    # Without activation modules a row reports the next weight layer's input (the last row its
    # own output), not the activation's output.
    ref = np.array([_numpy_act_stats(h), _numpy_act_stats(fc2_in), _numpy_act_stats(z2)])
    got = np.stack([snap["act_mean"], snap["act_std"], snap["dead_frac"]], axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(snap["act_mean"][:2], [a1.mean(), a2.mean()], rtol=1e-3)
    # registration changes only the activation statistics
    other = gf.probe(registered, (X_IMG, Y))
    for k in ("grad_norm", "error_norm", "weight_norm", "loss"):
        np.testing.assert_array_equal(snap[k], other[k])


class ScanBlock(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(10, 10, rngs=rngs)
        self.act = ShiftedReLU(0.0)

    def __call__(self, x):
        return self.act(self.linear(x))


@gf.instrument.register_scanned_stack(block=lambda m: m.block, length=lambda m: m.n)
class UserRepeat(nnx.Module):
    """A user's scanned stack: one block with stacked parameters, applied with lax.scan."""

    def __init__(self, n, rngs):
        self.n = n
        keys = jax.random.split(rngs.params(), n)
        self.block = nnx.vmap(lambda k: ScanBlock(nnx.Rngs(k)))(keys)

    def __call__(self, x):
        graphdef, state = nnx.split(self.block)

        def body(x, s):
            block = nnx.merge(graphdef, s)
            return block(x), nnx.state(block)

        x, state = jax.lax.scan(body, x, state)
        nnx.update(self.block, state)
        return x


class UserRepeatNet(nnx.Module):
    def __init__(self, rngs):
        self.stack = UserRepeat(3, rngs)
        self.head = nnx.Linear(10, 5, rngs=rngs)

    def __call__(self, x):
        return self.head(self.stack(x))


def test_registered_user_scanned_stack_is_measured_per_layer():
    model = UserRepeatNet(nnx.Rngs(0))
    snap = gf.probe(model, (X_VEC, Y))
    assert snap.layers == ("stack/block/0/linear", "stack/block/1/linear",
                           "stack/block/2/linear", "head") and snap.meta["probed"]
    ks = model.stack.block.linear.kernel.get_value()
    bs = model.stack.block.linear.bias.get_value()
    head_k, head_b = model.head.kernel.get_value(), model.head.bias.get_value()

    def forward(ks, head_k, eps):
        h, acts = X_VEC, []
        for k, b, e in zip(ks, bs, eps[:-1]):
            h = jax.nn.relu(h @ k + b + e)
            acts.append(h)
        out = h @ head_k + head_b + eps[-1]
        return cross_entropy(out, Y), acts + [out]

    eps = [jnp.zeros((6, 10))] * 3 + [jnp.zeros((6, 5))]
    (g_ks, g_head, g_eps), acts = jax.grad(forward, argnums=(0, 1, 2), has_aux=True)(
        ks, head_k, eps)
    np.testing.assert_allclose(snap["grad_norm"], [jnp.linalg.norm(g) for g in g_ks]
                               + [jnp.linalg.norm(g_head)], rtol=1e-5)
    np.testing.assert_allclose(snap["error_norm"], [jnp.linalg.norm(g) for g in g_eps],
                               rtol=1e-5)
    np.testing.assert_allclose(snap["act_mean"], [a.mean() for a in acts], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(snap["act_std"], [a.std() for a in acts], rtol=1e-5, atol=1e-7)
