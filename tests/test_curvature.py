"""gradflow.quantities.curvature against independent references: the dense float64 Hessian of
tiny models (`jax.hessian` of the loss of a flat parameter vector, numpy eigen-solvers)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from _backend import cpu_only
import gradflow as gf
from gradflow.conv_layout import has_custom_vjp
from gradflow.instrument.norms import flat_arrays
from gradflow.instrument.steps import layout_for
from gradflow.probe import split_model
from gradflow.quantities import curvature as cv
from gradflow.quantities.rows import row_segments


class Problem:
    """A tiny model, its loss closure, its rows' segments and its dense float64 Hessian."""

    def __init__(self, model, x, y, loss=gf.losses.cross_entropy):
        self.graphdef, self.params, self.rest = split_model(model)
        self.x, self.y = x, y
        self.segments = row_segments(self.params, layout_for(self.graphdef, self.params,
                                                             self.rest, x, model))
        self.loss = lambda p: loss(nnx.merge(self.graphdef, p, self.rest, copy=True)(x), y)
        self.flat, self.unravel = ravel_pytree(self.params)

    def dense(self):
        """The Hessian in float64, (P, P)."""
        with jax.enable_x64(True):
            p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), self.params)
            flat, unravel = ravel_pytree(p64)
            return np.asarray(jax.jit(jax.hessian(lambda z: self.loss(unravel(z))))(flat))

    def run(self, fn, params=None, **kw):
        """`fn(self.loss, params, **kw)` compiled (eager dispatch would compile op by op)."""
        return jax.jit(lambda p: fn(self.loss, p, **kw))(self.params if params is None else params)

    def row_indices(self):
        """Each row's positions in the flat parameter vector."""
        where = flat_arrays(self.unravel(jnp.arange(self.flat.size, dtype=jnp.float32)))
        return [np.concatenate([np.asarray(where[p] if i is None else where[p][i]).ravel()
                                for p, i in seg]).astype(int) for seg in self.segments]

    def ravel(self, tree):
        return np.asarray(ravel_pytree(tree)[0], np.float64)


def _top(matrix):
    e = np.linalg.eigvalsh(matrix)
    return e[np.argmax(np.abs(e))]


@pytest.fixture(scope="module")
def mlp():
    model = gf.models.mlp("plain", 3, width=4, in_features=3, num_classes=2, stack="unrolled",
                          rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (16, 3))
    return Problem(model, x, jnp.arange(16) % 2)


@pytest.fixture(scope="module")
def scanned():
    """Rows that are slices of a scanned stack (segments with an index)."""
    model = gf.models.mlp("plain", 4, width=4, in_features=3, num_classes=2, stack="scan",
                          activation="tanh", rngs=nnx.Rngs(2))
    x = jax.random.normal(jax.random.key(3), (16, 3))
    return Problem(model, x, jnp.arange(16) % 2)


@pytest.fixture(scope="module")
def dense(mlp):
    return mlp.dense()


def test_hvp_is_the_dense_hessian_times_v(mlp, dense):
    v = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size), a.shape), mlp.params)
    got = mlp.ravel(mlp.run(cv.hvp, v=v))
    want = dense @ mlp.ravel(v)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_max_eigenvalue_is_the_dense_eigenvalue_of_largest_magnitude(mlp, dense):
    want = _top(dense)
    tight = mlp.run(cv.max_eigenvalue, rtol=1e-6, max_iter=1000)
    assert bool(tight.converged)
    assert float(tight.value) == pytest.approx(want, rel=1e-4)
    # the eigenvector: H v = λ v, and unit norm over the whole pytree
    v = mlp.ravel(tight.vector)
    assert np.linalg.norm(v) == pytest.approx(1, rel=1e-5)
    np.testing.assert_allclose(dense @ v, want * v, atol=1e-2 * abs(want))
    default = mlp.run(cv.max_eigenvalue)
    assert bool(default.converged) and int(default.iterations) <= 100
    assert float(default.value) == pytest.approx(want, rel=1e-3)


