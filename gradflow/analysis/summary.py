"""`gf.summary`: the model's hierarchy (network, stages, blocks, layers) with output shapes and
parameter counts, like Keras' model.summary() but nested.

Counts follow Keras: a module's count is every array it holds (BatchNorm: scale, offset and the
two running statistics); `trainable` counts `nnx.Param`s only, so BN's statistics, and scale and
offset after `gf.freeze_batchnorm`, are non-trainable. Random-number state is not counted."""
from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from ..instrument.intercept import swap_call

_SHAPES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("gradflow_summary",
                                                                     default=None)


@dataclass(frozen=True)
class SummaryRow:
    """One module of a Summary.

    Attributes:
      path: the module's attribute path from the model (() for the model itself).
      kind: the module's class name.
      output_shape: the shape of its first call's output, batch axis shown as None; None if it
        is never called (e.g. an `nnx.List`).
      params: the number of array elements in this module and everything below it, trainable
        or not (random-number state not counted).
      note: extra text, e.g. "×8 scanned (counts: all 8 blocks)" for a scanned Stack, whose
        rows below count the arrays of all its stacked blocks together.
    """
    path: tuple
    kind: str  # the module's class name
    output_shape: tuple | None  # first call's output, batch axis shown as None
    params: int  # arrays (trainable or not) in this module and everything below it
    note: str = ""

    @property
    def depth(self) -> int:
        """Nesting depth: 0 for the model, 1 for its direct children, ..."""
        return len(self.path)


class Summary:
    """The hierarchy `gf.summary` returns; `str()` renders it as a table.

    Attributes:
      rows: SummaryRows in network order (a module after its parent, children in call order).
      total: the model's parameter count (every array, trainable or not).
      trainable: the count of `nnx.Param` elements.
    """

    def __init__(self, rows: list[SummaryRow], total: int, trainable: int):
        self.rows, self.total, self.trainable = rows, total, trainable

    @property
    def non_trainable(self) -> int:
        """`total - trainable`: BatchNorm statistics, and frozen scale and offset."""
        return self.total - self.trainable

    def __str__(self) -> str:
        head = ("module (type)", "output shape", "params")
        cells = [(("  " * r.depth) + (str(r.path[-1]) + ": " if r.path else "") + r.kind
                  + (f" {r.note}" if r.note else ""),
                  "" if r.output_shape is None else str(r.output_shape), f"{r.params:,}")
                 for r in self.rows]
        w = [max(len(c[i]) for c in cells + [head]) for i in range(3)]
        line = "-" * (sum(w) + 4)
        out = [line, f"{head[0]:<{w[0]}}  {head[1]:<{w[1]}}  {head[2]:>{w[2]}}", line]
        out += [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}" for a, b, c in cells]
        out += [line, (f"total parameters: {self.total:,} (trainable: {self.trainable:,}, "
                       f"non-trainable: {self.non_trainable:,})"), line]
        return "\n".join(out)

    def __repr__(self):
        return str(self)


def summary(model: nnx.Module, input_shape, *, dtype=jnp.float32, max_depth: int | None = None
            ) -> Summary:
    """The hierarchy of `model` with output shapes and parameter counts, like Keras' summary().

    The model is traced abstractly on a copy (nothing is computed, `model` does not change).

    Args:
      model: a `flax.nnx.Module`.
      input_shape: the shape of one input, without the batch axis.
      dtype: the input's dtype; default float32.
      max_depth: leave out modules nested deeper than this (0: the model only); default all.

    Returns:
      A Summary; print it for the table.

    Raises:
      TypeError: if `model` is not a `flax.nnx.Module`.

    Example:
      >>> model = gf.models.mlp("plain", 4, width=16, in_features=8, num_classes=3,
      ...                       rngs=nnx.Rngs(0))
      >>> s = gf.summary(model, (8,))
      >>> s.total, s.trainable, s.rows[-1].output_shape
      (739, 739, (None, 3))
      >>> print(s)  # doctest: +SKIP
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    shapes: dict[tuple, tuple] = {}  # module path -> output shape of its first call
    order: dict[tuple, float] = {}  # module path -> rank of its first call
    graphdef, state = nnx.split(model)
    modules: list = []

    def run(state, x):  # the copy lives in this trace, so BatchNorm may update its statistics
        copy = nnx.merge(graphdef, state, copy=True)
        modules.extend((tuple(p), m) for p, m in nnx.iter_modules(copy))
        for path, m in modules:
            swap_call(m, "summarized", _hook)
            # keyed by path, not object: a scanned Stack calls fresh copies of its block made
            # from a graphdef, which carries this static attribute along
            m._gradflow_summary_path = path
        return copy(x)

    token = _SHAPES.set((shapes, order))
    try:
        jax.eval_shape(run, state, jax.ShapeDtypeStruct((1, *input_shape), dtype))
    finally:
        _SHAPES.reset(token)
    params = _sizes(model, nnx.All(nnx.Variable, nnx.Not(nnx.RngState)))
    trainable = sum(_sizes(model, nnx.Param).values())
    _rank_uncalled(modules, order)
    rows = []
    for path, m in modules:
        if max_depth is not None and len(path) > max_depth:
            continue
        count = sum(n for p, n in params.items() if p[:len(path)] == path)
        note = (f"×{m.n} scanned (counts: all {m.n} blocks)"
                if getattr(m, "scan", False) and hasattr(m, "n") else "")
        rows.append(SummaryRow(path, type(model if not path else m).__name__.removeprefix(
            "Summarized"), shapes.get(path), count, note))
    rows.sort(key=lambda r: _network_order(r.path, order))
    return Summary(rows, sum(params.values()), trainable)


def _sizes(model, kind) -> dict[tuple, int]:
    """{variable path: number of elements} for the variables of `model` matching `kind`."""
    return {tuple(p): math.prod(jnp.shape(v.get_value()))
            for p, v in nnx.to_flat_state(nnx.state(model, kind))}


def _hook(self, original, *args, **kwargs):
    """Records each module's first call: its rank in call order and its output shape."""
    log = _SHAPES.get()
    out = original(self, *args, **kwargs)
    path = getattr(self, "_gradflow_summary_path", None)
    if log is not None and path is not None:
        shapes, order = log
        order.setdefault(path, len(order))
        if path not in shapes:
            leaves = jax.tree.leaves(out)
            shapes[path] = (None,) + tuple(leaves[0].shape[1:]) if leaves else None
    return out


def _rank_uncalled(modules, order):
    """Modules never called (nnx.List) rank just before their first-called descendant; a
    module called only inside an uncalled parent's call gets that rank too."""
    for path, _ in sorted(modules, key=lambda pm: -len(pm[0])):
        if path not in order:
            ranks = [order[p] for p, _ in modules
                     if p[:len(path)] == path and p != path and p in order]
            if ranks:
                order[path] = min(ranks) - 0.5


def _network_order(path, order):
    """Sort key: each ancestor's first-call rank, so children follow parents in call order
    (a module never called at all, e.g. an empty List, after its called siblings)."""
    return tuple(order.get(path[:i], math.inf) for i in range(len(path) + 1))
