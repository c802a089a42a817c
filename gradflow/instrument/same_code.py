"""Cache keys for functions and optax transformations by what they compute, not by identity.

`gf.train(model, ..., optimizer=optax.sgd(0.1))` called twice builds two optax objects that
compute the same thing; keyed by identity, the second call would trace and compile its steps
again. `code_key` keys a function (an optax `GradientTransformation` is a tuple of two) by its
code, its closure's values and the globals its code names, recursively, and refuses anything
whose behaviour it cannot pin down (then the caller keys by identity), so equal keys mean the
same computation. `cached` is the bounded memo the compiled-step caches share.
"""
from __future__ import annotations

import functools
import types

import numpy as np

_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_MAX_DEPTH = 32
_MAX_ARRAY = 64  # entries of a small numpy constant keyed by value


def cached(store: dict, key, build, limit: int = 64):
    """`store[key]`, made by `build()` the first time; past `limit` entries the store starts
    over (a long session building many models does not keep every compilation alive).

    Args:
      store: the cache.
      key: a hashable key (pass functions through `code_key`).
      build: makes the value.
      limit: the most entries kept.

    Returns:
      The cached value.
    """
    if key not in store:
        if len(store) >= limit:
            store.clear()
        store[key] = build()
    return store[key]


class Unkeyable(Exception):
    """A value whose behaviour a key cannot capture."""


def code_key(obj):
    """A hashable key equal for two values that compute the same thing, or `obj` itself.

    Args:
      obj: a function, an optax transformation, a tuple of them, ... (anything).

    Returns:
      A structural key (code objects, closure and default values, the values of referenced
      globals that are numbers or strings, modules and classes by identity), or `obj` itself
      where some part is not pinned down (a mutable global, an arbitrary object, a large
      array, a recursive structure deeper than 32 levels).

    Example:
      >>> import optax
      >>> code_key(optax.sgd(0.1, momentum=0.9)) == code_key(optax.sgd(0.1, momentum=0.9))
      True
      >>> code_key(optax.sgd(0.1)) == code_key(optax.sgd(0.2))
      False
    """
    try:
        return ("code_key", _Keys().key(obj, 0))
    except (Unkeyable, RecursionError, TypeError, ValueError):
        return obj


class _Keys:
    """One keying walk; each function is keyed once (memo), a function met again while its
    own key is being built (recursion through globals) by its name."""

    def __init__(self):
        self.memo: dict[int, object] = {}
        self.open: set[int] = set()

    def key(self, obj, depth: int):
        if depth > _MAX_DEPTH:
            raise Unkeyable("too deep")
        down = functools.partial(self.key, depth=depth + 1)
        if isinstance(obj, _SCALARS):
            return type(obj), obj
        if isinstance(obj, (tuple, list)):  # NamedTuples (optax's transformations) by type too
            return type(obj), tuple(down(o) for o in obj)
        if isinstance(obj, dict):
            return dict, tuple(sorted((k, down(v)) for k, v in obj.items()))
        if isinstance(obj, types.FunctionType):
            return self.function(obj, down)
        if isinstance(obj, functools.partial):
            return functools.partial, down(obj.func), down(obj.args), down(obj.keywords)
        if isinstance(obj, (types.ModuleType, type, types.BuiltinFunctionType)):
            return "id", id(obj)
        if isinstance(obj, (np.ndarray, np.generic)) and obj.size <= _MAX_ARRAY:
            return np.ndarray, obj.dtype.str, obj.shape, obj.tobytes()
        raise Unkeyable(type(obj).__name__)

    def function(self, fn, down):
        if id(fn) in self.memo:
            return self.memo[id(fn)]
        if id(fn) in self.open:  # recursion: the enclosing key already holds its code
            return "recursive", fn.__module__, fn.__qualname__
        self.open.add(id(fn))
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(down(cell.cell_contents))
            except ValueError:  # an empty cell (a name not yet bound)
                cells.append(None)
        names = sorted(n for n in _global_names(fn.__code__) if n in fn.__globals__)
        key = (types.FunctionType, fn.__code__, down(fn.__defaults__), down(fn.__kwdefaults__),
               tuple(cells), tuple((n, down(fn.__globals__[n])) for n in names))
        self.open.discard(id(fn))
        self.memo[id(fn)] = key
        return key


def _global_names(code) -> set[str]:
    """The global names `code` and the code objects nested in it refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names
