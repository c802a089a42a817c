"""gf.probe(..., noise=, histograms=, init=): names, shapes, references and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow.quantities.histograms import EDGES, HIST_BINS

X = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
Y = jnp.array([0, 1, 1, 0, 1, 0, 0, 1])


def _mlp():
    return gf.models.mlp("plain", 3, width=4, in_features=3, num_classes=2, rngs=nnx.Rngs(0),
                         stack="unrolled")


def _rows(model):
    """Each Linear (kernel and bias), in gradflow's row order (network order)."""
    by_name = {"/".join(map(str, path)): m for path, m in nnx.iter_modules(model)
               if isinstance(m, nnx.Linear)}
    names = gf.probe(_mlp(), (X, Y)).layers
    assert sorted(names) == sorted(by_name)
    return [by_name[n] for n in names]


def test_noise_adds_whole_network_scalars_and_layer_rows():
    snap = gf.probe(_mlp(), (X, Y), noise=True)
    n = len(snap.layers)
    for k in ("mean_gsnr", "norm_test", "inner_test", "ortho_test"):
        assert np.shape(snap[k]) == () and np.isfinite(snap[k]) and snap[k] > 0
        assert snap[f"layer_{k}"].shape == (n,)
    assert snap["example_grad_hist"].shape == (n, HIST_BINS)
    sizes = [l.kernel.get_value().size + l.bias.get_value().size for l in _rows(_mlp())]
    np.testing.assert_array_equal(snap["example_grad_hist"].sum(1), 8 * np.asarray(sizes))


def test_grad_hist_counts_the_batch_gradient_elements():
    model = _mlp()
    snap = gf.probe(model, (X, Y), histograms=True)
    grads = nnx.grad(lambda m: gf.losses.cross_entropy(m(X), Y))(model)
    as_model = nnx.clone(model)
    nnx.update(as_model, grads)  # the gradients in the model's structure
    for row, layer in zip(snap["grad_hist"], _rows(as_model)):
        mags = np.abs(np.concatenate([np.ravel(layer.kernel.get_value()),
                                      np.ravel(layer.bias.get_value())])).astype(np.float32)
        want = np.bincount(np.searchsorted(EDGES, mags, side="right"), minlength=HIST_BINS)
        np.testing.assert_array_equal(row, want)


def test_init_distance_is_the_relative_change_per_layer_and_overall():
    model, start = _mlp(), _mlp()
    for layer in _rows(model):
        layer.kernel.set_value(layer.kernel.get_value() * 1.5)
    snap = gf.probe(model, (X, Y), init=start)
    for got, a, b in zip(snap["layer_init_distance"], _rows(model), _rows(start)):
        moved = np.concatenate([np.ravel(a.kernel.get_value() - b.kernel.get_value()),
                                np.ravel(a.bias.get_value() - b.bias.get_value())])
        size = np.concatenate([np.ravel(b.kernel.get_value()), np.ravel(b.bias.get_value())])
        np.testing.assert_allclose(got, np.linalg.norm(moved) / np.linalg.norm(size), rtol=1e-5)
    np.testing.assert_allclose(snap["init_distance"], 0.5, rtol=1e-5)  # every kernel × 1.5, biases 0
    same = gf.probe(start, (X, Y), init=nnx.state(start, nnx.Param))
    assert float(same["init_distance"]) == 0.0


@pytest.mark.parametrize("batch,loss,message", [
    (1, None, "at least 2 examples"),
    (8, lambda o, y: len(y) * gf.losses.cross_entropy(o, y), "mean-reduced loss"),
])
def test_noise_refuses_what_it_cannot_define_in_one_line(batch, loss, message):
    with pytest.raises(ValueError, match=message) as e:
        gf.probe(_mlp(), (X[:batch], Y[:batch]), loss=loss, noise=True)
    assert "\n" not in str(e.value)


