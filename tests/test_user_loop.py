"""gf.value_and_grad inside a user's own loop: gradients bit for bit those of nnx.value_and_grad,
state updates (BatchNorm, RNG counts) as nnx.value_and_grad makes them, every metric against an
independent functional re-implementation, nnx.jit / jax.jit with nnx.Optimizer, update_ratio,
History.append, and one-line errors for bad input."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf


class Net(nnx.Module):
    """Linear -> BN -> relu -> dropout -> Linear, the encoder called twice (two inputs)."""

    def __init__(self, rngs):
        self.enc = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, a, b, *, train: bool = True):
        h = self.bn(self.enc(a) + self.enc(b), use_running_average=not train)
        h = self.drop(nnx.relu(h), deterministic=not train)
        return self.head(h)


def loss_fn(model, a, b, y, train=True):
    out = model(a, b, train=train)
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), out


KEY = jax.random.key(0)
A = jax.random.normal(jax.random.key(1), (16, 4))
B = jax.random.normal(jax.random.key(2), (16, 4))
Y = jnp.arange(16) % 3


def _same(t1, t2):
    leaves1, leaves2 = jax.tree.leaves(t1), jax.tree.leaves(t2)
    return len(leaves1) == len(leaves2) and all(
        bool(jnp.array_equal(u, v)) for u, v in zip(leaves1, leaves2))


def test_grads_values_and_state_updates_are_those_of_nnx_value_and_grad():
    ref, got = Net(nnx.Rngs(0, dropout=1)), Net(nnx.Rngs(0, dropout=1))
    (l1, out1), g1 = nnx.value_and_grad(loss_fn, has_aux=True)(ref, A, B, Y, train=True)
    (l2, out2), g2, snap = gf.value_and_grad(loss_fn, has_aux=True)(got, A, B, Y, train=True)
    assert bool(l1 == l2) and bool(jnp.array_equal(out1, out2))
    assert type(g1) is type(g2) and _same(g1, g2)
    assert _same(nnx.state(ref), nnx.state(got))  # BN statistics and the dropout RNG count
    assert type(got.enc) is nnx.Linear  # the user's model is never modified
    assert snap.layers == ("enc", "enc#2", "head")  # one row per call
    assert float(snap["loss"]) == float(l1)


def _reference(model, a, b, y):
    """(‖∂L/∂W‖, ‖∂L/∂z‖, ‖W‖, activation stats) per call, by a functional re-implementation
    (eval mode: BN on its running statistics, no dropout) with zero perturbations on each output."""
    W1, b1 = model.enc.kernel[...], model.enc.bias[...]
    W2, b2 = model.head.kernel[...], model.head.bias[...]
    bn = model.bn
    scale, bias, mean, var = bn.scale[...], bn.bias[...], bn.mean[...], bn.var[...]

    def forward(W1, W2, d1, d2, d3):
        z1, z2 = a @ W1 + b1 + d1, b @ W1 + b1 + d2
        h = (z1 + z2 - mean) / jnp.sqrt(var + bn.epsilon) * scale + bias
        x3 = nnx.relu(h)
        z3 = x3 @ W2 + b2 + d3
        loss = optax.softmax_cross_entropy_with_integer_labels(z3, y).mean()
        return loss, (a, b, x3, z3)

    zeros = (jnp.zeros((16, 8)), jnp.zeros((16, 8)), jnp.zeros((16, 3)))
    grads, inputs = jax.grad(forward, argnums=(0, 1, 2, 3, 4), has_aux=True)(W1, W2, *zeros)
    gW1, gW2, d1, d2, d3 = (np.asarray(g, np.float64) for g in grads)
    norm = lambda v: float(np.sqrt(np.sum(v ** 2)))
    grad = [norm(gW1), norm(gW1), norm(gW2)]  # both calls share the kernel and its gradient
    error = [norm(d1), norm(d2), norm(d3)]
    weight = [norm(np.asarray(W1)), norm(np.asarray(W1)), norm(np.asarray(W2))]
    # without activation modules, a row passes on the next row's input; the last its output
    passed = [np.asarray(inputs[1]), np.asarray(inputs[2]), np.asarray(inputs[3])]
    acts = [(p.mean(), p.std(), float(np.mean(np.all(p == 0, axis=0)))) for p in passed]
    return grad, error, weight, np.asarray(acts)


def test_every_metric_equals_an_independent_reference():
    model = Net(nnx.Rngs(0, dropout=1))
    grad, error, weight, acts = _reference(model, A, B, Y)
    _, _, snap = gf.value_and_grad(loss_fn, has_aux=True)(model, A, B, Y, train=False)
    np.testing.assert_allclose(snap["error_norm"], error, rtol=2e-5)
    np.testing.assert_allclose(snap["weight_norm"], weight, rtol=1e-6)
    np.testing.assert_allclose(snap["act_mean"], acts[:, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(snap["act_std"], acts[:, 1], rtol=1e-4)
    np.testing.assert_allclose(snap["dead_frac"], acts[:, 2])
    # a kernel called twice: each row reports the kernel's whole gradient
    np.testing.assert_allclose(snap["grad_norm"], grad, rtol=2e-5)


def test_training_in_nnx_jit_with_an_optimizer_equals_nnx_value_and_grad():
    def make():
        model = Net(nnx.Rngs(0, dropout=1))
        return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    grad_fn = gf.value_and_grad(loss_fn, has_aux=True)

    @nnx.jit
    def reference_step(model, optimizer, a, b, y):
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, a, b, y)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def step(model, optimizer, a, b, y):
        (loss, _), grads, snap = grad_fn(model, a, b, y)
        updates = optimizer.update(model, grads)
        return loss, gf.update_ratio(snap, updates), updates

    (m1, o1), (m2, o2) = make(), make()
    history = gf.History()
    for i in range(3):
        w_before = np.asarray(m2.head.kernel[...], np.float64)
        l1 = reference_step(m1, o1, A, B, Y)
        l2, snap, updates = step(m2, o2, A, B, Y)
        assert float(l1) == float(l2)
        u = np.asarray(updates["head"]["kernel"], np.float64)
        assert float(snap["update_ratio"][-1]) == pytest.approx(
            np.linalg.norm(u) / np.linalg.norm(w_before), rel=1e-5)
        history.append(i, snap)
    assert _same(nnx.state(m1), nnx.state(m2))
    assert history["update_ratio"].shape == (3, 3) and list(history.steps) == [0, 1, 2]
    assert np.isfinite(history["error_norm"]).all()


def test_jax_jit_with_split_and_merge():
    model = Net(nnx.Rngs(0, dropout=1))
    graphdef, state = nnx.split(model)
    grad_fn = gf.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def step(state, a, b, y):
        m = nnx.merge(graphdef, state)
        (loss, _), grads, snap = grad_fn(m, a, b, y)
        return loss, grads, snap, nnx.state(m)

    loss, grads, snap, new_state = step(state, A, B, Y)

    @jax.jit
    def reference(state, a, b, y):  # the same jitted step through nnx.value_and_grad
        m = nnx.merge(graphdef, state)
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m, a, b, y)
        return loss, grads, nnx.state(m)

    l_ref, g_ref, state_ref = reference(state, A, B, Y)
    assert float(loss) == float(l_ref)
    assert _same(grads, g_ref)  # bit for bit under jax.jit too
    assert _same(new_state, state_ref)  # BN statistics and the dropout RNG count
    assert isinstance(snap, gf.Snapshot) and snap.layers == ("enc", "enc#2", "head")
    assert np.isfinite(np.asarray(snap["error_norm"])).all()


def test_rngs_passed_as_an_argument_are_advanced_as_nnx_does():
    class Noisy(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x, rngs):
            return self.lin(x + 0.1 * jax.random.normal(rngs.noise(), x.shape))

    def noisy_loss(model, x, rngs):
        return jnp.mean(model(x, rngs) ** 2)

    r1, r2 = nnx.Rngs(noise=3), nnx.Rngs(noise=3)
    l1, g1 = nnx.value_and_grad(noisy_loss)(Noisy(nnx.Rngs(0)), A, r1)
    l2, g2, _ = gf.value_and_grad(noisy_loss)(Noisy(nnx.Rngs(0)), A, r2)
    assert bool(l1 == l2) and _same(g1, g2) and _same(nnx.state(r1), nnx.state(r2))


def test_bad_input_is_one_clear_error():
    with pytest.raises(TypeError, match="nnx.Module"):
        gf.value_and_grad(lambda m, x: jnp.sum(x))(lambda x: x, A)
    with pytest.raises(ValueError, match="scalar loss"):
        gf.value_and_grad(lambda m, x: m.enc(x))(Net(nnx.Rngs(0)), A)
    with pytest.raises(ValueError, match="gf.value_and_grad"):
        gf.update_ratio(gf.Snapshot(["a"], {"weight_norm": np.ones(1)}), {})


def test_normalization_parameters_are_reported_as_scalars():
    model = Net(nnx.Rngs(0, dropout=1))
    _, grads, snap = gf.value_and_grad(loss_fn, has_aux=True)(model, A, B, Y, train=False)
    for name in ("scale", "bias"):
        want = np.linalg.norm(np.asarray(grads["bn"][name][...], np.float64))
        assert float(snap[f"grad_norm:bn/{name}"]) == pytest.approx(want, rel=1e-5)
    assert "grad_norm:enc/kernel" not in snap  # weight layers are rows, not scalars


def test_a_users_nnx_scan_stack_is_probed_without_registration_or_warning():
    class Scanned(nnx.Module):
        def __init__(self, rngs):
            @nnx.split_rngs(splits=3)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make(rngs):
                return nnx.Linear(4, 4, rngs=rngs)

            self.layers = make(rngs)

        def __call__(self, x):
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def body(x, layer):
                return jnp.tanh(layer(x))

            return body(x, self.layers)

    model = Scanned(nnx.Rngs(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot be probed" warning
        _, grads, snap = gf.value_and_grad(lambda m, x: jnp.mean(m(x) ** 2))(model, A)
    assert snap.layers == ("layers/0", "layers/1", "layers/2") and snap.meta["probed"]
    assert np.isfinite(snap["error_norm"]).all() and np.isfinite(snap["act_std"]).all()
    kernels = np.asarray(grads["layers"]["kernel"][...], np.float64)
    np.testing.assert_allclose(snap["grad_norm"], np.linalg.norm(kernels, axis=(1, 2)), rtol=1e-5)
    # what still cannot be probed (an nnx.vmap call): tests/test_transform_rows.py


def test_labels_outside_the_classes_are_refused_and_a_nan_loss_is_not_healthy():
    model = gf.models.mlp("plain", 3, width=8, in_features=4, num_classes=3, rngs=nnx.Rngs(0))
    bad = np.array([0, 1, 2, 3] * 4)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        gf.probe(model, (np.asarray(A), bad))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        gf.train(model, [(np.asarray(A), bad)], steps=1, optimizer=optax.sgd(0.1))
    snap = gf.Snapshot(["a", "b"], {"grad_norm": np.ones(2), "error_norm": np.ones(2)},
                       {"loss": np.float32("nan")})
    assert [f.kind for f in gf.diagnose(snap)] == ["divergence"]


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x, scale=1.0):
        return jnp.tanh(self.lin(x) * scale)


@gf.instrument.register_scanned_stack(block=lambda m: m.blocks, length=lambda m: 3,
                                      names=lambda i: (i,))
class _Blocks(nnx.Module):
    """The scan-over-layers pattern: blocks made by nnx.vmap, run by nnx.scan."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return _Block(rngs)

        self.blocks = make(rngs)

    def __call__(self, x, scale=1.0):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, block):
            return block(x, scale=scale)

        return body(x, self.blocks)


