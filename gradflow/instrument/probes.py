"""Probes: on a throwaway copy of a model (merged inside the trace), the modules gradflow knows how
to measure are given a probed class that reports to the current Recorder.

The user's model object is never modified, parameter paths are unchanged, and the user edits
no code: any `nnx.Linear`, `nnx.Conv` or `nnx.ConvTranspose` (`WEIGHT_LAYERS`) is found by
walking the graph and gets one row per call. Two more kinds of module plug in through a public
registry, the same way for gradflow's model zoo and for a user's own modules:

- `register_activation(cls)`: a call of a `cls` module is what the unit passes on; its
  act_mean / act_std / dead_frac become those of the weight layer called just before it.
  Without any registered activation module in a model, a row reports the next weight layer's
  input instead (exact for sequential networks; see recorder.py).
- `register_scanned_stack(cls, block=, length=, ...)`: a `cls` module applies one block, whose
  arrays carry a leading axis of length n, n times with `jax.lax.scan`. Probes cannot reach
  into a plain scan body, so the probe runs the scan itself and reports one row per layer and
  iteration, as if the stack were unrolled.

A user's activation module::

    import jax
    from flax import nnx
    import gradflow as gf

    @gf.instrument.register_activation
    class ShiftedReLU(nnx.Module):
      def __init__(self, shift: float):
        self.shift = shift

      def __call__(self, x):
        return jax.nn.relu(x - self.shift)

Registered classes are looked up by the module's class hierarchy: a subclass of a registered
class is measured the same way unless it is registered itself. Register at import time, next to
the class definition (registering clears gradflow's cached layouts and compiled steps).

BatchNorm: in a probe and in instrumented or bare training, every BatchNorm runs on batch
statistics, as in training, except a frozen one: in inference mode (`use_running_average is
True`) and holding no trainable `nnx.Param` (scale and bias absent, or another Variable type, as
`gf.freeze_batchnorm` leaves them). A frozen BatchNorm stays in inference mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
from flax import nnx

from .intercept import swap_call
from .recorder import Recorder, Row, UnreachableLayer, current, path_name, recording

WEIGHT_LAYERS = (nnx.Linear, nnx.Conv, nnx.ConvTranspose)

# class -> probe call(self, rec, original, *args, **kwargs), found along type(module).__mro__
_PROBES: dict[type, Callable] = {}
# callables that drop what was cached for the old registry (compiled steps register theirs)
_ON_REGISTER: list[Callable[[], None]] = []


def register_activation(cls: type) -> type:
    """Registers a module class as an activation: what a unit passes on.

    A call of a module of class `cls` (or of a subclass) reports its output's statistics
    (act_mean, act_std, dead_frac) as those of the weight layer called just before it. The call
    itself is unchanged: the output, parameters and gradients are the module's own.

    Args:
      cls: an `nnx.Module` subclass whose `__call__(x, ...)` returns the activation.

    Returns:
      `cls` itself, so this can be used as a class decorator.

    Example::

      @gf.instrument.register_activation
      class Swish(nnx.Module):
        def __call__(self, x):
          return x * jax.nn.sigmoid(x)
    """
    return _register(cls, _activation_call)


@dataclass(frozen=True)
class _ScannedStack:
    """How to reach a registered stack's stacked block, its length and whether it scans."""
    block: Callable[[Any], nnx.Module]
    length: Callable[[Any], int]
    scanned: Callable[[Any], bool] | None
    names: Callable[[int], tuple] | None

    def __call__(self, module, rec, original, x):
        return _stack_call(self, module, rec, x)


