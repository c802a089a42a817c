"""The Recorder: collects one row per weight-layer call, in call (network) order, during a trace.

Rows are discovered by tracing: a layer called twice gives two rows. For each row the recorder
keeps what the layer passes on (the output of the registered activation module that follows it,
else its own linear output) and, through `error_tap`, the squared norm of dL/dz in the backward
pass. Activation modules are those registered with `registry.register_activation`.

Models without registered activation modules (e.g. a user's model calling `nnx.relu`): a row's
activation statistics are those of the next weight layer's input, which is exactly what the
layer passes on in a sequential network. A row reports its own output instead where the next
weight layer does not take what it passes on: the last row; a row whose next weight layer reads
the very same input (parallel branches, e.g. attention's query, key and value projections); and
a row before a call whose input has no statistics: integer indices (an `nnx.Embed` lookup, e.g.
a position embedding after the token embedding) or a scanned stack.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import jax.numpy as jnp

from .registry import weight_kind
from .tap import activation_stats, error_tap

_CURRENT: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("gradflow_recorder",
                                                                             default=None)


class UnreachableLayer(Exception):
    """A weight layer ran on a module copy made by an NNX transform (nnx.scan, nnx.vmap, ...)
    inside the user's model: it cannot be matched to a path, so per-call probes are off."""


@dataclass(frozen=True)
class Row:
    """One weight layer call.

    Attributes:
      name: its display name, the layer's path ("stages/0/rest/blocks/1/layer").
      kernel_path: where its kernel lives in the state.
      index: its position along the stacked axis of a scanned kernel, else None.
    """
    name: str
    kernel_path: tuple
    index: int | None = None  # position along the stacked axis of a scanned kernel


def path_name(path) -> str:
    """A module path as a row name.

    Args:
      path: the path's elements.

    Returns:
      Them joined with "/".

    Example:
      >>> path_name(("stages", 0, "layer"))
      'stages/0/layer'
    """
    return "/".join(str(p) for p in path)


@dataclass
class _Chunk:
    """Consecutive rows' forward statistics: (k, 3) arrays of [mean, std, dead]."""
    inputs: object  # None where the input has no statistics (integer indices)
    outputs: object
    acts: object  # None where no activation module followed, filled by `activation`
    resolved: bool = False  # acts already final (chunks from scanned stacks)
    source: object = None  # the input array itself, to tell layers reading the same input


