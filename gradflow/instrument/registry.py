"""Which modules gradflow measures, and how: weight layers (`WEIGHT_LAYERS`), and the module
classes registered here as activations or scanned stacks.

Any `nnx.Linear`, `nnx.LinearGeneral`, `nnx.Einsum`, `nnx.Conv`, `nnx.ConvTranspose` or
`nnx.Embed` (`WEIGHT_LAYERS`) is found by walking the graph and gets one row per call, measured
on its weight parameter (`WEIGHT_KINDS`: `kernel`, an Embed's `embedding`). An Embed's `attend`
(a weight-tied output head) is a call too, a row named `<path>/attend`. So attention is four
rows: `nnx.MultiHeadAttention`'s `query`, `key`, `value` and `out` are LinearGeneral layers.
Two more kinds of module plug in through a public registry, the same way for gradflow's model
zoo and for a user's own modules:

- `register_activation(cls)`: a call of a `cls` module is what the unit passes on; its
  act_mean / act_std / dead_frac become those of the weight layer called just before it.
  Without any registered activation module in a model, a row reports the next weight layer's
  input instead (exact for sequential networks; see recorder.py).
- `register_scanned_stack(cls, block=, length=, ...)`: a `cls` module applies one block, whose
  arrays carry a leading axis of length n, n times with `jax.lax.scan`. The probe runs that
  scan itself and reports one row per layer and iteration. (Unregistered `nnx.scan`,
  `jax.lax.scan`, `nnx.fori_loop` and `nnx.remat` are measured per iteration too: see
  transforms.py; registering names the rows and replaces the stack's own call.)

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
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flax import nnx


@dataclass(frozen=True)
class WeightKind:
    """How the calls of one weight-layer class are measured.

    Attributes:
      param: the attribute holding its weight `nnx.Param`; a row's `kernel_path` is the layer's
        path + (param,).
      ndim: `ndim(module)` is the weight's rank without stacked axes (one more leading axis:
        layers stacked by nnx.vmap, one row per slice where calls cannot be probed).
      methods: methods other than `__call__` whose calls are rows too, named `<path>/<method>`.
    """
    param: str
    ndim: Callable[[Any], int]
    methods: tuple[str, ...] = ()


def _matrix(m) -> int:
    return 2


def _conv(m) -> int:
    return len(m.kernel_size) + 2


def _linear_general(m) -> int:  # kernel: (*batch_axis sizes, *in_features, *out_features)
    return len(m.batch_axis) + len(m.in_features) + len(m.out_features)


def _einsum(m) -> int:
    return len(m.kernel_shape)


WEIGHT_KINDS: dict[type, WeightKind] = {
    nnx.Linear: WeightKind("kernel", _matrix),
    nnx.LinearGeneral: WeightKind("kernel", _linear_general),
    nnx.Einsum: WeightKind("kernel", _einsum),
    nnx.Conv: WeightKind("kernel", _conv),
    nnx.ConvTranspose: WeightKind("kernel", _conv),
    # (num_embeddings, features); called on integer indices, `attend` is the tied output head
    nnx.Embed: WeightKind("embedding", _matrix, methods=("attend",)),
}
WEIGHT_LAYERS = tuple(WEIGHT_KINDS)

ACTIVATION = "activation"
# class -> ACTIVATION or a ScannedStack, found along type(module).__mro__
_KINDS: dict[type, Any] = {}
# callables that drop what was cached for the old registry (compiled steps register theirs)
ON_REGISTER: list[Callable[[], None]] = []


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
    return _register(cls, ACTIVATION)


@dataclass(frozen=True)
class ScannedStack:
    """How to reach a registered stack's stacked block, its length and whether it scans.

    Attributes:
      block, length, scanned, names: as `register_scanned_stack` takes them.
    """
    block: Callable[[Any], nnx.Module]
    length: Callable[[Any], int]
    scanned: Callable[[Any], bool] | None
    names: Callable[[int], tuple] | None


def register_scanned_stack(cls: type | None = None, *, block: Callable[[Any], nnx.Module],
                           length: Callable[[Any], int],
                           scanned: Callable[[Any], bool] | None = None,
                           names: Callable[[int], tuple] | None = None):
    """Registers a module class that applies one stacked block n times with `jax.lax.scan`
    or `nnx.scan` (e.g. blocks made by `nnx.vmap` under `nnx.split_rngs`).

    The block module's arrays carry a leading axis of length n; calling the stack on `x` (plus
    any further arguments, given to every block unchanged: a mask, `deterministic=`) must
    equal `block_{n-1}(... block_0(x))`, where block_i holds slice i (and its state updates,
    e.g. BatchNorm statistics, are written back). In a measured step the probe runs that scan
    itself, instead of the stack's own `__call__`, with probes inside the block, so each weight
    layer gets one row per iteration, with its error norm and activation statistics. Instances whose `scanned(module)` is False are called as they are
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
    spec = ScannedStack(block, length, scanned, names)
    if cls is None:
        return lambda c: _register(c, spec)
    return _register(cls, spec)


def _register(cls, kind) -> type:
    if not (isinstance(cls, type) and issubclass(cls, nnx.Module)):
        raise TypeError(f"expected an nnx.Module subclass, got {cls!r}")
    _KINDS[cls] = kind
    for clear in ON_REGISTER:
        clear()
    return cls


def weight_kind(module) -> WeightKind | None:
    """How a weight layer is measured, found along its class hierarchy.

    Args:
      module: any module.

    Returns:
      The `WeightKind` of the first class of `type(module).__mro__` in `WEIGHT_KINDS`, or None
      (not a weight layer).

    Example:
      >>> embed = nnx.eval_shape(lambda: nnx.Embed(10, 4, rngs=nnx.Rngs(0)))
      >>> kind = weight_kind(embed)
      >>> kind.param, kind.ndim(embed), kind.methods
      ('embedding', 2, ('attend',))
      >>> weight_kind(nnx.LayerNorm(4, rngs=nnx.Rngs(0))) is None
      True
    """
    for cls in type(module).__mro__:
        kind = WEIGHT_KINDS.get(cls)
        if kind is not None:
            return kind
    return None


def kind_of(module):
    """How `module` is measured.

    Args:
      module: any module.

    Returns:
      "weight" (`WEIGHT_LAYERS`, see `weight_kind`), ACTIVATION, a ScannedStack (a registered
      stack that scans), or None (its calls are not probed; its submodules may be).

    Example:
      >>> linear = nnx.eval_shape(lambda: nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
      >>> kind_of(linear), kind_of(gf.models.Activation("relu"))
      ('weight', 'activation')
    """
    if weight_kind(module) is not None:
        return "weight"
    for cls in type(module).__mro__:
        kind = _KINDS.get(cls)
        if kind is not None:
            if isinstance(kind, ScannedStack) and kind.scanned is not None \
                    and not kind.scanned(module):
                return None
            return kind
    return None

