"""Noise, curvature and histograms through `gf.value_and_grad` in a user's own step, against
explicit references (per-example loops in float64, the dense Hessian, numpy histograms), and
Histories that take them only at some steps."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import gradflow as gf
from gradflow.quantities.histograms import EDGES, HIST_BINS
from reference import noise_reference

X = jax.random.normal(jax.random.PRNGKey(3), (8, 3))
Y = jnp.array([0, 1, 1, 0, 1, 0, 0, 1])


def _model(depth=4, width=4):
    return gf.models.mlp("residual", depth, width=width, in_features=3, num_classes=2,
                         rngs=nnx.Rngs(0))


def loss_fn(model, batch, *, scale):
    """A user's loss: a dict batch and a keyword argument."""
    logits = model(batch["x"])
    return scale * optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def _flat(tree):
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(tree)])


GRAD_FN = gf.value_and_grad(loss_fn, noise=True, curvature=True, histograms=True)


@pytest.fixture(scope="module")
def measured():
    """(grads, snapshot) of one jitted call with every quantity, no optimizer (shared)."""
    _, grads, snap = nnx.jit(lambda m, b: GRAD_FN(m, b, scale=0.5))(_model(), {"x": X, "y": Y})
    return grads, snap


def test_noise_equals_the_per_example_loop_and_grads_stay_those_of_nnx(measured):
    grads, snap = measured
    model = _model()
    _, want_grads = nnx.value_and_grad(functools.partial(loss_fn, scale=0.5))(
        model, {"x": X, "y": Y})
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_array_equal(a, b)
    one = nnx.jit(nnx.grad(functools.partial(loss_fn, scale=0.5)))  # one compile, 8 calls
    G = np.stack([_flat(one(model, {"x": X[n:n + 1], "y": Y[n:n + 1]}))
                  for n in range(len(X))])
    for k, v in noise_reference(G).items():
        np.testing.assert_allclose(snap[k], v, rtol=2e-3, err_msg=k)
    assert float(snap["noise_mean_reduced"]) == 1.0
    assert snap["layer_norm_test"].shape == (len(snap.layers),)
    assert int(np.sum(snap["example_grad_hist"])) == G.size  # every element of every example


def test_a_step_with_an_optimizer_returns_the_same_values(measured):
    model = _model()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch):
        _, grads, snap = GRAD_FN(model, batch, scale=0.5)
        return gf.update_ratio(snap, optimizer.update(model, grads))

    jitted = step(model, optimizer, {"x": X, "y": Y})
    for k in ("mean_gsnr", "norm_test", "hess_max_ev", "hess_trace", "layer_hess_trace",
              "grad_hist", "example_grad_hist"):
        np.testing.assert_allclose(jitted[k], measured[1][k], rtol=1e-4, err_msg=k)
    assert np.all(np.isfinite(jitted["update_ratio"]))


def test_gradient_histograms_count_the_batch_gradient_in_log_bins(measured):
    grads, snap = measured
    hist = np.asarray(snap["grad_hist"])
    assert hist.shape == (len(snap.layers), HIST_BINS)
    every = np.abs(_flat(grads)).astype(np.float32)
    want = np.bincount(np.searchsorted(EDGES, every, side="right"), minlength=HIST_BINS)
    np.testing.assert_array_equal(hist.sum(0), want)  # rows cover every parameter once


def test_curvature_equals_the_dense_hessian_of_a_tiny_model():
    model = gf.models.mlp("plain", 2, width=3, in_features=3, num_classes=2, rngs=nnx.Rngs(1))
    grad_fn = gf.value_and_grad(loss_fn, curvature=True)
    snap = nnx.jit(lambda m, b: grad_fn(m, b, scale=1.0))(model, {"x": X, "y": Y})[2]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat, unravel = ravel_pytree(params)
    assert flat.size <= 64  # the trace is exact here

    def loss(v):
        return loss_fn(nnx.merge(graphdef, unravel(v), rest), {"x": X, "y": Y}, scale=1.0)
    H = np.asarray(jax.jit(jax.hessian(loss))(flat), np.float64)
    eig = np.linalg.eigvalsh((H + H.T) / 2)
    np.testing.assert_allclose(snap["hess_trace"], np.trace(H), rtol=1e-4)
    np.testing.assert_allclose(snap["layer_hess_trace"].sum(), np.trace(H), rtol=1e-4)
    np.testing.assert_allclose(snap["hess_max_ev"], eig[np.argmax(np.abs(eig))], rtol=5e-3)


def test_a_sum_reduced_loss_gives_nan_noise_and_a_batch_of_one_an_error():
    def summed(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).sum()
    grad_fn = gf.value_and_grad(summed, noise=True)
    snap = nnx.jit(grad_fn)(_model(), X, Y)[2]  # compiled (eagerly it dispatches op by op)
    assert float(snap["noise_mean_reduced"]) == 0.0
    assert np.isnan(float(snap["norm_test"])) and np.all(np.isnan(snap["layer_mean_gsnr"]))
    assert np.all(np.asarray(snap["example_grad_hist"]) == -1)
    with pytest.raises(ValueError, match="at least 2 examples"):
        grad_fn(_model(), X[:1], Y[:1])  # eagerly


def test_a_history_takes_the_quantities_at_some_steps_and_blanks_the_others():
    model = _model()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    plain = gf.value_and_grad(loss_fn)
    noisy = gf.value_and_grad(loss_fn, noise=True)

    @nnx.jit(static_argnums=3)
    def step(model, optimizer, batch, measure):
        _, grads, snap = (noisy if measure else plain)(model, batch, scale=1.0)
        return gf.update_ratio(snap, optimizer.update(model, grads))

    history = gf.History()
    for i in range(5):
        history.append(i, step(model, optimizer, {"x": X, "y": Y}, i in (1, 3)))
    assert np.isnan(history["norm_test"][[0, 2, 4]]).all()
    assert np.isfinite(history["norm_test"][[1, 3]]).all()
    assert (history["example_grad_hist"][[0, 2, 4]] == -1).all()
    assert history["grad_norm"].shape == (5, len(history.layers))
    odd = gf.Snapshot(history.layers, {"grad_norm": np.ones(len(history.layers)),
                                       "typo_norm": np.ones(len(history.layers))})
    with pytest.raises(ValueError, match="metrics differ"):
        history.append(9, odd)  # only the occasional quantities may come and go
