"""Plain-text tables, number formatting and findings in a few words, shared by every table
gradflow prints."""
from __future__ import annotations

import math

from ..analysis.diagnose import Finding


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
            "healthy": "error signal reaches every layer"}.get(f.kind, f.kind.replace("_", " "))


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
