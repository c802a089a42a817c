"""Intercepting module calls on a throwaway copy of a model, without editing the model's code.

`swap_call(module, tag, hook)` gives `module` (an object of a copy!) a cached subclass of its
class whose `__call__` is `hook(self, original_call, *args, **kwargs)`. Parameter paths, state
and results are unchanged; only calls made on this object are seen.
"""
from __future__ import annotations

import types

_SUBCLASSES: dict[tuple[type, str], type] = {}


def swap_call(module, tag: str, hook) -> None:
    """Gives `module` a cached subclass of its class whose `__call__` is `hook`.

    A module already intercepted (with any tag) is left as it is.

    Args:
      module: a module of a throwaway copy of the model (its class is replaced in place).
      tag: names the subclass (`f"{tag.title()}{cls.__name__}"`) and keys the cache.
      hook: `hook(self, original_call, *args, **kwargs)`, called instead of the module's
        `__call__`; parameter paths, state and results are unchanged unless it changes them.
    """
    cls = type(module)
    if getattr(cls, "_gradflow_tag", None) is not None:
        return  # already intercepted (e.g. merged from a graphdef that recorded the subclass)
    key = (cls, tag)
    if key not in _SUBCLASSES:
        original = cls.__call__

        def __call__(self, *args, **kwargs):
            return hook(self, original, *args, **kwargs)

        _SUBCLASSES[key] = types.new_class(
            f"{tag.title()}{cls.__name__}", (cls,), {},
            lambda ns: ns.update(__call__=__call__, _gradflow_tag=tag))
    module.__class__ = _SUBCLASSES[key]