def test_a_registered_nnx_scan_stack_is_measured_per_iteration_with_its_arguments():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.stack, self.head = _Blocks(rngs), nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x, scale):
            return self.head(self.stack(x, scale=scale))

    def f(model, x):
        return jnp.mean(model(x, 0.5) ** 2)

    l1, g1 = nnx.value_and_grad(f)(Model(nnx.Rngs(0)), A)
    l2, g2, snap = gf.value_and_grad(f)(Model(nnx.Rngs(0)), A)
    assert bool(l1 == l2) and _same(g1, g2)
    assert snap.layers == ("stack/0/lin", "stack/1/lin", "stack/2/lin", "head")
    assert np.isfinite(snap["error_norm"]).all() and (snap["error_norm"] > 0).all()
    kernels = np.asarray(g1["stack"]["blocks"]["lin"]["kernel"][...], np.float64)
    np.testing.assert_allclose(snap["grad_norm"][:3], np.linalg.norm(kernels, axis=(1, 2)),
                               rtol=1e-5)


def _one_line_type_error(grad_fn, *args, match, **kwargs):
    with pytest.raises(TypeError, match=match) as err:
        grad_fn(*args, **kwargs)
    assert "\n" not in str(err.value) and err.value.__cause__ is None
    assert err.value.__suppress_context__ or err.value.__context__ is None  # no chained trace


