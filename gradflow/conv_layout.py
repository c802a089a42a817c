"""Convolutions in the layout XLA:CPU's fast kernels take, inside loops too.

XLA:CPU runs a convolution on its fast (Eigen) kernels only in the canonical layout: input
batch-spatial-feature (NHWC), kernel spatial-in-out (HWIO), output NHWC. The backward passes
JAX derives are mostly not canonical (the input gradient takes the kernel as spatial-out-in,
the weight gradient contracts over the batch), and XLA:CPU transposes them into canonical form
only in the top-level computation, not inside a `while` body (JAX issue 12868). Inside
`lax.while_loop`, `lax.map` or `lax.scan` they fall back to a naive loop nest: one
Hessian-vector product of the depth-50 plain CNN took 3.6 s inside a loop against 0.11 s
straight-line (`python benchmarks/conv_layout.py`).

The same holds for a model that scans its layers: a train step of the depth-50 residual_bn CNN
with its blocks under `lax.scan` took 2.3 s, and 89 ms rewritten (89 ms unrolled;
`python benchmarks/conv_layout.py --steps`).

`canonical_convs(fn)` traces `fn` and rewrites every convolution in it, also inside the
bodies of its loops and branches, as transposes into the canonical layout, the convolution,
and a transpose back: the same numbers, the fast kernels everywhere. Equations without a
convolution in them are bound as they are. Calls (`jax.jit`, remat, custom derivative rules)
around a convolution are inlined: the rewritten function is for running, not for
differentiating further through a custom rule. `has_custom_vjp` answers, from the same walk of
a jaxpr, whether a function can be differentiated in forward mode without trying.

Layer 0: imports nothing from gradflow.
"""
from __future__ import annotations

import functools

import jax
from jax import lax
from jax.extend import core

_CONV = lax.conv_general_dilated_p


def _canonical(spec: tuple) -> tuple:
    """Where an operand's (batch, feature, spatial...) dims sit in the canonical layout:
    batch first, spatial next, feature last."""
    n = len(spec)
    return (0, n - 1, *range(1, n - 1))


def _kernel_canonical(spec: tuple) -> tuple:
    """Where the kernel's (out, in, spatial...) dims sit: spatial first, then in, then out."""
    n = len(spec)
    return (n - 1, n - 2, *range(n - 2))


def _to(x, spec: tuple, target: tuple):
    """Transposes `x`, whose (first, second, spatial...) roles sit at the dims `spec`, so that
    they sit at `target`."""
    perm = [0] * x.ndim
    for src, dst in zip(spec, target):
        perm[dst] = src
    return x if perm == list(range(x.ndim)) else lax.transpose(x, perm)


def _conv(lhs, rhs, *, dimension_numbers, **params):
    """One convolution in the canonical layout, its result in the layout asked for."""
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    canon = (_canonical(lhs_spec), _kernel_canonical(rhs_spec), _canonical(out_spec))
    if (lhs_spec, rhs_spec, out_spec) == canon:
        return _CONV.bind(lhs, rhs, dimension_numbers=dimension_numbers, **params)
    out = _CONV.bind(_to(lhs, lhs_spec, canon[0]), _to(rhs, rhs_spec, canon[1]),
                     dimension_numbers=lax.ConvDimensionNumbers(*canon), **params)
    return _to(out, canon[2], out_spec)


def _has(jaxpr, found) -> bool:
    """Whether `found(eqn)` holds for an equation of `jaxpr` or of any jaxpr inside it."""
    return any(found(eqn) or any(_has(sub, found) for sub in core.jaxprs_in_params(eqn.params))
               for eqn in jaxpr.eqns)


def _has_conv(jaxpr) -> bool:
    return _has(jaxpr, lambda eqn: eqn.primitive is _CONV)


def _conv_in_control_flow(eqn) -> bool:
    return eqn.primitive.name not in _CALLS and _has_conv_in(eqn)