def test_train_takes_noise_every_k_steps_and_matches_the_probe():
    import optax
    model, fresh = _mlp(), _mlp()
    hist = gf.train(model, [(X, Y)] * 7, steps=7, optimizer=optax.sgd(0.1), log_every=3,
                    noise_every=2)
    assert list(hist.steps) == [0, 2, 3, 4, 6]
    taken = np.isfinite(hist["norm_test"])
    assert list(taken) == [True, True, False, True, True]
    assert (hist["example_grad_hist"][~taken] == -1).all()
    assert hist["example_grad_hist"].shape == (5, len(hist.layers), HIST_BINS)
    snap = gf.probe(fresh, (X, Y), noise=True)  # step 0: the parameters before any update
    for k in ("norm_test", "inner_test", "ortho_test", "mean_gsnr", "layer_norm_test"):
        np.testing.assert_allclose(hist[k][0], snap[k], rtol=1e-5, err_msg=k)
    np.testing.assert_array_equal(hist["example_grad_hist"][0], snap["example_grad_hist"])


def test_a_history_grows_from_snapshots_with_histograms_and_saves_them(tmp_path):
    model = _mlp()
    hist = gf.History()
    for step in (0, 5):
        hist.append(step, gf.probe(model, (X, Y), noise=True, histograms=True))
    assert hist["grad_hist"].shape == (2, len(hist.layers), HIST_BINS)
    back = gf.History.load(hist.save(tmp_path / "h.npz"))
    np.testing.assert_array_equal(back["example_grad_hist"], hist["example_grad_hist"])
    with pytest.raises(ValueError, match="shape"):
        hist.append(9, gf.Snapshot(hist.layers, {k: hist[k][0] for k in hist.metrics}
                                   | {"grad_hist": np.zeros((len(hist.layers), 3))},
                                   {k: hist[k][0] for k in hist.scalars}))


def _dense_hessian(model):
    """The dense Hessian of the loss and, per entry of the flat parameter vector, the row (by
    layer name, in snap.layers order) that owns it."""
    from jax.flatten_util import ravel_pytree
    from gradflow.probe import split_model
    graphdef, params, rest = split_model(model)
    flat, unravel = ravel_pytree(params)
    H = jax.hessian(lambda f: gf.losses.cross_entropy(
        nnx.merge(graphdef, unravel(f), rest)(X), Y))(flat)
    names = gf.probe(model, (X, Y)).layers
    keys = jax.tree_util.tree_flatten_with_path(params)[0]  # paths: ...module, leaf, value
    owner = jax.tree.unflatten(jax.tree.structure(params), [  # each leaf: its layer's row number
        jnp.full(a.shape, names.index("/".join(str(k.key) for k in path[:-2])), jnp.float32)
        for path, a in keys])
    return np.asarray(H, np.float64), np.asarray(ravel_pytree(owner)[0]).astype(int)


def test_curvature_equals_the_dense_hessian_of_a_tiny_model():
    model = _mlp()  # 46 parameters: the trace is exact, the eigenvalue iteration converges
    snap = gf.probe(model, (X, Y), curvature=True)
    H, owner = _dense_hessian(model)
    ev = np.linalg.eigvalsh(H)
    np.testing.assert_allclose(snap["hess_max_ev"], ev[np.argmax(np.abs(ev))], rtol=1e-3)
    assert snap["hess_max_ev_converged"] == 1.0
    np.testing.assert_allclose(snap["hess_trace"], np.trace(H), rtol=1e-4)
    assert snap["hess_trace_se"] == 0.0
    blocks = [np.diag(H)[owner == r].sum() for r in range(len(snap.layers))]  # tr(H_rr)
    np.testing.assert_allclose(snap["layer_hess_trace"], blocks, rtol=1e-4)
    np.testing.assert_array_equal(snap["layer_hess_trace_se"], 0)


def test_train_takes_curvature_every_k_steps_warm_started():
    import optax
    model, fresh = _mlp(), _mlp()
    hist = gf.train(model, [(X, Y)] * 5, steps=5, optimizer=optax.sgd(0.1), log_every=4,
                    curvature_every=2)
    assert list(hist.steps) == [0, 2, 4]
    assert np.isfinite(hist["hess_max_ev"]).all() and hist.meta["curvature_every"] == 2
    snap = gf.probe(fresh, (X, Y), curvature=True)
    for k in ("hess_trace", "layer_hess_trace"):  # exact for 46 parameters
        np.testing.assert_allclose(hist[k][0], snap[k], rtol=1e-4, err_msg=k)
    # the run's Lanczos (at most 20 products) and the probe's (at most 100), both to rtol 1e-3
    np.testing.assert_allclose(hist["hess_max_ev"][0], snap["hess_max_ev"], rtol=1e-3)