def test_arguments_no_model_input_can_be_are_one_line_type_errors():
    """The rule: every leaf of args/kwargs is a JAX or numeric numpy array, a Python number,
    bool or None, or an NNX object; Python numbers not inside a list; and a tuple, list or dict
    argument that reaches library code whole where an array is needed is named."""
    grad_fn, model = gf.value_and_grad(loss_fn, has_aux=True), Net(nnx.Rngs(0, dropout=1))
    nested = np.asarray(A).tolist()
    _one_line_type_error(grad_fn, model, nested, B, Y, match=r"^gf\.value_and_grad: argument 1 "
                         r"\(a\) is a list of Python numbers, not an array: pass jnp\.asarray")
    _one_line_type_error(grad_fn, model, A, "abc", Y,
                         match=r"argument 2 \(b\) is a str \('abc'\), not an array")
    _one_line_type_error(grad_fn, model, A, B, Y, train="yes",
                         match=r"keyword argument 'train' is a str")
    _one_line_type_error(grad_fn, model, A, np.array(["x", "y"]), Y,
                         match=r"argument 2 \(b\) is a numpy array of dtype <U1")
    _one_line_type_error(grad_fn, model, {"x": nested}, B, Y,
                         match=r"argument 1 \(a\)\['x'\] is a list of Python numbers")
    _one_line_type_error(grad_fn, model, A, B, Y, object(),
                         match=r"argument 4 \(train\) is a object")
    # a dict (or list) of arrays is a pytree fn may take; here the model needs an array
    _one_line_type_error(grad_fn, model, {"x": A}, B, Y, match=r"argument 1 \(a\) is a dict, "
                         r"not an array, where flax\..*Linear\.__call__ needs one \(ValueError")
    _one_line_type_error(grad_fn, model, A, B, [Y],
                         match=r"argument 3 \(y\) is a list, not an array, where optax\.")
    assert _same(nnx.state(model), nnx.state(Net(nnx.Rngs(0, dropout=1))))  # left unchanged