def test_lanczos_is_the_dense_eigenvalue_in_fewer_products(mlp, dense):
    want = _top(dense)
    # max_iter 100 (Cockpit's default): the Krylov space of these 46 parameters closes long
    # before
    tight = mlp.run(cv.max_eigenvalue, rtol=1e-6, max_iter=100, method="lanczos")
    assert bool(tight.converged) and tight.vector is None
    assert float(tight.value) == pytest.approx(want, rel=1e-5)
    lanczos = mlp.run(cv.max_eigenvalue, method="lanczos")
    power = mlp.run(cv.max_eigenvalue)
    assert bool(lanczos.converged) and int(lanczos.iterations) <= int(power.iterations)
    assert abs(float(lanczos.value) - want) <= abs(float(power.value) - want)
    assert float(lanczos.value) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("method", cv.METHODS)
def test_a_negative_dominant_eigenvalue_keeps_its_sign(method):
    loss = lambda w: 0.5 * (1.0 * w[0] ** 2 - 4.0 * w[1] ** 2 + 2.0 * w[2] ** 2)
    # compiled (eagerly the loop body dispatches op by op); 100 products are plenty for 3
    # parameters
    ev = jax.jit(lambda w: cv.max_eigenvalue(loss, w, rtol=1e-6, max_iter=100, method=method))(
        jnp.ones(3))
    assert float(ev.value) == pytest.approx(-4.0, rel=1e-4) and bool(ev.converged)


def test_lanczos_stops_exactly_when_the_krylov_space_closes():
    # a diagonal Hessian with 2 distinct eigenvalues: the space closes after 2 products
    loss = lambda w: 0.5 * (3.0 * jnp.sum(w[:3] ** 2) + 1.0 * jnp.sum(w[3:] ** 2))
    ev = cv.max_eigenvalue(loss, jnp.arange(1.0, 7.0), rtol=0.0, max_iter=50, method="lanczos",
                           v0=jnp.ones(6))
    assert bool(ev.converged) and int(ev.iterations) == 2
    assert float(ev.value) == pytest.approx(3.0, rel=1e-6)


def test_warm_start_converges_in_fewer_iterations(mlp):
    cold = mlp.run(cv.max_eigenvalue, rtol=1e-5, max_iter=1000)
    # the next measurement, a small step later, started from the last eigenvector
    moved = jax.tree.map(lambda a: a * 1.01, mlp.params)
    warm = mlp.run(cv.max_eigenvalue, moved, rtol=1e-5, max_iter=1000, v0=cold.vector)
    again = mlp.run(cv.max_eigenvalue, moved, rtol=1e-5, max_iter=1000)
    assert bool(warm.converged) and bool(again.converged)
    assert int(warm.iterations) < int(again.iterations) / 2, (warm.iterations, again.iterations)
    assert float(warm.value) == pytest.approx(float(again.value), rel=1e-3)


def test_max_iter_caps_the_iterations_and_says_unconverged(mlp):
    ev = mlp.run(cv.max_eigenvalue, rtol=0.0, max_iter=3)
    assert int(ev.iterations) == 3 and not bool(ev.converged)


def test_exact_trace_is_the_dense_trace_with_rows(mlp, dense):
    assert mlp.flat.size <= 64  # the default exact_below
    t = mlp.run(cv.trace, segments=mlp.segments)
    assert float(t.value) == pytest.approx(np.trace(dense), rel=1e-5)
    assert float(t.stderr) == 0
    want_rows = [np.trace(dense[np.ix_(i, i)]) for i in mlp.row_indices()]
    np.testing.assert_allclose(np.asarray(t.rows), want_rows, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(t.rows_stderr), 0)


