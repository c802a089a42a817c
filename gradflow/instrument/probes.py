"""Probes: on a throwaway copy of a model (merged inside the trace), the modules gradflow knows how
to measure (`registry.kind_of`) are given a probed class that reports to the current Recorder.

The user's model object is never modified, parameter paths are unchanged, and the user edits
no code.

Weight layers are probed on `__call__` and on the methods their `registry.WeightKind` lists
(an Embed's `attend`); each call is a row, whatever extra arguments it takes (e.g. the
`out_sharding=` that nnx.MultiHeadAttention passes to its LinearGeneral projections, or an
Einsum's `einsum_str`).

BatchNorm: in a probe and in instrumented or bare training, every BatchNorm runs on batch
statistics, as in training, except a frozen one: in inference mode (`use_running_average is
True`) and holding no trainable `nnx.Param` (scale and bias absent, or another Variable type, as
`gf.freeze_batchnorm` leaves them). A frozen BatchNorm stays in inference mode.
"""
from __future__ import annotations

import inspect

from flax import nnx

from .intercept import swap_call
from .recorder import Recorder, Row, UnreachableLayer, current, path_name, recording
from .registry import ACTIVATION, ScannedStack, kind_of, weight_kind
from .transforms import Scope, intercepted, scan_recorded


def module_paths(model) -> dict[int, tuple]:
    """Where every module of `model` lives.

    Args:
      model: an NNX model.

    Returns:
      {id(module): its attribute path from `model`}.
    """
    return {id(m): tuple(path) for path, m in nnx.iter_modules(model)}


def is_frozen_batchnorm(m) -> bool:
    """True for a BatchNorm in inference mode that holds no trainable `nnx.Param`.

    Args:
      m: any module.

    Returns:
      Whether `m` is an `nnx.BatchNorm` with `use_running_average is True` whose scale and
      bias are absent or not `nnx.Param` (as `gf.freeze_batchnorm` leaves them).

    Example::

      bn = nnx.BatchNorm(4, use_running_average=True, use_scale=False, use_bias=False,
                         rngs=nnx.Rngs(0))
      assert is_frozen_batchnorm(bn)
    """
    return (isinstance(m, nnx.BatchNorm) and m.use_running_average is True
            and not any(isinstance(getattr(m, k, None), nnx.Param) for k in ("scale", "bias")))


def use_batch_statistics(model) -> None:
    """Puts every BatchNorm of `model` (a copy!) in training mode, except frozen ones.

    Args:
      model: a throwaway copy of the model; its BatchNorms are changed in place.

    Returns:
      None. A frozen BatchNorm (`is_frozen_batchnorm`) stays in inference mode.

    Example::

      model = nnx.merge(graphdef, params, rest, copy=True)
      use_batch_statistics(model)
    """
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.BatchNorm) and not is_frozen_batchnorm(m):
            m.use_running_average = False


def install_probes(model) -> None:
    """Swaps probed classes into `model`'s weight layers and registered modules.

    Args:
      model: a throwaway copy of the model (its modules' classes are replaced).

    Returns:
      None. Calls made while a Recorder is current (`recording`) report to it; others run
      unchanged.

    Example::

      install_probes(copy)
      with recording(rec):
        out = copy(x)
    """
    for _, m in nnx.iter_modules(model):
        if _probe_call_for(m) is not None:
            swap_call(m, "probed", _hook)
            _probe_methods(m)


def _probe_methods(m) -> None:
    """Gives a probed weight layer's class (the cached subclass `swap_call` made) probed
    versions of its kind's other methods, e.g. `Embed.attend`."""
    kind, cls = weight_kind(m), type(m)
    if kind is None or getattr(cls, "_gradflow_tag", None) != "probed":
        return
    for name in kind.methods:
        if name not in vars(cls):
            setattr(cls, name, _method_hook(name, getattr(cls, name)))


def _method_hook(name: str, original):
    def method(self, *args, **kwargs):
        rec = current()
        out = original(self, *args, **kwargs)
        if rec is None:
            return out
        return rec.weight_layer(self, _first_input(original, args, kwargs), out, method=name)

    method.__name__ = name
    return method


def _first_input(fn, args, kwargs):
    """The first argument after `self` of a call `fn(self, *args, **kwargs)`: the layer's input,
    passed positionally or by name."""
    if args:
        return args[0]
    return kwargs[list(inspect.signature(fn).parameters)[1]]


def run_probed(model, call, dummies):
    """Runs `call(model)` on a model copy with probes installed, and with JAX's loops and remat
    intercepted (`transforms.intercepted`) so that layers they run are rows too.

    Args:
      model: a throwaway copy of the model.
      call: `call(model) -> output`, e.g. `lambda m: m(x)`.
      dummies: the (n_rows, 2) error-tap inputs, or None while discovering rows.

    Returns:
      `(output, recorder)`.

    Example::

      out, rec = run_probed(nnx.merge(graphdef, params, rest, copy=True), lambda m: m(x), None)
      names = rec.unique_names()
    """
    rec = Recorder(dummies, module_paths(model), Scope(model=model))
    install_probes(model)
    with intercepted(), recording(rec):
        out = call(model)
    return out, rec


def _probe_call_for(m):
    kind = kind_of(m)
    if kind == "weight":
        return _weight_call
    if kind == ACTIVATION:
        return _activation_call
    if isinstance(kind, ScannedStack):
        return lambda self, rec, original, x, *args, **kwargs: _stack_call(
            kind, self, rec, x, args, kwargs)
    return None


def _hook(self, original, *args, **kwargs):
    """The probed classes' `__call__`: the probe call with the current Recorder, or the
    original call without one."""
    rec = current()
    call = _probe_call_for(self) if rec is not None else None
    if call is None:
        return original(self, *args, **kwargs)
    return call(self, rec, original, *args, **kwargs)


def _weight_call(self, rec: Recorder, original, *args, **kwargs):
    z = original(self, *args, **kwargs)
    return rec.weight_layer(self, _first_input(original, args, kwargs), z)


def _activation_call(self, rec: Recorder, original, *args, **kwargs):
    a = original(self, *args, **kwargs)
    rec.activation(a)
    return a


def _stack_call(spec: ScannedStack, self, rec: Recorder, x, args=(), kwargs=None):
    """Scans the stacked block with a fresh Recorder per iteration; rows come out block by block.
    Arguments after the carried `x` (a mask, `deterministic=`) go to every block unchanged."""
    kwargs = kwargs or {}
    block_module, n = spec.block(self), spec.length(self)
    stack_path, block_path = rec.paths.get(id(self)), rec.paths.get(id(block_module))
    if stack_path is None or block_path is None:
        raise UnreachableLayer(type(self).__name__)
    graphdef, state = nnx.split(block_module)

    def step(x, block_state, dummies):
        block = nnx.merge(graphdef, block_state)
        y, sub = run_probed(block, lambda b: b(x, *args, **kwargs), dummies)
        return y, nnx.state(block), sub

    y, new_state, inner, acts = scan_recorded(rec, step, x, state, n)
    per_block = len(inner.rows)
    nnx.update(block_module, new_state)
    if spec.names is None:
        prefix = lambda i: block_path + (i,)
    else:
        prefix = lambda i: stack_path + tuple(spec.names(i))
    names = inner.unique_names()
    rows = [Row(path_name(prefix(i)) + "/" + name, block_path + r.kernel_path, i)
            for i in range(n) for name, r in zip(names, inner.rows)]
    rec.stacked(rows, acts.reshape(n * per_block, 3), inner.saw_activation)
    return y
