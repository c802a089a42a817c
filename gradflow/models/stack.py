"""A run of identical blocks, applied one after another, unrolled or with `lax.scan`.

Unrolled keeps one module per block (fast convolutions on CPU, compile time grows with depth);
scanned keeps one block whose parameters carry a leading axis of length `n` (compile time flat
in depth; XLA:CPU runs conv weight-gradients inside loops slowly, jax-ml/jax#12868). Both give
the same parameter paths up to that axis, so names and results agree between them.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from ..instrument import register_scanned_stack


# Scanned rows are named `<stack>/blocks/<i>/...`, as the unrolled stack's modules are.
@register_scanned_stack(block=lambda m: m.block, length=lambda m: m.n, scanned=lambda m: m.scan,
                        names=lambda i: ("blocks", i))
class Stack(nnx.Module):
    """`n` blocks made by `make_block(rngs)`; `scan=True` stacks their parameters on axis 0.

    Registered with `gradflow.instrument.register_scanned_stack`, so a scanned stack is measured
    layer by layer and named like the unrolled one.

    Args:
      make_block: `make_block(rngs)` returns one block (a module mapping x to x).
      n: the number of blocks.
      scan: True: one block module (`.block`) whose arrays have a leading axis of length `n`,
        applied with `jax.lax.scan`; False: `n` modules in `.blocks`.
      rngs: the `nnx.Rngs` the blocks are initialized from.

    Example:
      >>> make = lambda rngs: nnx.Linear(8, 8, rngs=rngs)
      >>> stack = gf.models.Stack(make, 4, scan=False, rngs=nnx.Rngs(0))
      >>> stack(jnp.ones((2, 8))).shape, len(stack.blocks)
      ((2, 8), 4)
      >>> scanned = gf.models.Stack(make, 4, scan=True, rngs=nnx.Rngs(0))  # doctest: +SKIP
      >>> scanned.block.kernel.shape  # doctest: +SKIP
      (4, 8, 8)
    """

    def __init__(self, make_block: Callable[[nnx.Rngs], nnx.Module], n: int, *, scan: bool, rngs):
        self.n = n
        self.scan = scan
        if scan:
            keys = jax.random.split(rngs.params(), n)
            self.block = _stacked(make_block, keys)
        else:
            self.blocks = nnx.List([make_block(rngs) for _ in range(n)])

    def __call__(self, x):
        if not self.scan:
            for block in self.blocks:
                x = block(x)
            return x
        graphdef, state = nnx.split(self.block)

        def body(x, block_state):
            block = nnx.merge(graphdef, block_state)
            x = block(x)
            return x, nnx.state(block)

        x, new_state = jax.lax.scan(body, x, state)
        nnx.update(self.block, new_state)
        return x


def _stacked(make_block, keys) -> nnx.Module:
    """One block module whose every array has a leading axis, one entry per key."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: make_block(nnx.Rngs(0))))
    states = jax.vmap(lambda k: nnx.state(make_block(nnx.Rngs(params=k))))(keys)
    return nnx.merge(graphdef, states)
