"""Plain-text tables, number formatting and findings in a few words, shared by every table
gradflow prints."""
from __future__ import annotations

import math

import numpy as np

from ..analysis.diagnose import Finding, edge_setting, stability_edge


def fmt(v, spec: str = ".3g") -> str:
    """`v` formatted with `spec`, or an em dash for None and non-finite numbers.

    Args:
      v: a number or None.
      spec: a format spec (`".1e"`, `".1%"`, `","`, ...).

    Returns:
      The text of the cell.

    Example:
      >>> fmt(0.5, ".1%"), fmt(None), fmt(float("nan"), ".1e")
      ('50.0%', '—', '—')
    """
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, spec)


def text_table(head, rows, *, left=(0,), footer: str = "") -> str:
    """A plain-text table: columns aligned, a rule under the header, an optional footer line.

    Args:
      head: the column titles.
      rows: one sequence of cells per row (converted with str).
      left: indices of the left-aligned columns (negative counts from the end); the others
        are right-aligned. An int n means the first n columns.
      footer: a line printed under the table (e.g. what a column means).

    Returns:
      The table as one string, lines without trailing spaces.

    Example:
      >>> print(text_table(("arch", "loss"), [("plain", "2.30")]))
      arch   loss
      -----------
      plain  2.30
    """
    rows = [tuple(map(str, r)) for r in rows]
    head = tuple(map(str, head))
    n = len(head)
    left = set(range(left)) if isinstance(left, int) else {i % n for i in left}
    w = [max(len(r[i]) for r in rows + [head]) for i in range(n)]

    def line(r):
        return "  ".join(c.ljust(w[i]) if i in left else c.rjust(w[i])
                         for i, c in enumerate(r)).rstrip()

    lines = [line(head), "-" * len(line(head))] + [line(r) for r in rows]
    return "\n".join(lines + ([footer] if footer else []))


def phrase(f: Finding) -> str:
    """A finding in a few words, as the verdict shows it.

    Args:
      f: a Finding.

    Returns:
      E.g. "vanishing error signal (7e-09 at layer 1)".

    Example:
      >>> phrase(Finding("exploding", ("a",), "error signal grows 1.0e+02x ...", "...", 103.0))
      'error signal explodes toward the input (1e+02×)'
    """
    v = f.value
    if f.kind == "vanishing":
        return ("no error signal at layer 1" if v == 0
                else f"vanishing error signal ({v:.0e} at layer 1)")
    if f.kind == "exploding":
        return (f"activations explode ({v:.0e}× over the hidden layers)"
                if f.evidence.startswith("activations") else
                f"error signal explodes toward the input ({v:.0e}×)")
    return {"dead_units": f"dead units (up to {v:.0%} of a layer)",
            "saturation": f"saturated units (activation std up to {v:.2f})",
            "unstable_updates": f"unstable updates (up to {v:.0%} of the weights per step)",
            "healthy": "error signal reaches every layer",
            "edge_of_stability": f"sharpness at or past the edge of stability ({v:.2g}× the edge)"
            }.get(f.kind, f.kind.replace("_", " "))


def flow(findings: list[Finding]) -> str:
    """The gradient flow at one moment, in short: the phrases of its findings but learning.

    Args:
      findings: `gf.diagnose`'s findings at one moment.

    Returns:
      The phrases joined by ", "; "error signal reaches every layer" when only learning was
      found wanting; "loss or gradients non-finite" when only divergence was found.
    """
    parts = [phrase(f) for f in findings if f.kind not in ("not_learning", "divergence")]
    if not parts and any(f.kind == "divergence" for f in findings):
        return "loss or gradients non-finite"
    return ", ".join(parts) or "error signal reaches every layer"


# -- gradient noise and curvature, in words ---------------------------------------------------

QUANTITY_NAMES = {"norm_test": "norm test", "inner_test": "inner-product test",
                  "ortho_test": "orthogonality test", "mean_gsnr": "mean GSNR",
                  "hess_max_ev": "largest Hessian eigenvalue", "hess_trace": "Hessian trace"}
