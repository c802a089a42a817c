"""Self-contained HTML pages: one style, figures embedded as base64 PNG (so a page opens offline),
and `Page`, which collects an experiment's sections and writes its files.

    page = Page(out, "Residual connections", meta)
    page.text("What it shows ...")
    page.table(head, rows, caption)
    page.figure("curves.png", fig, "Loss and accuracy", "caption")
    page.write("residual.json", numbers)
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from .._io import write_atomic, write_json
from ..plot import png_bytes

CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;font-size:14px;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child,
td:last-child,th:last-child{text-align:left}th{background:#f2f2f2}img{max-width:100%;
border:1px solid #eee;margin:.5em 0}code{background:#f4f4f4;padding:1px 4px}
.bad td{color:#a00}.note{color:#555;font-size:14px}
.live{background:#fff4d6;border:1px solid #e0c060;padding:.5em .8em}
pre{background:#f7f7f7;padding:.6em;font-size:12.5px;overflow-x:auto}"""

e = html.escape
REFRESH_S = 10  # a page still being updated asks the browser to reload it this often


def document(title: str, body: str, refresh: int | None = None) -> str:
    """A complete HTML page with gradflow's style.

    Args:
      title: the page title (escaped here).
      body: the page's HTML body (already escaped by the caller).
      refresh: ask the browser to reload the page every `refresh` seconds (a page that is
        still being updated); default never.

    Returns:
      The page as a string.
    """
    reload = f'<meta http-equiv="refresh" content="{int(refresh)}">\n' if refresh else ""
    return (f'<!doctype html><html><head><meta charset="utf-8">\n{reload}<title>gradflow — '
            f"{e(title)}</title>\n<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def figure_html(title: str, caption: str, png: bytes) -> str:
    """A figure section: heading, caption and the PNG inlined as base64.

    Args:
      title: the heading (escaped here).
      caption: a note under the heading; "" for none.
      png: the PNG file's bytes (`gradflow.plot.png_bytes`).

    Returns:
      The section's HTML.
    """
    return (f"<h3>{e(title)}</h3>" + (f"<p class=note>{e(caption)}</p>" if caption else "")
            + f'<img alt="{e(title)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}">')


def table_html(head, rows, *, row_class=None) -> str:
    """An HTML table of text cells.

    Args:
      head: the column titles.
      rows: one sequence of cells per row (converted with str and escaped).
      row_class: the CSS class of each row ("" or None for none), or None.

    Returns:
      The table's HTML.

    Example:
      >>> table_html(("arch", "loss"), [("plain", 2.3)])
      '<table><tr><th>arch</th><th>loss</th></tr><tr><td>plain</td><td>2.3</td></tr></table>'
    """
    body = "".join(
        f"<tr{f' class={row_class[i]}' if row_class and row_class[i] else ''}>"
        + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for i, r in enumerate(rows))
    return ("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>" + body
            + "</table>")


def write_text(path, text: str) -> Path:
    """Writes `text` atomically (`gradflow._io.write_atomic`).

    Args:
      path: the destination.
      text: the text, written as UTF-8.

    Returns:
      The destination as a Path.
    """
    return write_atomic(path, text)


class Page:
    """Collects an experiment's sections and writes its files into `out`.

    Args:
      out: an existing, empty directory.
      title: the page's title.
      meta: the command, start time, device and options (shown at the top and stored in JSON).

    Example:
      >>> import tempfile
      >>> page = Page(tempfile.mkdtemp(), "Residual connections", {"command": "python -m ..."})
      >>> page.heading("Results")
      >>> page.table(("arch", "loss"), [("plain", "2.30")], "after 150 steps")
      >>> page.write("numbers.json", {"loss": 2.3})
      ['numbers.json', 'report.html']
    """

    def __init__(self, out, title: str, meta: dict):
        self.out, self.title, self.meta = Path(out), title, meta
        self.parts: list[str] = []
        self.written: list[str] = []

    def heading(self, text: str):
        """Adds a section heading.

        Args:
          text: the heading (escaped here).
        """
        self.parts.append(f"<h2>{e(text)}</h2>")

    def text(self, text: str):
        """Adds a paragraph.

        Args:
          text: the paragraph (escaped here).
        """
        self.parts.append(f"<p>{e(text)}</p>")

    def pre(self, text: str):
        """Adds preformatted text (a text table, a model summary).

        Args:
          text: the text (escaped here).
        """
        self.parts.append(f"<pre>{e(text)}</pre>")

    def table(self, head, rows, caption: str = ""):
        """Adds a table (`table_html`) and an optional note under it.

        Args:
          head: the column titles.
          rows: one sequence of cells per row.
          caption: the note; "" for none.
        """
        self.parts.append(table_html(head, rows)
                          + (f"<p class=note>{e(caption)}</p>" if caption else ""))

    def figure(self, name: str, fig, title: str, caption: str = ""):
        """Saves `fig` as `name` (PNG) in `out` and embeds it in the page; closes the figure.

        Args:
          name: the PNG's file name.
          fig: a matplotlib Figure.
          title: the section's heading.
          caption: a note under the heading; "" for none.
        """
        png = png_bytes(fig)
        write_atomic(self.out / name, png)
        self.written.append(name)
        self.parts.append(figure_html(title, caption, png))

    def write(self, json_name: str, numbers: dict) -> list[str]:
        """Writes `json_name` ({"run": meta, **numbers}) and report.html into `out`.

        Args:
          json_name: the JSON file's name.
          numbers: the experiment's numbers (made JSON-ready: NaN as null).

        Returns:
          Every file name written into `out`.
        """
        write_json(self.out / json_name, {"run": self.meta, **numbers})
        m = self.meta
        opts = ", ".join(f"{k}={v}" for k, v in m.get("options", {}).items())
        body = (f"<h1>{e(self.title)}</h1>\n<p>Command: <code>{e(m.get('command', ''))}</code>"
                f"<br>Settings: {e(opts)}<br>\nStarted {e(m.get('started', ''))} on "
                f"{e(m.get('device', ''))}; numbers in\n<code>{e(json_name)}</code>.</p>\n"
                + "".join(self.parts))
        write_text(self.out / "report.html", document(self.title, body))
        self.written += [json_name, "report.html"]
        return self.written