def register_scanned_stack(cls: type | None = None, *, block: Callable[[Any], nnx.Module],
                           length: Callable[[Any], int],
                           scanned: Callable[[Any], bool] | None = None,
                           names: Callable[[int], tuple] | None = None):
    """Registers a module class that applies one stacked block n times with `jax.lax.scan`.

    The block module's arrays carry a leading axis of length n; calling the stack on `x` must
    equal `block_{n-1}(... block_0(x))`, where block_i holds slice i (and its state updates,
    e.g. BatchNorm statistics, are written back). The probe runs that scan itself with probes
    inside the block, so each weight layer gets one row per iteration, with its error norm and
    activation statistics. Instances whose `scanned(module)` is False are called as they are
    (their weight layers are found directly, e.g. an unrolled variant of the same class).

    Args:
      cls: an `nnx.Module` subclass; omit it to get a class decorator.
      block: `block(module)` returns the stacked block module (an attribute of `module`).
      length: `length(module)` returns n, the number of iterations (the leading axis).
      scanned: `scanned(module)` tells whether this instance scans; default: always.
      names: `names(i)` returns the path, relative to the stack, under which rows of iteration
        i are named; default: the block's own path, then i (e.g. `stack/block/3/linear`).

    Returns:
      `cls`, or a class decorator when `cls` is omitted.

    Example::

      class Block(nnx.Module):
        def __init__(self, width, rngs):
          self.linear = nnx.Linear(width, width, rngs=rngs)
          self.act = Swish()  # a registered activation module

        def __call__(self, x):
          return self.act(self.linear(x))

      @gf.instrument.register_scanned_stack(block=lambda m: m.block, length=lambda m: m.n)
      class Repeat(nnx.Module):
        def __init__(self, width, n, rngs):
          self.n = n
          keys = jax.random.split(rngs.params(), n)
          self.block = nnx.vmap(lambda k: Block(width, nnx.Rngs(k)))(keys)

        def __call__(self, x):  # only the scan: the probe replaces this call
          graphdef, state = nnx.split(self.block)

          def body(x, s):
            block = nnx.merge(graphdef, s)
            return block(x), nnx.state(block)

          x, state = jax.lax.scan(body, x, state)
          nnx.update(self.block, state)
          return x

      # rows of a model holding `self.stack = Repeat(8, 3, rngs)`:
      # stack/block/0/linear, stack/block/1/linear, stack/block/2/linear
    """
    spec = _ScannedStack(block, length, scanned, names)
    if cls is None:
        return lambda c: _register(c, spec)
    return _register(cls, spec)


def _register(cls, call) -> type:
    if not (isinstance(cls, type) and issubclass(cls, nnx.Module)):
        raise TypeError(f"expected an nnx.Module subclass, got {cls!r}")
    _PROBES[cls] = call
    for clear in _ON_REGISTER:
        clear()
    return cls


def module_paths(model) -> dict[int, tuple]:
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


def run_probed(model, x, dummies):
    """Calls a model copy with probes installed.

    Args:
      model: a throwaway copy of the model.
      x: its input.
      dummies: the (n_rows, 2) error-tap inputs, or None while discovering rows.

    Returns:
      `(output, recorder)`.

    Example::

      out, rec = run_probed(nnx.merge(graphdef, params, rest, copy=True), x, None)
      names = rec.unique_names()
    """
    rec = Recorder(dummies, module_paths(model))
    install_probes(model)
    with recording(rec):
        out = model(x)
    return out, rec


def _probe_call_for(m):
    if isinstance(m, WEIGHT_LAYERS):
        return _weight_call
    for cls in type(m).__mro__:
        call = _PROBES.get(cls)
        if call is not None:
            if isinstance(call, _ScannedStack) and call.scanned is not None \
                    and not call.scanned(m):
                return None
            return call
    return None


def _hook(self, original, *args, **kwargs):
    """The probed classes' `__call__`: the probe call with the current Recorder, or the
    original call without one."""
    rec = current()
    call = _probe_call_for(self) if rec is not None else None
    if call is None:
        return original(self, *args, **kwargs)
    return call(self, rec, original, *args, **kwargs)


def _weight_call(self, rec: Recorder, original, x, *args, **kwargs):
    return rec.weight_layer(self, x, original(self, x, *args, **kwargs))


def _activation_call(self, rec: Recorder, original, x, *args, **kwargs):
    a = original(self, x, *args, **kwargs)
    rec.activation(a)
    return a


def _stack_call(spec: _ScannedStack, self, rec: Recorder, x):
    """Scans the stacked block with a fresh Recorder per iteration; rows come out block by block."""
    block_module, n = spec.block(self), spec.length(self)
    stack_path, block_path = rec.paths.get(id(self)), rec.paths.get(id(block_module))
    if stack_path is None or block_path is None:
        raise UnreachableLayer(type(self).__name__)
    graphdef, state = nnx.split(block_module)

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
    dummies = rec.take_dummies(n * per_block)
    if dummies is not None:
        dummies = dummies.reshape(n, per_block, *dummies.shape[1:])

    def body(x, slices):
        block_state, d = slices
        y, new_state, sub = run_block(block_state, x, d)
        return y, (new_state, sub.act_stats())

    y, (new_state, acts) = jax.lax.scan(body, x, (state, dummies))
    nnx.update(block_module, new_state)
    if spec.names is None:
        prefix = lambda i: block_path + (i,)  # noqa: E731
    else:
        prefix = lambda i: stack_path + tuple(spec.names(i))  # noqa: E731
    names = inner.unique_names()
    rows = [Row(path_name(prefix(i)) + "/" + name, block_path + r.kernel_path, i)
            for i in range(n) for name, r in zip(names, inner.rows)]
    rec.stacked(rows, acts.reshape(n * per_block, 3), inner.saw_activation)
    return y