_MEANING = {
    "norm_test": "the spread of the per-example gradients relative to the mean gradient's norm "
                 "(Byrd et al. 2012); the batch size the norm test asks for (θ = 1) is "
                 "B·norm_test²: above the current batch size B, gradients are noisy — use a "
                 "larger batch or a smaller learning rate",
    "inner_test": "the spread of the per-example gradients along the mean gradient, relative to "
                  "it (Bollapragada et al. 2018); above 1 a mini-batch step may not go downhill "
                  "(the batch size it asks for is B·inner_test²) — use a larger batch or a "
                  "smaller learning rate",
    "ortho_test": "the spread of the per-example gradients orthogonal to the mean gradient, "
                  "relative to it (Bollapragada et al. 2018); far above 1 the step's direction "
                  "is mostly noise — use a larger batch (B·ortho_test² asks for θ = 1)",
    "mean_gsnr": "the squared mean gradient over the variance of the per-example gradients, "
                 "averaged over the parameters; small (≪ 1) means noise dominates the gradient "
                 "of most parameters — a larger batch averages it down (a batch of B has "
                 "B·GSNR), or lower the learning rate",
    "hess_max_ev": "the sharpness of the loss (Cockpit's HessMaxEV); at or above "
                   "2/lr ((2 + 2β)/lr with momentum β) training sits at or past the "
                   "edge of stability (Cohen et al. 2021), where the loss oscillates along the "
                   "sharpest direction — lower the learning rate",
    "hess_trace": "the total curvature, the sum of the Hessian's eigenvalues (Hutchinson's "
                  "estimate ± its standard error); a rising trace means training moves into "
                  "sharper regions, where the same learning rate is less stable",
}


def last_measured(history, name: str):
    """The last finite value of a scalar of a History and its step.

    Args:
      history: a History.
      name: a scalar's name, e.g. "norm_test" (NaN where it was not taken).

    Returns:
      (value, step), or None when the History has no finite value of it.

    Example:
      >>> h = gf.History.from_records(("a",), [0, 5, 9], [{"norm_test": np.float32(v)}
      ...                                               for v in (2.0, np.nan, np.nan)])
      >>> last_measured(h, "norm_test")
      (2.0, 0)
    """
    if name not in history:
        return None
    values = np.asarray(history[name], dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(values))
    if not ok.size:
        return None
    return float(values[ok[-1]]), int(history.steps[ok[-1]])


def _value_text(name: str, arch: str, h, value: float, step: int, batch_size, lr,
                momentum) -> str:
    extra = ""
    batch = h.meta.get("batch_size", batch_size)
    if name in ("norm_test", "inner_test", "ortho_test") and batch:
        extra = f" (asks for a batch of {math.ceil(batch * value * value):,}; B = {batch})"
    elif name == "hess_max_ev":
        setting = edge_setting(h.meta, lr.get(arch) if isinstance(lr, dict) else lr, momentum)
        if setting is not None:
            edge = stability_edge(*setting)
            extra = f" ({value / edge:.2g}× the edge {edge:.3g})"
        else:
            extra = " (no edge: learning rate unknown, or an adaptive optimizer)"
    elif name == "hess_trace":
        se = last_measured(h, "hess_trace_se")
        if se is not None and se[1] == step:
            extra = f" ± {fmt(se[0])}"
    return f"{arch} {fmt(value)}{extra} at step {step}"


def quantity_sentences(histories: dict, *, batch_size: int | None = None, lr=None,
                       momentum: float | None = None) -> list[tuple[str, str]]:
    """One sentence per noise or curvature quantity the Histories hold: what it means, what to
    do about it, and each architecture's value at its last record that measured it.

    Args:
      histories: arch -> History.
      batch_size: the batch size B, where a History's meta lacks "batch_size".
      lr: the learning rate (a number, or arch -> number) for the edge of stability; default
        each History's `meta["lr"]`.
      momentum: the heavy-ball momentum β; default from each History's meta (`edge_setting`).

    Returns:
      (name, sentence) pairs, in the order of `QUANTITY_NAMES`.

    Example:
      >>> h = gf.History.from_records(("a",), [0], [{"norm_test": np.float32(2.0)}],
      ...                             meta={"batch_size": 32})
      >>> [(n, s.split(". ")[-1]) for n, s in quantity_sentences({"plain": h})]
      [('norm test', 'Last measured: plain 2 (asks for a batch of 128; B = 32) at step 0.')]
    """
    out = []
    for name, title in QUANTITY_NAMES.items():
        if not any(name in h for h in histories.values()):
            continue
        values = []
        for arch, h in histories.items():
            last = last_measured(h, name)
            if last is not None:
                values.append(_value_text(name, arch, h, *last, batch_size, lr, momentum))
        measured = ("Last measured: " + "; ".join(values) if values
                    else "No finite value was measured")
        out.append((title, f"{_MEANING[name][0].upper()}{_MEANING[name][1:]}. {measured}."))
    return out
