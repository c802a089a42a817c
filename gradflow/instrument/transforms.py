"""Layers inside the loops and remat a model runs itself (nnx.scan, jax.lax.scan, nnx.fori_loop,
nnx.remat / jax.checkpoint): one row per layer and iteration, with no registration.

While `probes.run_probed` runs a model copy (`intercepted()`), `jax.lax.scan` and
`jax.lax.fori_loop` (static trip count) run their body with a fresh Recorder per iteration: the
error-tap inputs enter as extra `xs`, the forward statistics leave as extra `ys`. A checkpointed
function (`jax._src.ad_checkpoint`: traced at call time, however early it was made) gets the
error-tap inputs as constants and returns its statistics as extra outputs. A layer re-created in
a body is found by its weight array (`Scope`): the arrays a loop slices are slices of stacked
model weights, named `<stack>/<i>/<rest>` where `<stack>` is the outermost module all of whose
arrays the loop slices (`blocks/3/attn/query`); carried or closed-over arrays are whole weights.
The bodies of `jax.lax.while_loop` and `jax.vmap` are opaque (a layer there is unreachable) and
`jax.eval_shape` runs without probes. Everything is restored when the outermost run ends, even on
error; calls made without a current Recorder (other threads) go to JAX unchanged.
"""
from __future__ import annotations

import contextlib
import functools
import operator
import threading
from collections import Counter

import jax
import jax.numpy as jnp

from . import remat
from .bodies import Blocked, Scope, absorb, active, export, shape
from .recorder import Recorder, current, recording

_ORIGINAL = {"scan": jax.lax.scan, "fori": jax.lax.fori_loop, "while": jax.lax.while_loop,
             "eval_shape": jax.eval_shape, "vmap": jax.vmap}
_LOCK, _DEPTH = threading.RLock(), [0]


