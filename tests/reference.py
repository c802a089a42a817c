"""Independent references for the instrumentation tests.

`reference_probe` uses none of gradflow's instrumentation: it patches `nnx.Linear`/`nnx.Conv`
calls on an unrolled copy to add a full-size zero perturbation to each output, and takes
`jax.grad` of the loss with respect to the parameters and those perturbations, the textbook way
to get dL/dz. A model with scanned zoo stacks (stack="scan", or "auto" off CPU) is unrolled
first (`unrolled_clone`): one module per block, holding that block's slice of the stacked arrays.
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gradflow.models import Stack


@contextlib.contextmanager
def patched_layers(on_call):
    """While active, every nnx.Linear / nnx.Conv call returns on_call(module, output)."""
    originals = {cls: cls.__call__ for cls in (nnx.Linear, nnx.Conv)}

    def make(orig):
        def call(self, x, *a, **k):
            return on_call(self, orig(self, x, *a, **k))
        return call

    try:
        for cls, orig in originals.items():
            cls.__call__ = make(orig)
        yield
    finally:
        for cls, orig in originals.items():
            cls.__call__ = orig


def reference_probe(model, x, y, loss_fn):
    """(kernel-gradient norms, ||dL/dz||) per Linear/Conv call in call order; BN in train mode."""
    model = unrolled_clone(model)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.BatchNorm):
            m.use_running_average = False
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    outputs = []  # each layer output's shape and dtype, from an abstract trace (no eager run)
    with patched_layers(lambda m, z: (outputs.append(jax.ShapeDtypeStruct(z.shape, z.dtype)),
                                      z)[1]):
        jax.eval_shape(lambda: nnx.merge(graphdef, params, rest, copy=True)(x))
    eps = [jnp.zeros(z.shape, z.dtype) for z in outputs]
    paths = []

    def objective(params, eps, rest):
        m = nnx.merge(graphdef, params, rest, copy=True)
        ids = {id(mod): tuple(p) for p, mod in nnx.iter_modules(m)}
        paths.clear()

        def on_call(mod, z):
            paths.append(ids[id(mod)])
            return z + eps[len(paths) - 1]

        with patched_layers(on_call):
            return loss_fn(m(x), y)

    g_params, g_eps = jax.jit(jax.grad(objective, argnums=(0, 1)))(params, eps, rest)
    flat = {tuple(p): v.get_value() for p, v in nnx.to_flat_state(g_params)}
    # in float64 numpy: eager jnp.linalg.norm would compile once per array shape
    norm = lambda a: float(np.linalg.norm(np.asarray(a, np.float64).ravel()))  # noqa: E731
    grad_norms = np.array([norm(flat[p + ("kernel",)]) for p in paths])
    error_norms = np.array([norm(g) for g in g_eps])
    return grad_norms, error_norms


def unrolled_clone(model):
    """A copy of `model` in which every scanned zoo Stack holds its blocks unrolled: block i is
    a module of its own with slice i of the stacked arrays, so each layer call is direct (the
    parameter paths become `<stack>/blocks/<i>/...`, as in an unrolled build)."""
    model = nnx.clone(model)
    for _, m in list(nnx.iter_modules(model)):
        if isinstance(m, Stack) and m.scan:
            graphdef, state = nnx.split(m.block)
            m.blocks = nnx.List([nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
                                 for i in range(m.n)])
            del m.block
            m.scan = False
    return model


def unrolled_copy(model, make_unrolled):
    """An unrolled model (from `make_unrolled()`) holding the weights of a scanned `model`."""
    target = make_unrolled()
    src = {tuple(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}
    state = nnx.state(target)
    for path, v in nnx.to_flat_state(state):
        path = tuple(path)
        if "blocks" in path:
            i = path.index("blocks")
            v.set_value(src[path[:i] + ("block",) + path[i + 2:]][path[i + 1]])
        else:
            v.set_value(src[path])
    nnx.update(target, state)
    return target


def noise_reference(G):
    """The four noise quantities (Cockpit's definitions) from a (B, N) float64 matrix of
    per-example gradients, written out directly."""
    B, g = len(G), G.mean(0)
    gg, P = g @ g, G @ g
    orth = G - np.outer(P / gg, g)
    return {"norm_test": np.sqrt(((G - g) ** 2).sum() / (B - 1) / B / gg),
            "inner_test": np.sqrt(P.var(ddof=1) / B / gg ** 2),
            "ortho_test": np.sqrt((orth ** 2).sum() / (B - 1) / B / gg),
            "mean_gsnr": np.mean(g ** 2 / ((G ** 2).mean(0) - g ** 2 + 1e-5))}


# A tiny batch of images and of vectors (5 classes) and the zoo's models sized for them: the
# reference tests of test_instrument.py and test_reference_norms.py share them.
TINY_X_IMG = jax.random.normal(jax.random.PRNGKey(1), (6, 8, 8, 3))
TINY_X_VEC = jax.random.normal(jax.random.PRNGKey(2), (6, 10))
TINY_Y = jnp.array([0, 1, 2, 3, 4, 0])


def tiny_zoo_model(kind, arch, stack, seed=0):
    """A depth-8 zoo CNN (width 4, 2 stages) or MLP (width 6) for the tiny batches above."""
    from gradflow import models as M
    if kind == "cnn":
        return M.cnn(arch, 8, width=4, stages=2, num_classes=5, init="he", stack=stack,
                     rngs=nnx.Rngs(seed))
    return M.mlp(arch, 8, width=6, in_features=10, num_classes=5, init="he", stack=stack,
                 rngs=nnx.Rngs(seed))