def test_hutchinson_lands_within_3_se_and_its_se_shrinks_like_one_over_root_n(mlp, dense):
    exact = np.trace(dense)
    few = mlp.run(cv.trace, samples=250, exact_below=0, chunk=125,
                   key=jax.random.key(7))
    many = mlp.run(cv.trace, samples=1000, exact_below=0, chunk=125,
                    key=jax.random.key(8), segments=mlp.segments)
    for t in (few, many):
        assert abs(float(t.value) - exact) <= 3 * float(t.stderr), (t.value, t.stderr, exact)
    assert float(few.stderr) / float(many.stderr) == pytest.approx(2, rel=0.25)
    # per row: each block's trace within 3 of its standard errors; the rows never exceed the
    # parameters (no row here is a normalization layer, so they sum to the whole trace)
    want_rows = np.array([np.trace(dense[np.ix_(i, i)]) for i in mlp.row_indices()])
    assert np.all(np.abs(np.asarray(many.rows) - want_rows) <= 3 * np.asarray(many.rows_stderr))
    assert sum(len(i) for i in mlp.row_indices()) == mlp.flat.size
    assert float(np.sum(many.rows)) == pytest.approx(float(many.value), rel=1e-5)


def test_row_traces_of_a_scanned_stack_match_the_dense_blocks(scanned):
    assert any(i is not None for seg in scanned.segments for _, i in seg)
    h = scanned.dense()
    t = scanned.run(cv.trace, segments=scanned.segments, exact_below=10_000)
    want_rows = [np.trace(h[np.ix_(i, i)]) for i in scanned.row_indices()]
    np.testing.assert_allclose(np.asarray(t.rows), want_rows, rtol=1e-4, atol=1e-6)
    # the diagonal nearly cancels here: float32 sums are exact to ~1e-7 of Σ|H_ii|
    assert float(t.value) == pytest.approx(np.trace(h), abs=1e-5 * np.abs(np.diag(h)).sum())


@pytest.mark.parametrize("name", ["mlp", "scanned"])
def test_block_max_eigenvalues_are_the_dense_blocks_eigenvalues(name, request):
    problem = request.getfixturevalue(name)
    h = problem.dense()
    got = problem.run(cv.block_max_eigenvalues, segments=problem.segments,
                                   rtol=1e-6, max_iter=2000, chunk=2)
    assert got.value.shape == (len(problem.segments),)
    assert np.all(np.asarray(got.converged))
    for r, idx in enumerate(problem.row_indices()):
        assert float(got.value[r]) == pytest.approx(_top(h[np.ix_(idx, idx)]), rel=1e-3), r
        # row r's eigenvector lives on row r only
        v = problem.ravel(jax.tree.map(lambda a: a[r], got.vector))
        outside = np.ones(v.size, bool)
        outside[idx] = False
        assert np.all(v[outside] == 0) and np.linalg.norm(v) == pytest.approx(1, rel=1e-5)
    warm = problem.run(cv.block_max_eigenvalues, segments=problem.segments,
                                    rtol=1e-6, max_iter=2000, v0=got.vector)
    assert np.all(np.asarray(warm.iterations) <= 3)


def test_everything_runs_under_jit(mlp, dense):
    @jax.jit
    def measure(params, key):
        ev = cv.max_eigenvalue(mlp.loss, params, key=key)
        t = cv.trace(mlp.loss, params, samples=8, exact_below=0, key=key,
                     segments=mlp.segments)
        blocks = cv.block_max_eigenvalues(mlp.loss, params, mlp.segments, key=key)
        return ev.value, t, blocks.value, cv.edge_of_stability(ev.value, 0.1)

    ev, t, blocks, eos = measure(mlp.params, jax.random.key(0))
    assert float(ev) == pytest.approx(_top(dense), rel=1e-3)
    assert np.isfinite(float(t.value)) and float(t.stderr) > 0 and t.rows.shape == (3,)
    assert blocks.shape == (3,) and float(eos) == pytest.approx(float(ev) * 0.05)