class Recorder:
    """Per-trace collector of rows and their forward statistics.

    Args:
      dummies: the (n_rows, 2) array of error-tap inputs, or None while discovering rows.
      paths: id(module) -> its path in the traced model (`probes.module_paths`).
      scope: finds a layer that has no path by its weight array (`bodies.Scope`), e.g. a
        module re-created inside a loop body; None: such layers are unreachable.
    """

    def __init__(self, dummies, paths: dict[int, tuple], scope=None):
        self.dummies = dummies
        self.paths = paths
        self.scope = scope
        self.iter_rows: dict[int, tuple] = {}  # row -> (stack root, loop) of a stacked slice
        self.rows: list[Row] = []
        self.chunks: list[_Chunk] = []
        self.saw_activation = False
        self._open: _Chunk | None = None  # the last layer's chunk until an activation claims it

    # -- called by probes ---------------------------------------------------------------------
    def weight_layer(self, module, x, z, method: str | None = None):
        """Records one weight-layer call as a new row.

        Args:
          module: the layer (a `registry.WEIGHT_LAYERS` instance).
          x, z: its input and output. Integer (or boolean) inputs, an Embed's indices, get no
            input statistics (see the module docstring).
          method: None for `__call__`; else the method called (e.g. "attend"), appended to the
            row's name.

        Returns:
          `z`, through `error_tap` unless discovering.

        Raises:
          UnreachableLayer: if `module` has no path in the traced model and its weight is not
            one its scope knows.
        """
        i = len(self.rows)
        param = weight_kind(module).param
        path = self.paths.get(id(module))
        kernel_path, root = None if path is None else path + (param,), None
        if path is None and self.scope is not None:
            kernel_path, root = self.scope.find(getattr(module, param, None)) or (None, None)
        if kernel_path is None:
            raise UnreachableLayer(type(module).__name__)
        path = kernel_path[:-1] + (() if method is None else (method,))
        if root is not None:  # a slice of a stacked weight: (root, loop) names it per iteration
            self.iter_rows[i] = root
        self.rows.append(Row(path_name(path), kernel_path))
        numeric = jnp.issubdtype(jnp.result_type(x), jnp.inexact)
        chunk = _Chunk(activation_stats(x)[None] if numeric else None,
                       activation_stats(z)[None], None, source=x)
        self.chunks.append(chunk)
        self._open = chunk
        return z if self.dummies is None else error_tap(z, self.dummies[i])

    def activation(self, a):
        """Records a registered activation's output as what the last weight layer passes on.

        Args:
          a: the activation's output.
        """
        self.saw_activation = True
        if self._open is not None:
            self._open.acts = activation_stats(a)[None]
            self._open = None

    def stacked(self, rows: list[Row], acts, saw_activation: bool):
        """Adds the rows of a scanned stack, whose statistics are already final.

        Args:
          rows: the stack's rows, block by block.
          acts: their (len(rows), 3) activation statistics.
          saw_activation: whether the block called a registered activation.
        """
        self.rows.extend(rows)
        self.chunks.append(_Chunk(None, None, acts, resolved=True))
        self.saw_activation |= saw_activation
        self._open = None

    def take_dummies(self, n: int):
        """The error-tap inputs of the next `n` rows.

        Args:
          n: the number of rows.

        Returns:
          An (n, 2) slice of `dummies`, or None while discovering.
        """
        if self.dummies is None:
            return None
        start = len(self.rows)
        return self.dummies[start:start + n]

    # -- results --------------------------------------------------------------------------------
    def act_stats(self):
        """The rows' activation statistics.

        Returns:
          An (n_rows, 3) array of [act_mean, act_std, dead_frac]: of the registered activation
          after each row, else of the row's output; without any registered activation, of the
          next row's input (the last row, a row whose next row reads the same input, and a row
          before an integer input or a scanned stack: its own output).
        """
        if not self.chunks:
            return jnp.zeros((0, 3), jnp.float32)
        if self.saw_activation:
            parts = [c.acts if c.resolved or c.acts is not None else c.outputs for c in self.chunks]
            return jnp.concatenate(parts)
        # No activation modules: what a layer passes on is the next layer's input.
        parts = []
        for c, after in zip(self.chunks, self.chunks[1:] + [None]):
            if c.resolved:
                parts.append(c.acts)
            else:  # a probed call: one row
                fed = (after is not None and after.inputs is not None
                       and after.source is not c.source)
                parts.append(after.inputs if fed else c.outputs)
        return jnp.concatenate(parts)

    def unique_names(self) -> list[str]:
        """The row names, made unique.

        Returns:
          The names, with '#k' appended to the k-th call of a layer called more than once.
        """
        seen: dict[str, int] = {}
        out = []
        for r in self.rows:
            k = seen.get(r.name, 0)
            seen[r.name] = k + 1
            out.append(r.name if k == 0 else f"{r.name}#{k + 1}")
        return out


def current() -> Recorder | None:
    """The current Recorder.

    Returns:
      The Recorder of the `recording` block being run, or None outside one.
    """
    return _CURRENT.get()


@contextlib.contextmanager
def recording(rec: Recorder):
    """Makes `rec` the current Recorder for the duration of the block.

    Args:
      rec: the Recorder.

    Returns:
      A context manager yielding `rec`.
    """
    token = _CURRENT.set(rec)
    try:
        yield rec
    finally:
        _CURRENT.reset(token)


