"""Probes: on a throwaway copy of a model (merged inside the trace), weight layers, Activation
modules and scanned Stacks are given a probed class that reports to the current Recorder.

The user's model object is never modified, parameter paths are unchanged, and the user edits
no code: any `nnx.Linear`, `nnx.Conv` or `nnx.ConvTranspose` is found by walking the graph.
"""
from __future__ import annotations

import jax
from flax import nnx

from ..models.freeze import is_frozen
from .intercept import swap_call
from ..models.layers import Activation
from ..models.stack import Stack
from .recorder import Recorder, Row, current, path_name, recording

WEIGHT_LAYERS = (nnx.Linear, nnx.Conv, nnx.ConvTranspose)


def module_paths(model) -> dict[int, tuple]:
    return {id(m): tuple(path) for path, m in nnx.iter_modules(model)}


def use_batch_statistics(model) -> None:
    """Puts every BatchNorm of `model` (a copy!) in training mode, except frozen ones, which
    run in inference mode in training too (gradflow.freeze)."""
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.BatchNorm) and not is_frozen(m):
            m.use_running_average = False


def install_probes(model) -> None:
    """Swaps probed classes into `model`'s modules (a throwaway copy!)."""
    for _, m in nnx.iter_modules(model):
        call = _probe_call_for(m)
        if call is not None:
            swap_call(m, "probed", _reporting(call))


def run_probed(model, x, dummies):
    """Calls a model copy with probes installed; returns (output, recorder)."""
    rec = Recorder(dummies, module_paths(model))
    install_probes(model)
    with recording(rec):
        out = model(x)
    return out, rec


def _probe_call_for(m):
    if isinstance(m, WEIGHT_LAYERS):
        return _weight_call
    if isinstance(m, Activation):
        return _activation_call
    if isinstance(m, Stack) and m.scan:
        return _stack_call
    return None


_HOOKS: dict = {}


def _reporting(call):
    """A swap_call hook that runs `call` with the current Recorder, or the original without one."""
    if call not in _HOOKS:
        def hook(self, original, *args, **kwargs):
            rec = current()
            if rec is None:
                return original(self, *args, **kwargs)
            return call(self, rec, original, *args, **kwargs)
        _HOOKS[call] = hook
    return _HOOKS[call]


def _weight_call(self, rec: Recorder, original, x, *args, **kwargs):
    return rec.weight_layer(self, x, original(self, x, *args, **kwargs))


def _activation_call(self, rec: Recorder, original, x):
    a = original(self, x)
    rec.activation(a)
    return a


def _stack_call(self, rec: Recorder, original, x):
    """Scans the stacked block with a fresh Recorder per iteration; rows come out block by block."""
    graphdef, state = nnx.split(self.block)
    stack_path = rec.paths[id(self)]

    def run_block(block_state, x, dummies):
        block = nnx.merge(graphdef, block_state)
        y, sub = run_probed(block, x, dummies)
        return y, nnx.state(block), sub

    found = {}

    def discover(block_state, x):
        y, _, found["sub"] = run_block(block_state, x, None)
        return y

    jax.eval_shape(discover, jax.tree.map(lambda a: a[0], state), x)
    inner, per_block = found["sub"], len(found["sub"].rows)
    dummies = rec.take_dummies(self.n * per_block)
    if dummies is not None:
        dummies = dummies.reshape(self.n, per_block, *dummies.shape[1:])

    def body(x, slices):
        block_state, d = slices
        y, new_state, sub = run_block(block_state, x, d)
        return y, (new_state, sub.act_stats())

    y, (new_state, acts) = jax.lax.scan(body, x, (state, dummies))
    nnx.update(self.block, new_state)
    names = inner.unique_names()
    rows = [Row(path_name(stack_path + ("blocks", i)) + "/" + name,
                stack_path + ("block",) + r.kernel_path, i)
            for i in range(self.n) for name, r in zip(names, inner.rows)]
    rec.stacked(rows, acts.reshape(self.n * per_block, 3), inner.saw_activation)
    return y