@cpu_only  # the residual barrier, a custom_jvp, exists on CPU only
def test_hvp_passes_the_barrier_of_gradflows_residual_cnn():
    model = gf.models.cnn("residual", 4, width=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    problem = Problem(model, x, jnp.arange(4))
    jaxpr = jax.make_jaxpr(problem.loss)(problem.params)
    assert "custom_jvp_call" in str(jaxpr) and not has_custom_vjp(jaxpr.jaxpr)  # forward mode
    v = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size), a.shape),
                     problem.params)
    h = jax.jit(lambda p, d: cv.hvp(problem.loss, p, d))
    got_tree = h(problem.params, v)
    got = problem.ravel(got_tree)
    # reference: reverse-over-reverse, a different transform of the same loss (through the
    # barrier's transposed tangent). (No float64 here: materialize's barrier needs float32
    # bits; no finite differences: ReLU kinks.)
    want = problem.ravel(jax.jit(lambda p: jax.vjp(jax.grad(problem.loss), p)[1](v)[0])(
        problem.params))
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    u = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size + 1), a.shape),
                     problem.params)
    hu = h(problem.params, u)
    assert float(cv.vdot(u, got_tree)) == pytest.approx(float(cv.vdot(v, hu)), rel=1e-4)
    ev = problem.run(cv.max_eigenvalue)
    assert np.isfinite(float(ev.value)) and bool(ev.converged)


def test_hvp_passes_a_custom_vjp_that_forward_mode_cannot():
    @jax.custom_vjp
    def soft(x):
        return jnp.tanh(x)

    soft.defvjp(lambda x: (soft(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))
    loss = lambda w: jnp.sum(soft(w * w) ** 2)
    w, v = jnp.array([0.3, -0.7, 1.1]), jnp.array([1.0, 2.0, -1.0])
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(jax.grad(loss), (w,), (v,))
    plain = lambda w: jnp.sum(jnp.tanh(w * w) ** 2)
    np.testing.assert_allclose(cv.hvp(loss, w, v), jax.hessian(plain)(w) @ v, rtol=1e-5)


def test_a_loss_without_curvature_gives_nan_not_zero(mlp):
    # the parameters reach the loss only through jnp.round: autodiff sees H v = 0
    rounded = lambda p: jnp.mean(jnp.round(nnx.merge(mlp.graphdef, p, mlp.rest)(mlp.x)) ** 2)

    def run(fn, **kw):  # compiled, as Problem.run (eagerly each op would compile on its own)
        return jax.jit(lambda p: fn(rounded, p, **kw))(mlp.params)

    ev = run(cv.max_eigenvalue)
    assert np.isnan(float(ev.value)) and not bool(ev.converged) and int(ev.iterations) == 1
    assert np.all(np.isfinite(np.asarray(ravel_pytree(ev.vector)[0])))
    ev = run(cv.max_eigenvalue, method="lanczos")
    assert np.isnan(float(ev.value)) and not bool(ev.converged) and int(ev.iterations) == 1
    blocks = run(cv.block_max_eigenvalues, segments=mlp.segments)
    assert np.all(np.isnan(np.asarray(blocks.value)))
    for exact_below in (64, 0):
        t = run(cv.trace, segments=mlp.segments, exact_below=exact_below)
        assert np.isnan(float(t.value)) and np.isnan(float(t.stderr))
        assert np.all(np.isnan(np.asarray(t.rows)))
    # a zero trace with curvature present is a number: w0 * w1 has trace 0
    t = cv.trace(lambda w: w[0] * w[1], jnp.ones(2))
    assert float(t.value) == 0


def test_a_non_scalar_loss_is_a_one_line_error(mlp):
    per_example = lambda p: nnx.merge(mlp.graphdef, p, mlp.rest)(mlp.x).sum(-1)
    for fn in (cv.max_eigenvalue, cv.trace):
        with pytest.raises(ValueError, match=r"scalar loss.*shape \(16,\)") as err:
            fn(per_example, mlp.params)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="scalar loss"):
        cv.hvp(lambda p: (mlp.loss(p), 0.0), mlp.params, mlp.params)


