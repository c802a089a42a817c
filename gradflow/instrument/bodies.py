"""What a loop body or checkpointed function recorded, and how it reaches the enclosing
Recorder (`transforms.py`): the scope that finds re-created layers by their weight arrays, the
export of a body's statistics as arrays, and their absorption as rows and chunks."""
from __future__ import annotations

from flax import nnx

from .recorder import Recorder, Row, UnreachableLayer, _Chunk, current, path_name


class Scope:
    """Where the arrays a layer's weight may be come from: the model copy's variables (whole
    weights), or the arrays a loop body or checkpointed function received.

    Args:
      model: the model copy (root scope), else None.
      parent: the enclosing scope, else None.
      leaves: {id(array): (array, (variable path, stack root or None, loop))} of a body's inputs.
    """

    def __init__(self, model=None, parent=None, leaves=None):
        self.model, self.parent, self.leaves = model, parent, leaves or {}

    def lookup(self, a):
        """`(variable path, stack root, loop)` of array `a`, or None if unknown."""
        hit = self.leaves.get(id(a))
        if hit is not None and hit[0] is a:
            return hit[1]
        if self.parent is not None:
            return self.parent.lookup(a)
        if self.model is not None:
            hit = self.variables().get(id(a))
            return None if hit is None or hit[0] is not a else (hit[1], None, None)
        return None

    def find(self, var):
        """`(kernel path, stack root or None)` of a weight Variable, or None if unknown."""
        hit = self.lookup(var.get_value()) if isinstance(var, nnx.Variable) else None
        return None if hit is None else (hit[0], None if hit[1] is None else hit[1:])

    def variables(self) -> dict:
        """{id(array): (array, path)} of the root model's variables now."""
        if self.model is None:
            return {} if self.parent is None else self.parent.variables()
        flat = nnx.to_flat_state(nnx.state(self.model))
        return {id(v.get_value()): (v.get_value(), tuple(p)) for p, v in flat}


class Blocked(Recorder):
    """The Recorder inside an opaque body: every weight layer there is unreachable."""

    def __init__(self):
        super().__init__(None, {})

    def weight_layer(self, module, x, z, method=None):
        raise UnreachableLayer(type(module).__name__)


def active():
    """The current Recorder, or None outside one and inside an opaque body."""
    rec = current()
    return None if rec is None or isinstance(rec, Blocked) else rec


def export(rec: Recorder):
    """A body's chunk statistics, as arrays that can leave its trace."""
    return [(c.inputs, c.outputs, c.acts) for c in rec.chunks]


def shape(rec: Recorder) -> tuple:
    """What `absorb` needs of a body's recorder besides its arrays (no tracers kept)."""
    first, groups = {}, []
    for k, c in enumerate(rec.chunks):
        groups.append(k if c.source is None else first.setdefault(id(c.source), k))
    open_last = bool(rec.chunks) and rec._open is rec.chunks[-1]
    return (list(rec.rows), dict(rec.iter_rows), groups, [c.resolved for c in rec.chunks],
            rec.saw_activation, open_last)


def absorb(rec: Recorder, shape: tuple, arrays, loop=None, length: int = 1) -> None:
    """Adds a body's rows and chunks to `rec`, as if its calls had been made there.

    Args:
      rec: the enclosing Recorder.
      shape: `_shape` of the body's recorder.
      arrays: its `_export`, with a leading iteration axis when `loop` is given.
      loop: the loop whose iterations these are (names its stacked rows `<root>/<i>/...`).
      length: the number of iterations.
    """
    rows, iter_rows, groups, resolved, saw, open_last = shape
    for i in range(length) if loop is not None else (None,):
        start, tokens = len(rec.rows), {}
        for k, r in enumerate(rows):
            it = iter_rows.get(k)
            if it is not None and loop is not None and it[1] is loop:
                r = Row(path_name(it[0] + (i,)) + _rest(r, it[0]), r.kernel_path, i)
            elif it is not None:
                rec.iter_rows[start + k] = it
            rec.rows.append(r)
        for chunk, res, g in zip(arrays, resolved, groups):
            inp, out, acts = (a if i is None or a is None else a[i] for a in chunk)
            rec.chunks.append(_Chunk(inp, out, acts, res, source=tokens.setdefault(g, object())))
    rec.saw_activation |= saw
    rec._open = rec.chunks[-1] if open_last else None


def _rest(row: Row, root: tuple) -> str:
    """The part of a stacked row's name after its stack root, with its leading '/'."""
    return row.name[len(path_name(root)):]
