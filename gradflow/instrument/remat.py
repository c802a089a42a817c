"""Layers inside `jax.checkpoint` (`nnx.remat`, `jax.remat`): the call-time trace of a
checkpointed function (jax 0.10's `jax._src.ad_checkpoint`; however early the function was made)
runs under a Recorder of its own that takes the error-tap inputs as constants and returns its
statistics as extra outputs, which the remat primitive's bind strips and the enclosing Recorder
absorbs, so the rows are those the function would give without remat. Installed by
`transforms.intercepted`; without those internals remat stays unprobed (a fallback row set)."""
from __future__ import annotations

import threading

import jax

from .bodies import Scope, absorb, active, export, shape
from .recorder import Recorder, recording

try:
    from jax._src import ad_checkpoint as _adc
    AVAILABLE = all(hasattr(_adc, n) for n in ("_remat_static_argnums", "_trace_to_jaxpr",
                                               "remat_p"))
except ImportError:  # pragma: no cover
    _adc, AVAILABLE = None, False

_ORIGINAL = ((_adc._remat_static_argnums, _adc._trace_to_jaxpr, _adc.remat_p.bind)
             if AVAILABLE else ())
_LOCAL = threading.local()
_PENDING: dict[int, tuple] = {}  # id(jaxpr) -> what its remat bind must absorb


def install(on: bool) -> None:
    """Puts gradflow's versions in place (`on`) or JAX's back.

    Args:
      on: True to intercept, False to restore (and forget pending traces).
    """
    if not AVAILABLE:
        return
    fns = (_static_argnums, _trace_to_jaxpr, _remat_bind) if on else _ORIGINAL
    _adc._remat_static_argnums, _adc._trace_to_jaxpr, _adc.remat_p.bind = fns
    if not on:
        _PENDING.clear()


def _static_argnums(fun, static_argnums, args):
    fun_, args = _ORIGINAL[0](fun, static_argnums, args)
    _LOCAL.args = args  # the outer arguments of the trace that follows
    return fun_, args


def _trace_to_jaxpr(fun, in_tree, in_avals, debug):
    outer, _LOCAL.args = getattr(_LOCAL, "args", None), None
    rec = active()
    if rec is None or outer is None:
        return _ORIGINAL[1](fun, in_tree, in_avals, debug)
    scope = rec.scope or Scope()
    infos = [scope.lookup(a) for a in jax.tree.leaves(outer)]
    dummies = None if rec.dummies is None else rec.dummies[len(rec.rows):]
    box = {}

    def traced(*args, **kwargs):
        leaves = {id(a): (a, info) for a, info in zip(jax.tree.leaves(args), infos)
                  if info is not None}
        sub = Recorder(dummies, rec.paths, Scope(parent=rec.scope, leaves=leaves))
        with recording(sub):
            out = fun(*args, **kwargs)
        box["shape"] = shape(sub)
        return out, export(sub)

    jaxpr, consts, tree = _ORIGINAL[1](traced, in_tree, in_avals, debug)
    out_tree, extras_tree = tree.children()
    _PENDING[id(jaxpr)] = (jaxpr, rec, box["shape"], out_tree.num_leaves, extras_tree)
    return jaxpr, consts, out_tree


def _remat_bind(*args, jaxpr, **params):
    out = _ORIGINAL[2](*args, jaxpr=jaxpr, **params)
    pending = _PENDING.pop(id(jaxpr), None)
    if pending is None or pending[0] is not jaxpr:
        return out
    _, rec, shape, n_out, extras_tree = pending
    absorb(rec, shape, jax.tree.unflatten(extras_tree, list(out[n_out:])))
    return list(out[:n_out])