def has_custom_vjp(jaxpr) -> bool:
    """Whether `jaxpr` calls a `jax.custom_vjp` function (at any depth).

    Args:
      jaxpr: a `jax.extend.core.Jaxpr`, e.g. `jax.make_jaxpr(loss)(params).jaxpr`.

    Returns:
      True if some equation is a custom_vjp call.
    """
    return _has(jaxpr, lambda eqn: "custom_vjp" in eqn.primitive.name)


def _rewrite_closed(closed):
    """A ClosedJaxpr with the same signature, its convolutions canonical."""
    if not _has_conv(closed.jaxpr):
        return closed
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype, weak_type=v.aval.weak_type)
             for v in closed.jaxpr.invars]
    return jax.make_jaxpr(functools.partial(_eval, closed.jaxpr, closed.consts))(*avals)


def _rewrite_params(params: dict) -> dict:
    """The equation's parameters with every closed sub-jaxpr (loop bodies, branches)
    rewritten."""
    def one(p):
        if isinstance(p, core.ClosedJaxpr):
            return _rewrite_closed(p)
        if isinstance(p, tuple) and p and all(isinstance(q, core.ClosedJaxpr) for q in p):
            return tuple(_rewrite_closed(q) for q in p)
        return p
    return {k: one(v) for k, v in params.items()}


def _eval(jaxpr, consts, *args):
    """Evaluates `jaxpr` with every convolution made canonical; calls (`jit`, remat, custom
    rules) are inlined, loops and branches rebuilt with rewritten bodies."""
    env = {}

    def read(v):
        return v.val if isinstance(v, core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive is _CONV:
            outvals = [_conv(*invals, **eqn.params)]
        elif not _has_conv_in(eqn):
            outvals = _bind(eqn, invals, eqn.params)
        elif (inner := _inlinable(eqn)) is not None:
            outvals = _eval(inner.jaxpr, inner.consts, *invals)
        else:
            outvals = _bind(eqn, invals, _rewrite_params(eqn.params))
        env.update(zip(eqn.outvars, outvals))
    return [read(v) for v in jaxpr.outvars]


def _bind(eqn, invals, params) -> list:
    """The equation's primitive applied as `jax.core.eval_jaxpr` applies it (with `params`
    for its own); its results as a list."""
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
    return out if eqn.primitive.multiple_results else [out]


def _has_conv_in(eqn) -> bool:
    """Whether a sub-jaxpr of the equation (a call's, a loop's body, a branch) convolves."""
    return any(_has_conv(sub) for sub in core.jaxprs_in_params(eqn.params))


_CALLS = ("pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call",
          "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin")


def _inlinable(eqn):
    """The ClosedJaxpr an equation calls, where inlining it computes the same (a call, not a
    loop or a branch); None otherwise."""
    if eqn.primitive.name not in _CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = eqn.params.get(key)
        if isinstance(inner, core.ClosedJaxpr):
            return inner
        if isinstance(inner, core.Jaxpr) and not inner.constvars:
            return core.ClosedJaxpr(inner, [])
    return None


def canonical_convs(fn, *, only_in_loops: bool = False):
    """`fn` with every convolution it computes in XLA:CPU's canonical layout (see the module
    docstring); for what runs inside `lax.while_loop`, `lax.map` or `lax.scan`, or for a whole
    step whose model scans its layers.

    Args:
      fn: a function of pytrees of arrays returning a pytree of arrays.
      only_in_loops: rewrite only if some convolution sits inside a loop or a branch (then
        all of them); otherwise call `fn` as it is (XLA:CPU lays out top-level convolutions
        itself).

    Returns:
      A function with the same signature and results; it traces `fn` once per call (under
      `jax.jit`, once per compilation). Where JAX's default backend is not the CPU, `fn`
      itself (GPU and TPU compilers lay out convolutions inside loops too).
    """
    @functools.wraps(fn)
    def wrapped(*args):
        if jax.default_backend() != "cpu":
            return fn(*args)
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        if only_in_loops and not _has(closed.jaxpr, _conv_in_control_flow):
            return fn(*args)
        out = _eval(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(shape), out)
    return wrapped
