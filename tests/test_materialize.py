"""materialize: an exact identity (values and gradients) that XLA:CPU cannot fuse through."""
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import gradflow as gf
from _backend import cpu_only
from gradflow.models.materialize import materialize


def test_value_and_gradient_are_exact_identities_including_non_finite():
    x = jnp.array([[0.0, -0.0, 1.5, -2.0], [jnp.nan, jnp.inf, -jnp.inf, 1e-38]])
    for first in (0.0, -0.0, jnp.nan, -1.0):  # the predicate reads element 0's bits
        v = x.at[0, 0].set(first)
        out, vjp = jax.vjp(materialize, v)
        np.testing.assert_array_equal(np.asarray(out).view(np.int32), np.asarray(v).view(np.int32))
        g = v[::-1] * 3.0
        (back,) = vjp(g)
        np.testing.assert_array_equal(np.asarray(back).view(np.int32),
                                      np.asarray(g).view(np.int32))
    assert materialize(jnp.zeros((0, 3))).shape == (0, 3)


def _compiled_text(model, x):
    def loss(m):
        return jnp.sum(m(x) ** 2)

    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s: nnx.grad(loss)(nnx.merge(graphdef, s)))
    return fn.lower(state).compile().as_text()


@cpu_only  # the barrier is inserted on CPU only (materialize.py): nothing to count elsewhere
def test_residual_stream_is_computed_once_per_block_on_cpu():
    """Without the barrier the fused op computing block k's stream repeats all k-1 earlier BNs;
    with it, fused computations stay the same size at any depth."""
    depth = 14
    model = gf.models.cnn("residual_bn", depth, width=4, rngs=nnx.Rngs(0), stack="unrolled")
    text = _compiled_text(model, jnp.ones((2, 8, 8, 3)))
    blocks = sum(isinstance(m, gf.models.ResidualBlock) for _, m in nnx.iter_graph(model))
    # one conditional forward and one backward per block: XLA did not fold the predicate
    assert len(re.findall(r"\bconditional\(", text)) == 2 * blocks
    sizes = [body.count("\n") for body in re.split(r"\n(?=\S)", text)
             if body.startswith("%fused_computation")]
    assert max(sizes) < 80, max(sizes)  # 53 with the barrier; 154 without it at this depth
