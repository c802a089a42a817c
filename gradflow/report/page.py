"""An experiment's output: figures as PNG files, its numbers as JSON, and one self-contained
report.html (figures embedded as base64, as the run's report does), plus text tables for stdout.

    page = Page(out, "Residual connections", meta)
    page.text("What it shows ...")
    page.table(head, rows, caption)
    page.figure("curves.png", fig, "Loss and accuracy", "caption")
    page.write("residual.json", numbers)
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from .run_report import _CSS, _write_text, png_bytes


def text_table(head, rows, *, left: int = 1) -> str:
    """A plain-text table: the first `left` columns left-aligned, the others right-aligned."""
    rows = [tuple(map(str, r)) for r in rows]
    head = tuple(map(str, head))
    w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w[i]) if i < left else c.rjust(w[i])
                              for i, c in enumerate(r)).rstrip()
    lines = [fmt(head), "-" * len(fmt(head))] + [fmt(r) for r in rows]
    return "\n".join(lines)


def fmt(v, spec: str = ".3g") -> str:
    """`v` formatted, or an em dash for None / non-finite."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, spec)


def json_ready(obj):
    """Tuples as lists, numpy scalars as Python numbers, NaN and infinities as None."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class Page:
    """Collects an experiment's sections and writes its files into `out` (an existing, empty
    directory); `meta` holds the command, start time, device and options."""

    def __init__(self, out, title: str, meta: dict):
        self.out, self.title, self.meta = Path(out), title, meta
        self.parts: list[str] = []
        self.written: list[str] = []

    def heading(self, text: str):
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str):
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def pre(self, text: str):
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def table(self, head, rows, caption: str = ""):
        e = html.escape
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>"
                       for r in rows)
        self.parts.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head)
                          + "</tr>" + body + "</table>"
                          + (f"<p class=note>{e(caption)}</p>" if caption else ""))

    def figure(self, name: str, fig, title: str, caption: str = ""):
        """Saves `fig` as `name` (PNG) and embeds it; closes the figure."""
        png = png_bytes(fig)
        (self.out / name).write_bytes(png)
        self.written.append(name)
        e = html.escape
        self.parts.append(f"<h3>{e(title)}</h3>" + (f"<p class=note>{e(caption)}</p>"
                                                    if caption else "")
                          + f'<img alt="{e(title)}" src="data:image/png;base64,'
                          f'{base64.b64encode(png).decode()}">')

    def write(self, json_name: str, numbers: dict) -> list[str]:
        """Writes `json_name` ({"run": meta, **numbers}) and report.html; returns every file
        name written."""
        _write_text(self.out / json_name,
                    json.dumps(json_ready({"run": self.meta, **numbers}), indent=2,
                               allow_nan=False) + "\n")
        e = html.escape
        m = self.meta
        opts = ", ".join(f"{k}={v}" for k, v in m.get("options", {}).items())
        page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>gradflow — {e(self.title)}</title>
<style>{_CSS}pre{{background:#f7f7f7;padding:.6em;font-size:12.5px;overflow-x:auto}}</style>
</head><body>
<h1>{e(self.title)}</h1>
<p>Command: <code>{e(m.get('command', ''))}</code><br>Settings: {e(opts)}<br>
Started {e(m.get('started', ''))} on {e(m.get('device', ''))}; numbers in
<code>{e(json_name)}</code>.</p>
{''.join(self.parts)}
</body></html>
"""
        _write_text(self.out / "report.html", page)
        self.written += [json_name, "report.html"]
        return self.written
