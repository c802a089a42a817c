"""The Recorder: collects one row per weight-layer call, in call (network) order, during a trace.

Rows are discovered by tracing: a layer called twice gives two rows. For each row the recorder
keeps what the layer passes on (the output of the registered activation module that follows it,
else its own linear output) and, through `error_tap`, the squared norm of dL/dz in the backward
pass. Activation modules are those registered with `registry.register_activation`.

Models without registered activation modules (e.g. a user's model calling `nnx.relu`): a row's
activation statistics are those of the next weight layer's input, which is exactly what the
layer passes on in a sequential network; the last row reports its own output.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import jax.numpy as jnp


from .tap import activation_stats, error_tap

_CURRENT: contextvars.ContextVar["Recorder | None"] = contextvars.ContextVar("gradflow_recorder",
                                                                             default=None)


class UnreachableLayer(Exception):
    """A weight layer ran on a module copy made by an NNX transform (nnx.scan, nnx.vmap, ...)
    inside the user's model: it cannot be matched to a path, so per-call probes are off."""


@dataclass(frozen=True)
class Row:
    """One weight layer call: its display name and where its kernel lives in the state."""
    name: str
    kernel_path: tuple
    index: int | None = None  # position along the stacked axis of a scanned kernel


def path_name(path) -> str:
    return "/".join(str(p) for p in path)


@dataclass
class _Chunk:
    """Consecutive rows' forward statistics: (k, 3) arrays of [mean, std, dead]."""
    inputs: object
    outputs: object
    acts: object  # None where no activation module followed, filled by `activation`
    resolved: bool = False  # acts already final (chunks from scanned stacks)


class Recorder:
    """Per-trace collector. `dummies` is the (n_rows, 2) array of error-tap inputs, or None while
    discovering rows. `paths` maps id(module) to its path in the traced model."""

    def __init__(self, dummies, paths: dict[int, tuple]):
        self.dummies = dummies
        self.paths = paths
        self.rows: list[Row] = []
        self.chunks: list[_Chunk] = []
        self.saw_activation = False
        self._open: _Chunk | None = None  # the last layer's chunk, while no activation has claimed it

    # -- called by probes ---------------------------------------------------------------------
    def weight_layer(self, module, x, z):
        i = len(self.rows)
        path = self.paths.get(id(module))
        if path is None:
            raise UnreachableLayer(type(module).__name__)
        self.rows.append(Row(path_name(path), path + ("kernel",)))
        chunk = _Chunk(activation_stats(x)[None], activation_stats(z)[None], None)
        self.chunks.append(chunk)
        self._open = chunk
        return z if self.dummies is None else error_tap(z, self.dummies[i])

    def activation(self, a):
        self.saw_activation = True
        if self._open is not None:
            self._open.acts = activation_stats(a)[None]
            self._open = None

    def stacked(self, rows: list[Row], acts, saw_activation: bool):
        """Adds the rows of a scanned stack, whose statistics are already final."""
        self.rows.extend(rows)
        self.chunks.append(_Chunk(None, None, acts, resolved=True))
        self.saw_activation |= saw_activation
        self._open = None

    def take_dummies(self, n: int):
        """The error-tap scalars of the next `n` rows (None while discovering)."""
        if self.dummies is None:
            return None
        start = len(self.rows)
        return self.dummies[start:start + n]

    # -- results --------------------------------------------------------------------------------
    def act_stats(self):
        """(n_rows, 3) array of [act_mean, act_std, dead_frac]."""
        if not self.chunks:
            return jnp.zeros((0, 3), jnp.float32)
        if self.saw_activation:
            parts = [c.acts if c.resolved or c.acts is not None else c.outputs for c in self.chunks]
            return jnp.concatenate(parts)
        # No activation modules: what a layer passes on is the next layer's input.
        inputs = jnp.concatenate([c.inputs for c in self.chunks])
        last = self.chunks[-1].outputs
        return jnp.concatenate([inputs[1:], last[-1:]])

    def unique_names(self) -> list[str]:
        """Row names, with '#k' appended to the k-th repeated call of a layer."""
        seen: dict[str, int] = {}
        out = []
        for r in self.rows:
            k = seen.get(r.name, 0)
            seen[r.name] = k + 1
            out.append(r.name if k == 0 else f"{r.name}#{k + 1}")
        return out


def current() -> Recorder | None:
    return _CURRENT.get()


@contextlib.contextmanager
def recording(rec: Recorder):
    token = _CURRENT.set(rec)
    try:
        yield rec
    finally:
        _CURRENT.reset(token)