def test_bad_arguments_are_one_line_errors(mlp):
    with pytest.raises(ValueError, match="max_iter"):
        mlp.run(cv.max_eigenvalue, max_iter=0)
    with pytest.raises(ValueError, match="method must be one of power, lanczos"):
        mlp.run(cv.max_eigenvalue, method="arnoldi")
    with pytest.raises(ValueError, match="samples"):
        mlp.run(cv.trace, samples=1, exact_below=0)
    with pytest.raises(ValueError, match="lr"):
        cv.edge_of_stability(1.0, 0.0)


def test_edge_of_stability_is_sharpness_over_two_over_lr():
    assert float(cv.edge_of_stability(40.0, 0.05)) == pytest.approx(1.0)
    assert float(cv.edge_of_stability(10.0, 0.1)) == pytest.approx(0.5)
    assert np.isnan(float(cv.edge_of_stability(jnp.nan, 0.1)))


def test_unrolled_loops_give_the_while_loops_results(mlp):
    for kw in (dict(rtol=1e-2, max_iter=6), dict(rtol=0.0, max_iter=3)):
        loop = mlp.run(cv.max_eigenvalue, **kw)
        flat = mlp.run(cv.max_eigenvalue, unroll=True, **kw)
        assert int(flat.iterations) == int(loop.iterations)
        assert bool(flat.converged) == bool(loop.converged)
        assert float(flat.value) == pytest.approx(float(loop.value), rel=1e-5)
    kw = dict(rtol=1e-2, max_iter=4, method="lanczos")
    loop, flat = mlp.run(cv.max_eigenvalue, **kw), mlp.run(cv.max_eigenvalue, unroll=True, **kw)
    assert (int(flat.iterations), bool(flat.converged)) == (int(loop.iterations),
                                                            bool(loop.converged))
    assert float(flat.value) == pytest.approx(float(loop.value), rel=1e-5)
    kw = dict(samples=6, chunk=3, exact_below=0, segments=mlp.segments)
    loop, flat = mlp.run(cv.trace, **kw), mlp.run(cv.trace, unroll=True, **kw)
    np.testing.assert_allclose(np.asarray(flat.rows), np.asarray(loop.rows), rtol=1e-5)
    assert float(flat.stderr) == pytest.approx(float(loop.stderr), rel=1e-5)
    kw = dict(segments=mlp.segments, rtol=1e-3, max_iter=4, chunk=2)
    loop = mlp.run(cv.block_max_eigenvalues, **kw)
    flat = mlp.run(cv.block_max_eigenvalues, unroll=True, **kw)
    np.testing.assert_array_equal(np.asarray(flat.iterations), np.asarray(loop.iterations))
    np.testing.assert_allclose(np.asarray(flat.value), np.asarray(loop.value), rtol=1e-5)


def test_converged_means_a_small_residual_not_a_small_last_change():
    """H = diag(1, -1, 0.5) from v0 = (0.8, 0.4, 0.45): power iteration's Rayleigh quotient
    settles at (0.8² - 0.4²) / (0.8² + 0.4²) = 0.6, no eigenvalue, so its last change vanishes
    while ‖Hv - θv‖ stays about 0.8: it must not report convergence. Lanczos closes the
    3-dimensional Krylov space and is exact."""
    h = jnp.array([1.0, -1.0, 0.5])
    loss = lambda w: 0.5 * jnp.sum(h * w ** 2)
    v0 = jnp.array([0.8, 0.4, 0.45])
    power = cv.max_eigenvalue(loss, jnp.zeros(3), v0=v0, method="power", max_iter=40)
    assert float(power.value) == pytest.approx(0.6, abs=1e-4) and not bool(power.converged)
    lanczos = cv.max_eigenvalue(loss, jnp.zeros(3), v0=v0, method="lanczos", max_iter=40)
    assert bool(lanczos.converged) and abs(float(lanczos.value)) == pytest.approx(1.0, rel=1e-5)
