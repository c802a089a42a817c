"""Plain-text tables and number formatting, shared by every table gradflow prints."""
from __future__ import annotations

import math


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
