"""Lanczos' Ritz vector (`max_eigenvalue(method="lanczos", ritz_vector=True)`) and the
warm-started Lanczos measurements of `gf.train(curvature_every=)`, against the dense float64
Hessian of a tiny model."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import gradflow as gf
from gradflow.probe import split_model
from gradflow.quantities import curvature as cv
from gradflow.quantities import training

X = jax.random.normal(jax.random.key(1), (16, 3))
Y = jnp.arange(16) % 2


def _mlp():
    return gf.models.mlp("plain", 3, width=4, in_features=3, num_classes=2, stack="unrolled",
                         rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def problem():
    """The loss, parameters, dense float64 Hessian and its top eigenpair."""
    graphdef, params, rest = split_model(_mlp())
    loss = lambda p: gf.losses.cross_entropy(nnx.merge(graphdef, p, rest, copy=True)(X), Y)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        flat, unravel = ravel_pytree(p64)
        dense = np.asarray(jax.jit(jax.hessian(lambda z: loss(unravel(z))))(flat))
    values, vectors = np.linalg.eigh(dense)
    top = np.argmax(np.abs(values))
    return loss, params, dense, values[top], vectors[:, top]


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


@pytest.mark.parametrize("unroll", [False, True], ids=["loop", "unrolled"])
def test_the_ritz_vector_is_the_top_eigenvector(problem, unroll):
    loss, params, dense, want, u = problem
    ev, early, plain = jax.jit(lambda p: [
        cv.max_eigenvalue(loss, p, method="lanczos", ritz_vector=keep, rtol=rtol,
                          max_iter=max_iter, unroll=unroll)
        for rtol, max_iter, keep in ((1e-6, 16, True), (0.0, 3, True), (0.0, 3, False))])(params)
    assert plain.vector is None and float(plain.value) == float(early.value)
    v = _flat(ev.vector)
    assert bool(ev.converged) and float(ev.value) == pytest.approx(want, rel=1e-5)
    assert np.linalg.norm(v) == pytest.approx(1, rel=1e-5)
    assert abs(v @ u) == pytest.approx(1, abs=1e-4)  # the dense eigenvector, up to sign
    np.testing.assert_allclose(dense @ v, want * v, atol=1e-3 * abs(want))
    # stopped after 3 products, it is still the best vector in the Krylov
    # space: its Rayleigh quotient is the Ritz value
    e = _flat(early.vector)
    assert int(early.iterations) == 3
    assert e @ dense @ e == pytest.approx(float(early.value), rel=1e-4)


def test_a_warm_start_from_the_ritz_vector_needs_fewer_products(problem):
    loss, params, _, want, _ = problem
    moved = jax.tree.map(lambda a: a * 1.01, params)

    @jax.jit
    def measure(params, moved):
        cold = cv.max_eigenvalue(loss, params, method="lanczos", ritz_vector=True, rtol=1e-6,
                                 max_iter=40)
        warm = cv.max_eigenvalue(loss, moved, method="lanczos", ritz_vector=True, rtol=1e-6,
                                 max_iter=40, v0=cold.vector)
        return warm, cv.max_eigenvalue(loss, moved, method="lanczos", rtol=1e-6, max_iter=40)

    warm, again = measure(params, moved)
    assert bool(warm.converged) and bool(again.converged)
    assert int(warm.iterations) < int(again.iterations), (warm.iterations, again.iterations)
    assert float(warm.value) == pytest.approx(float(again.value), rel=1e-5)


def test_train_measures_by_warm_started_lanczos(problem, monkeypatch):
    _, _, _, want, _ = problem
    # learning rate 0: every measurement is at the same point, each later one starting from
    # the last Ritz vector
    hist = gf.train(_mlp(), [(X, Y)] * 5, steps=5, optimizer=optax.sgd(0.0), log_every=10,
                    curvature_every=2)
    assert list(hist.steps) == [0, 2, 4]
    np.testing.assert_allclose(hist["hess_max_ev"], want, rtol=1e-5)  # power: 5e-5 at step 0
    assert np.all(hist["hess_max_ev_converged"] == 1)
    # where the Lanczos vectors of the first measurement would not fit the budget: power
    # iteration, warm-started from its eigenvector, to its tolerance
    monkeypatch.setattr(training, "RITZ_BUDGET", 0)
    hist = gf.train(_mlp(), [(X, Y)] * 3, steps=3, optimizer=optax.sgd(0.0), log_every=10,
                    curvature_every=2)
    assert list(hist.steps) == [0, 2]
    np.testing.assert_allclose(hist["hess_max_ev"], want, rtol=1e-4)


def _loss_fn(model, x, y):
    return gf.losses.cross_entropy(model(x), y)


def test_a_curvature_start_warm_starts_the_user_loop(problem):
    """gf.value_and_grad(curvature=True) given a gf.CurvatureStart inside nnx.jit: each
    measurement leaves the Ritz vector there and the next starts from it; the values are the
    dense Hessian's; the gradients and the training are nnx.value_and_grad's."""
    _, _, _, want, top = problem
    model, bare = _mlp(), _mlp()
    start = gf.CurvatureStart(model)
    first = np.asarray(start.vector[...])
    grad_fn = gf.value_and_grad(_loss_fn, curvature=True)
    opt = nnx.Optimizer(model, optax.sgd(0.0), wrt=nnx.Param)  # lr 0: the same point each step

    @nnx.jit
    def step(model, opt, start, x, y):
        loss, grads, snap = grad_fn(model, x, y, curvature_start=start)
        opt.update(model, grads)
        return grads, snap

    vectors = []
    for _ in range(3):
        grads, snap = step(model, opt, start, X, Y)
        vectors.append(np.asarray(start.vector[...], np.float64))
        assert float(snap["hess_max_ev_converged"]) == 1
        np.testing.assert_allclose(float(snap["hess_max_ev"]), want, rtol=1e-5)
    assert abs(_cos(first, top)) < 0.9  # the random start was not the eigenvector already
    for v in vectors:
        assert abs(_cos(v, top)) > 0.999
    _, ref = nnx.value_and_grad(_loss_fn)(bare, X, Y)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # from the stored vector the iteration needs fewer products than from the first one
    loss, params = problem[0], problem[1]
    cold = cv.max_eigenvalue(loss, params, v0=_unravel_like(first, params), method="lanczos")
    warm = cv.max_eigenvalue(loss, params, v0=start.direction(params), method="lanczos")
    assert int(warm.iterations) < int(cold.iterations), (warm.iterations, cold.iterations)


def _cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def _unravel_like(flat, params):
    return ravel_pytree(params)[1](jnp.asarray(flat))


def test_a_curvature_start_is_checked_in_one_line():
    model = _mlp()
    start = gf.CurvatureStart(model)
    with pytest.raises(TypeError, match="curvature=True"):
        gf.value_and_grad(_loss_fn)(model, X, Y, curvature_start=start)
    with pytest.raises(TypeError, match="gf.CurvatureStart"):
        gf.value_and_grad(_loss_fn, curvature=True)(model, X, Y, curvature_start=object())
    other = gf.models.mlp("plain", 3, width=5, in_features=3, num_classes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="parameters"):
        gf.value_and_grad(_loss_fn, curvature=True)(other, X, Y, curvature_start=start)
    with pytest.raises(ValueError, match="no nnx.Param"):
        gf.CurvatureStart(nnx.Dropout(0.5))