def test_legitimate_arguments_still_work():
    """numpy arrays, Python bools / numbers / None, tuples of numbers, NNX objects and pytrees
    of arrays pass the argument check and give nnx.value_and_grad's numbers."""
    def pytree_loss(model, batch, rngs=None, scale=1.0, window=(1, 1), extra=None):
        out = model(batch["a"], batch["pair"][0], train=batch["train"])
        if rngs is not None:
            out = out + 0.0 * jax.random.normal(rngs.noise(), out.shape)
        ce = optax.softmax_cross_entropy_with_integer_labels(out, batch["pair"][1]).mean()
        return scale * ce * window[0]

    batch = {"a": np.asarray(A), "pair": (B, np.asarray(Y)), "train": False}
    kwargs = {"rngs": nnx.Rngs(noise=1), "scale": 2, "window": (1, 3), "extra": None}
    ref = nnx.value_and_grad(pytree_loss)(Net(nnx.Rngs(0, dropout=1)), batch, **kwargs)
    kwargs["rngs"] = nnx.Rngs(noise=1)
    got = gf.value_and_grad(pytree_loss)(Net(nnx.Rngs(0, dropout=1)), batch, **kwargs)
    assert bool(ref[0] == got[0]) and _same(ref[1], got[1])
    assert got[2].layers == ("enc", "enc#2", "head")
    (_, out), _, _ = gf.value_and_grad(loss_fn, has_aux=True)(  # a Python bool, positionally
        Net(nnx.Rngs(0, dropout=1)), A, B, Y, False)
    assert out.shape == (16, 3)


def test_the_existing_checks_keep_their_messages():
    class Empty(nnx.Module):
        def __call__(self, x):
            return jnp.sum(x)

    with pytest.raises(TypeError, match="the first argument must be an nnx.Module, got function"):
        gf.value_and_grad(lambda m, x: jnp.sum(x))(lambda x: x, A)
    with pytest.raises(ValueError, match="the model has no nnx.Param to differentiate"):
        gf.value_and_grad(lambda m, x: m(x))(Empty(), A)
    with pytest.raises(ValueError, match=r"fn must return a scalar loss, got shape \(16, 8\)"):
        gf.value_and_grad(lambda m, x: m.enc(x))(Net(nnx.Rngs(0)), A)
    with pytest.raises(ValueError, match=r"fn must return a scalar loss first, got shape \(16, "):
        gf.value_and_grad(lambda m, x: (m.enc(x), 0), has_aux=True)(Net(nnx.Rngs(0)), A)
    # an error of fn's own, with a dict argument present, is not blamed on the argument
    def own_error(model, batch):
        return jnp.dot(model.enc(batch["a"]), jnp.ones((3,)))

    with pytest.raises(TypeError, match="dot_general requires contracting dimensions"):
        gf.value_and_grad(own_error)(Net(nnx.Rngs(0)), {"a": A})
