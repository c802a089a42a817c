"""What to try, fitted to the network diagnosed: its init, activation, and whether it has
normalization and skip connections. Advice never proposes what the network already has; what
is unknown is proposed conditionally ("residual connections, if the network has none").

    setup = infer(history)                   # from the History's meta, rows and scalars
    setup = infer(history, init="he")        # what the caller knows overrides the inference
    vanishing(setup)                         # 'use residual connections or batch norm'
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..models import options

RELU_LIKE = ("relu", "leaky_relu", "gelu", "silu")  # He init (2/fan_in) keeps their signal
BOUNDED = ("tanh", "sigmoid")  # saturating: gain-1 inits, and ReLU-family as an alternative
GAIN_ONE = ("lecun", "glorot", "orthogonal")  # the right scale for tanh / linear networks
# The zoo's archs with BatchNorm / residual blocks (`models.options.NORMALIZED` / `RESIDUAL`,
# where the zoo defines them; the rows and scalars say it too).
_ZOO_NORMALIZED = getattr(options, "NORMALIZED", ())
_ZOO_RESIDUAL = getattr(options, "RESIDUAL", ())
# Row-name components that mark a skip connection in any model (a projection shortcut's row).
_SKIP_ROW = re.compile(r"^(shortcut|skip\w*|residual\w*|res_?block\w*|downsample|projection)$")


@dataclass(frozen=True)
class Setup:
    """What is known of the diagnosed network; None where it is unknown.

    Attributes:
      init: the kernel initializer's name ("lecun", "he", "glorot", "orthogonal", ...).
      activation: the hidden activation's name ("relu", "tanh", ...).
      norm: it has normalization layers (BatchNorm, LayerNorm, ...).
      skip: it has skip (residual) connections.
    """
    init: str | None = None
    activation: str | None = None
    norm: bool | None = None
    skip: bool | None = None


def infer(records, *, init=None, activation=None, norm=None, skip=None) -> Setup:
    """The Setup of the network behind `records`: the arguments given, else what its meta, row
    names and scalars show.

    `init` and `activation` come from `records.meta`. Normalization shows as `grad_norm:<path>`
    scalars (every probed normalization layer's parameters); a skip connection as a row whose
    path has a component such as `shortcut`, `skip`, `residual` or `downsample`. For the zoo's
    networks (`meta["arch"]` one of `gradflow.models.ARCHS`, separable or not) the rows say all:
    residual blocks give `unit1` / `unit2` rows, `models.options` names the BN and residual
    archs, and absence means "has none". Elsewhere absence means unknown.

    Args:
      records: a Snapshot or History.
      init, activation, norm, skip: what the caller knows (None: infer).

    Returns:
      A Setup.

    Example:
      >>> h = gf.History.from_records(("stem/layer", "b/unit2/layer", "head"), [0],
      ...                             [{"error_norm": np.ones(3)}], meta={"arch": "residual"})
      >>> infer(h, init="he")
      Setup(init='he', activation=None, norm=False, skip=True)
    """
    meta = records.meta
    arch = options.base_arch(str(meta.get("arch", "")))
    zoo = arch in options.ARCHS
    parts = {p for name in records.layers for p in str(name).split("/")}
    if norm is None:
        scalars = getattr(records, "scalars", ())
        marked = any(s.startswith("grad_norm:") for s in scalars) or arch in _ZOO_NORMALIZED
        norm = True if marked else (False if zoo else None)
    if skip is None:
        marked = (any(_SKIP_ROW.match(p) for p in parts) or (zoo and "unit2" in parts)
                  or arch in _ZOO_RESIDUAL)
        skip = True if marked else (False if zoo else None)
    return Setup(init or meta.get("init"), activation or meta.get("activation"), norm, skip)


def _missing(thing: str, have: bool | None) -> list[str]:
    """`thing` if the network lacks it, conditionally if unknown, nothing if it has it."""
    if have is None:
        return [f"{thing} (if the network has none)"]
    return [] if have else [thing]


def _use(parts: list[str], fallback: str) -> str:
    if not parts:
        return fallback
    return "use " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1])


def _init_fix(s: Setup) -> list[str]:
    """The init that keeps the signal's scale for the activation, unless already used."""
    if s.activation in RELU_LIKE or s.activation is None:
        if s.init == "he":
            return []
        what = "He init" if s.activation else "He init for ReLU-family activations"
        if s.init is None:
            return [f"{what} (if not already used)"]
        return [f"{what} instead of {s.init}"]
    if s.init in GAIN_ONE:
        return []
    if s.init is None:
        return [f"LeCun / orthogonal init for {s.activation} (if not already used)"]
    return [f"LeCun / orthogonal init instead of {s.init} for {s.activation}"]


def vanishing(s: Setup) -> str:
    """Advice for an error signal that vanishes toward the input.

    Args:
      s: the Setup.

    Returns:
      The suggestion, e.g. "use He init instead of lecun, residual connections or batch norm".
    """
    init = _init_fix(s) if s.norm is not True else []  # BN undoes the init's scale
    parts = init + _missing("residual connections", s.skip) + _missing("batch norm", s.norm)
    if s.activation in BOUNDED:
        parts.append("ReLU-family activations")
    return _use(parts, "skip connections and normalization are already in place: look for "
                       "dead or saturated units, and check the input scale")


def exploding(s: Setup) -> str:
    """Advice for an error signal (or forward signal) that explodes toward the input.

    Args:
      s: the Setup.

    Returns:
      The suggestion.
    """
    parts = []
    if s.init == "he" and s.activation is not None and s.activation not in RELU_LIKE:
        parts.append(f"LeCun / orthogonal init instead of He (its gain 2 is for ReLU, not "
                     f"{s.activation})")
    elif s.norm is not True:
        parts.append("a smaller init scale")
    if s.skip is not False and s.norm is not True:
        branches = "smaller residual branches at init (Fixup / SkipInit / ReZero)"
        parts.append(branches if s.skip else f"{branches}, if it has residual connections")
    if s.norm is True and s.skip is True:
        parts.append("a zero-initialized last BN scale in each residual block")
    parts += _missing("normalization", s.norm)
    if s.norm is True:  # BN alone makes the error signal grow toward the input (Yang et al.)
        parts += _missing("residual connections", s.skip)
    return _use(parts + ["a smaller learning rate / warm-up"], "")


def dead_units(s: Setup) -> str:
    """Advice for ReLU-family units silent on the whole batch.

    Args:
      s: the Setup.

    Returns:
      The suggestion.
    """
    init = _init_fix(s) if s.norm is not True else []  # BN undoes the init's scale
    parts = [p for p in init if "He" in p] + ["a smaller learning rate"]
    if s.activation in (None, "relu"):
        parts.append("leaky ReLU / GELU" + (" instead of ReLU" if s.activation else ""))
    return _use(parts, "")


def saturation(s: Setup) -> str:
    """Advice for tanh / sigmoid units in their flat tails.

    Args:
      s: the Setup.

    Returns:
      The suggestion.
    """
    parts = ["a smaller init scale" + (" (LeCun / orthogonal, not He)" if s.init == "he" else ""),
             "a smaller learning rate"]
    parts += _missing("batch norm before the activation", s.norm) + ["ReLU-family activations"]
    return _use(parts, "")


def divergence(s: Setup) -> str:
    """Advice for a loss or gradient that became non-finite.

    Args:
      s: the Setup.

    Returns:
      The suggestion.
    """
    return _use(["a smaller learning rate"] + _missing("normalization", s.norm)
                + ["gradient clipping"], "")


def edge_of_stability(stable_lr: float) -> str:
    """Advice for a sharpness at or past the edge of stability.

    Args:
      stable_lr: the learning rate that puts the measured sharpness at the edge.

    Returns:
      The suggestion.

    Example:
      >>> edge_of_stability(0.0213)
      'lower the learning rate (below 0.021 the measured sharpness is under the edge) or use warm-up'
    """
    return (f"lower the learning rate (below {stable_lr:.2g} the measured sharpness is under the "
            "edge) or use warm-up")


def not_learning(others: bool) -> str:
    """Advice for a run whose accuracy stayed at chance (or whose loss did not fall).

    Args:
      others: whether other findings were made at the same moment.

    Returns:
      The suggestion.
    """
    if others:
        return "fix the other findings first; then tune the learning rate and train longer"
    return ("the gradient reaches every layer, so look elsewhere: tune the learning rate (10x up "
            "and down), train longer, and check the labels and the input")
