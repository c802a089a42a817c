"""How a Snapshot and a History show in Jupyter (their `_repr_html_`): a compact table of rows ×
metrics (3 significant digits; long models cut in the middle) with the whole-network scalars,
and for a History its records, steps, layers, a small grad_norm heatmap (layers × steps, log
colour scale, an inline PNG) and the last record's table.

Nothing here is imported with matplotlib: the heatmap imports it when a History is shown, and
draws on a figure of its own (no pyplot figure is opened, so none is shown twice).
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np

from .text import fmt

ROWS = 20  # rows shown in full; longer models show the first and last ROWS // 2
HEATMAP = "grad_norm"

_STYLE = ("<style>.gf-table td,.gf-table th{text-align:right;padding:1px 6px;font-size:12px}"
          ".gf-table td:first-child,.gf-table th:first-child{text-align:left}</style>")


def snapshot_html(snapshot) -> str | None:
    """A Snapshot as HTML: its rows × per-layer metrics and its whole-network scalars.

    Args:
      snapshot: a Snapshot with concrete values (not one being traced).

    Returns:
      The HTML, or None when the values are not concrete (inside jit).

    Example:
      >>> snap = gf.Snapshot(("a", "b"), {"grad_norm": np.array([1.23456, 0.001])},
      ...                    {"loss": np.float32(2.302)})
      >>> page = snapshot_html(snap)
      >>> "1.23" in page and "0.001" in page and "loss" in page
      True
    """
    values = _concrete(snapshot)
    if values is None:
        return None
    step = snapshot.meta.get("step") if isinstance(snapshot.meta, dict) else None
    head = (f"<b>Snapshot</b>: {len(snapshot.layers)} rows × {len(snapshot.metrics)} metrics"
            + (f", step {step}" if step is not None else ""))
    return f"<div>{_STYLE}{head}{_table(snapshot.layers, values)}{_scalars(values, snapshot)}</div>"


def history_html(history) -> str:
    """A History as HTML: records, steps, layers, a grad_norm heatmap and the last record.

    Args:
      history: a History.

    Returns:
      The HTML (a History without records says so).

    Example:
      >>> h = gf.History.from_records(("a", "b"), [0, 10], [{"grad_norm": np.ones(2)}] * 2)
      >>> page = history_html(h)
      >>> "2 records" in page and "data:image/png;base64," in page
      True
    """
    e = html.escape
    n = len(history)
    if not n:
        return "<div><b>History</b>: no records yet</div>"
    steps = (f"step {history.steps[0]}" if n == 1
             else f"steps {history.steps[0]}–{history.steps[-1]}")
    names = [e(x) for x in history.layers]
    if len(names) > ROWS:
        names = names[:ROWS // 2] + ["…"] + names[-(ROWS // 2):]
    layers = (f"<details><summary>{len(history.layers)} layers (input first)</summary>"
              f"<code>{', '.join(names)}</code></details>")
    head = (f"<b>History</b>: {n} record{'s' if n != 1 else ''}, {steps}, "
            f"{len(history.layers)} layers, metrics {e(', '.join(history.metrics))}")
    last = snapshot_html(history.snapshot(-1)) or ""
    return (f"<div>{head}{layers}{_heatmap(history)}<div>Last record (step "
            f"{history.steps[-1]}):</div>{last}</div>")


def _concrete(snapshot) -> dict | None:
    """name -> numpy value, or None if any value is abstract (a tracer)."""
    out = {}
    for k in snapshot.metrics + snapshot.scalars:
        try:
            out[k] = np.asarray(snapshot[k])
        except Exception:  # a tracer, or a shape struct: nothing to show
            return None
    return out


def _table(layers, values: dict) -> str:
    e = html.escape
    cols = [k for k, v in values.items() if v.ndim == 1 and len(v) == len(layers)]
    rows = list(range(len(layers)))
    if len(rows) > ROWS:
        rows = rows[:ROWS // 2] + [None] + rows[-(ROWS // 2):]
    body = "".join(
        f"<tr><td>…</td>{'<td>…</td>' * len(cols)}</tr>" if i is None else
        f"<tr><td>{i + 1}: {e(layers[i])}</td>"
        + "".join(f"<td>{fmt(float(values[k][i]))}</td>" for k in cols) + "</tr>"
        for i in rows)
    more = [k for k, v in values.items() if v.ndim > 1]
    note = (f"<div>Not in the table: {e(', '.join(f'{k} {values[k].shape}' for k in more))}"
            "</div>" if more else "")
    return ("<table class=gf-table><tr><th>layer</th>" + "".join(f"<th>{e(k)}</th>" for k in cols)
            + f"</tr>{body}</table>{note}")


def _scalars(values: dict, snapshot) -> str:
    items = [f"{html.escape(k)} = {fmt(float(values[k]))}" for k in snapshot.scalars
             if values[k].ndim == 0]
    if len(items) > ROWS:
        items = items[:ROWS // 2] + ["…"] + items[-(ROWS // 2):]
    return f"<div>Whole network: {'; '.join(items)}</div>" if items else ""


def _heatmap(history) -> str:
    """The grad_norm heatmap as an inline PNG, or a line saying why there is none."""
    if HEATMAP not in history.metrics or np.ndim(history[HEATMAP]) != 2:
        return f"<div>No {HEATMAP} to draw.</div>"
    from matplotlib.figure import Figure

    from ..plot.heatmap import heatmap

    fig = Figure(figsize=(6, 3 + min(len(history.layers), 30) * 0.05))
    heatmap(history, HEATMAP, ax=fig.add_subplot())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    return (f'<img alt="{HEATMAP} heatmap" src="data:image/png;base64,'
            f'{base64.b64encode(buf.getvalue()).decode()}">')


RENDERERS = {"snapshot": snapshot_html, "history": history_html}
