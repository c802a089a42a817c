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
