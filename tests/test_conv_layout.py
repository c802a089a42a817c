"""`canonical_convs`: every convolution, also inside loops, branches and calls, rewritten into
XLA:CPU's canonical layout, with the same results."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gradflow.conv_layout import canonical_convs, has_custom_vjp

KEY = jax.random.key(0)
X = jax.random.normal(KEY, (4, 3, 9, 9))  # NCHW
W = jax.random.normal(jax.random.key(1), (6, 3, 3, 3)) * 0.3  # OIHW
WG = jax.random.normal(jax.random.key(2), (6, 1, 3, 3)) * 0.3  # 3 groups of 1 -> 2


def _convs(x, w, wg):
    """Convolutions in several layouts, strides, dilations and groups, and their gradients
    (whose dimension numbers JAX derives: the weight gradient contracts over the batch)."""
    def loss(x, w, wg):
        a = lax.conv_general_dilated(x, w, (2, 1), "SAME", rhs_dilation=(1, 2),
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
        b = lax.conv_general_dilated(jnp.transpose(x, (0, 2, 3, 1)), jnp.transpose(wg, (2, 3, 1, 0)),
                                     (1, 1), "VALID", feature_group_count=3,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(a) ** 2) + jnp.sum(jnp.tanh(b))
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w, wg)


def _in_control_flow(x, w, wg):
    def body(i, carry):
        x, acc = carry
        val, (gx, gw, gwg) = jax.jit(_convs)(x, w, wg)
        return x - 0.01 * gx, acc + val + jnp.sum(gw) + jnp.sum(gwg)
    x, acc = lax.fori_loop(0, 2, body, (x, 0.0))
    ys = lax.map(lambda xi: _convs(xi[None], w, wg)[0], x)
    branch = lax.cond(acc > 0, lambda: _convs(x, w, wg)[0], lambda: 0.0)
    return acc, ys, branch


def _conv_dimension_numbers(jaxpr, found):
    for eqn in jaxpr.eqns:
        if eqn.primitive is lax.conv_general_dilated_p:
            found.append(eqn.params["dimension_numbers"])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            _conv_dimension_numbers(sub, found)
    return found


def test_same_results_inside_loops_branches_and_calls():
    want = jax.jit(_in_control_flow)(X, W, WG)
    got = jax.jit(canonical_convs(_in_control_flow))(X, W, WG)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=1e-5)


def test_every_convolution_is_canonical_at_every_depth():
    before = _conv_dimension_numbers(jax.make_jaxpr(_in_control_flow)(X, W, WG).jaxpr, [])
    after = _conv_dimension_numbers(
        jax.make_jaxpr(canonical_convs(_in_control_flow))(X, W, WG).jaxpr, [])
    canonical = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    assert len(after) == len(before) >= 8  # nothing dropped, nothing added
    assert any(dn != canonical for dn in before)  # there was something to rewrite
    assert all(dn == canonical for dn in after)


def test_pytrees_in_and_out_and_no_convolution():
    f = lambda d: {"s": jnp.sin(d["a"]) * d["b"], "t": (d["a"] + 1,)}
    d = {"a": jnp.arange(3.0), "b": jnp.float32(2)}
    assert jax.tree.all(jax.tree.map(lambda p, q: bool(jnp.all(p == q)), canonical_convs(f)(d), f(d)))


def test_has_custom_vjp_at_any_depth():
    @jax.custom_vjp
    def ident(x):
        return x

    ident.defvjp(lambda x: (x, None), lambda _, g: (g,))
    nested = lambda x: lax.cond(x[0] > 0, lambda: jax.jit(ident)(x), lambda: x).sum()
    assert has_custom_vjp(jax.make_jaxpr(nested)(jnp.ones(2)).jaxpr)
    assert not has_custom_vjp(jax.make_jaxpr(lambda x: jax.nn.relu(x).sum())(jnp.ones(2)).jaxpr)


def test_gradflows_steps_rewrite_the_convolutions_of_a_scanned_cnn():
    import optax
    from flax import nnx

    import gradflow as gf
    from gradflow.instrument.steps import layout_for, train_steps
    from gradflow.losses import LOSSES

    x, y = jnp.ones((2, 8, 8, 3)), jnp.arange(2)
    canonical = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    for stack, rewritten in (("scan", True), ("unrolled", False)):
        model = gf.models.cnn("residual", 10, width=4, stack=stack, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx = optax.sgd(0.1)
        _, bare = train_steps(graphdef, layout_for(graphdef, params, rest, x),
                              *LOSSES["cross_entropy"], tx)
        args = (params, rest, tx.init(params), x, y)
        dns = _conv_dimension_numbers(jax.make_jaxpr(bare)(*args).jaxpr, [])
        derived = _conv_dimension_numbers(jax.make_jaxpr(bare.__wrapped__.__wrapped__)(*args).jaxpr, [])
        assert len(dns) == len(derived) and any(dn != canonical for dn in derived)
        # scanned: every convolution rewritten; unrolled: left to XLA, which lays out top-level ones
        assert all(dn == canonical for dn in dns) is rewritten


def test_the_documented_user_loop_recipe_for_a_scanned_cnn():
    """docs/limitations.md: a user's pure jitted step through gf.value_and_grad, wrapped in
    `canonical_convs`, gives the unwrapped step's loss, gradients and measurements, with every
    convolution in the canonical layout."""
    import optax
    from flax import nnx

    import gradflow as gf

    x, y = jax.random.normal(jax.random.key(0), (2, 8, 8, 3)), jnp.arange(2)
    model = gf.models.cnn("residual", 6, width=4, stack="scan", rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    grad_fn = gf.value_and_grad(
        lambda m, x, y: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())

    def step(state, x, y):
        loss, grads, snap = grad_fn(nnx.merge(graphdef, state), x, y)
        return loss, grads, snap

    wrapped = canonical_convs(step)
    canonical = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    dns = _conv_dimension_numbers(jax.make_jaxpr(wrapped)(state, x, y).jaxpr, [])
    assert dns and all(dn == canonical for dn in dns)
    want, got = jax.jit(step)(state, x, y), jax.jit(wrapped)(state, x, y)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=1e-7)