@contextlib.contextmanager
def intercepted():
    """Routes JAX's loops, remat, while_loop, vmap and eval_shape through gradflow's versions
    for the duration of the block (nestable, thread-safe).

    Returns:
      A context manager; the originals are back after the outermost block, even on error.
    """
    with _LOCK:
        if _DEPTH[0] == 0:
            _patch(_scan, _fori, _opaque_loop, _eval_shape, _vmap)
            remat.install(True)
        _DEPTH[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                _patch(*_ORIGINAL.values())
                remat.install(False)


def _patch(scan, fori, while_loop, eval_shape, vmap):
    jax.lax.scan, jax.lax.fori_loop, jax.lax.while_loop = scan, fori, while_loop
    jax.eval_shape, jax.vmap = eval_shape, vmap


def scan_recorded(rec: Recorder, step, carry, xs, length: int, *, chunks=False, **kwargs):
    """Runs `step` as a `jax.lax.scan` with a fresh Recorder per iteration (shared by registered
    stacks and intercepted loops).

    Args:
      rec: the current Recorder; the loop's rows will be its next rows.
      step: `step(carry, x, dummies) -> (carry, y, recorder of the iteration)`.
      carry, xs, length: as `jax.lax.scan` takes them.
      chunks: per-iteration chunk arrays (for `absorb`) instead of resolved statistics.
      **kwargs: further `jax.lax.scan` arguments (reverse, unroll, ...).

    Returns:
      (carry, ys, the recorder of a discovery trace of one iteration, per-iteration statistics:
      (length, rows per iteration, 3) activation stats, or the exported chunks).
    """
    found = {}

    def discover(c, x):
        c, y, found["sub"] = step(c, x, None)
        return c, y

    _ORIGINAL["eval_shape"](discover, carry, jax.tree.map(lambda a: a[0], xs))
    per = len(found["sub"].rows)
    dummies = rec.take_dummies(length * per)
    if dummies is not None:
        dummies = dummies.reshape(length, per, *dummies.shape[1:])

    def body(c, sliced):
        c, y, sub = step(c, sliced[0], sliced[1])
        return c, (y, export(sub) if chunks else sub.act_stats())

    carry, (ys, stats) = _ORIGINAL["scan"](body, carry, (xs, dummies), length=length, **kwargs)
    return carry, ys, found["sub"], stats


def _loop_infos(rec: Recorder, carry, xs, loop) -> list:
    """Per leaf of (carry, xs): what it is (`Scope.lookup`), slices of stacked weights for xs."""
    scope = rec.scope or Scope()
    infos = [scope.lookup(a) for a in jax.tree.leaves(carry)]
    sliced = [scope.lookup(a) for a in jax.tree.leaves(xs)]
    stacked = {h[0] for h in sliced if h is not None and h[1] is None}
    if stacked:
        paths = [p for _, p in scope.variables().values()]
        total = Counter(p[:k] for p in paths for k in range(1, len(p)))
        hit = Counter(p[:k] for p in stacked for k in range(1, len(p)))
        roots = {p: next((p[:k] for k in range(1, len(p)) if hit[p[:k]] == total[p[:k]]),
                         p[:-1]) for p in stacked}
    return infos + [(h[0], roots[h[0]], loop) if h is not None and h[1] is None else None
                    for h in sliced]


def _stepper(rec: Recorder, infos, fn):
    """`step` for `scan_recorded`: `fn(carry, x) -> (carry, y)` under a Recorder whose scope
    knows the body's inputs."""
    def step(c, x, d):
        leaves = {id(a): (a, info) for a, info in zip(jax.tree.leaves((c, x)), infos)
                  if info is not None}
        sub = Recorder(d, rec.paths, Scope(parent=rec.scope, leaves=leaves))
        with recording(sub):
            c, y = fn(c, x)
        return c, y, sub

    return step


def _scan(f, init, xs=None, length=None, reverse=False, unroll=1, **kwargs):
    rec = active()
    if rec is None:
        return _ORIGINAL["scan"](f, init, xs, length, reverse, unroll, **kwargs)
    n = length if length is not None else jax.tree.leaves(xs)[0].shape[0]
    loop = object()
    step = _stepper(rec, _loop_infos(rec, init, xs, loop), f)
    carry, ys, inner, stats = scan_recorded(rec, step, init, xs, n, chunks=True,
                                            reverse=reverse, unroll=unroll, **kwargs)
    absorb(rec, shape(inner), stats, loop, n)
    return carry, ys


def _fori(lower, upper, body_fun, init_val, *, unroll=None):
    rec = active()
    try:
        n = operator.index(upper) - operator.index(lower)
    except TypeError:  # a dynamic trip count: a while loop, opaque
        rec = None
    if rec is None:
        return _ORIGINAL["fori"](lower, upper, body_fun, init_val, unroll=unroll)
    loop, index = object(), jnp.arange(operator.index(lower), operator.index(upper))
    step = _stepper(rec, _loop_infos(rec, init_val, index, loop),
                    lambda c, i: (body_fun(i, c), None))
    unroll = n if unroll is True else (unroll or 1)
    carry, _, inner, stats = scan_recorded(rec, step, init_val, index, n, chunks=True,
                                           unroll=max(unroll, 1))
    absorb(rec, shape(inner), stats, loop, n)
    return carry


def _opaque(fn, rec_factory=Blocked):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if current() is None:
            return fn(*args, **kwargs)
        with recording(rec_factory()):
            return fn(*args, **kwargs)

    return run


def _opaque_loop(cond_fun, body_fun, init_val):
    if current() is None:
        return _ORIGINAL["while"](cond_fun, body_fun, init_val)
    return _ORIGINAL["while"](_opaque(cond_fun), _opaque(body_fun), init_val)


def _vmap(fun, *args, **kwargs):
    return _ORIGINAL["vmap"](_opaque(fun), *args, **kwargs)


def _eval_shape(fun, *args, **kwargs):
    return _ORIGINAL["eval_shape"](_opaque(fun, lambda: None), *args, **kwargs)


