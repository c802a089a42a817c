"""The depth sweep's outputs: its text table, its HTML report and the files of a sweep run."""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..experiments.depth_sweep import DEFINITIONS, Sweep


def table_rows(res: Sweep) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the summary as text cells: per arch and depth the median attenuation
    over the seeds, its min-max, the theory, and with training the median final loss."""
    head = ["arch", "depth", "attenuation", "min – max", "theory"]
    if res.steps:
        head += ["final loss", "diverged"]
    rows = []
    for r in res.rows():
        cells = [r["arch"], str(r["depth"]), _e(r["median"]),
                 f"{_e(r['min'])} – {_e(r['max'])}" if r["seeds"] else "—", _e(r["theory"])]
        if res.steps:
            cells += [_f(r["final_train_loss_median"]), f"{r['diverged']}/{len(res.seeds)}"]
        rows.append(cells)
    return head, rows


def table(res: Sweep) -> str:
    """The compact text table printed by `python -m gradflow.run --depth 8,16,...`."""
    head, rows = table_rows(res)
    rows = [head] + rows
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                             zip(row[1:], widths[1:])]))
        if k == 0:
            lines.append("-" * len(lines[0]))
    lines.append(f"attenuation: error signal ‖∂L/∂z‖ at layer 1 / at the output layer, at init, "
                 f"median over {len(res.seeds)} seeds (≪ 1: vanishing, ≫ 1: exploding); theory: "
                 "mean-field prediction (plain and bn ReLU archs)")
    return "\n".join(lines)


def _e(v) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.1e}"


def _f(v) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.3f}"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;font-size:14px;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child
{text-align:left}th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
code{background:#f4f4f4;padding:1px 4px}.note{color:#555;font-size:14px}"""


def html_report(res: Sweep, png: bytes, data_description: str = "") -> str:
    """A standalone page: settings, the table and the figure inlined as base64 PNG."""
    import base64
    import html

    e = html.escape
    head, rows = table_rows(res)
    head = [{"attenuation": "attenuation (median)", "final loss": "final loss (median)"}.get(
        h, h) for h in head]
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    conf = ", ".join(f"{k}={v}" for k, v in res.config.items() if k != "probe_stack")
    run = res.run
    what = ("at init only (one probe batch of "
            f"{res.probe_batch} per cell)" if not res.steps else f"trained {res.steps} steps")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>gradflow — depth sweep {e(",".join(map(str, res.depths)))}</title>
<style>{_CSS}</style></head><body>
<h1>Depth sweep: error-signal attenuation against depth</h1>
<p>Command: <code>{e(run.get("command", ""))}</code><br>Settings: {e(conf)}<br>
Depths {e(", ".join(map(str, res.depths)))}; seeds {e(", ".join(map(str, res.seeds)))}; {e(what)}.
<br>{"Data: " + e(data_description) + "<br>" if data_description else ""}
Started {e(str(run.get("started", "")))} on {e(str(run.get("device", "")))}; took
{res.elapsed_s:.0f} s.</p>
<h2>Summary</h2><table><tr>{"".join(f"<th>{e(h)}</th>" for h in head)}</tr>{body}</table>
<p class=note><b>Attenuation</b>: {e(DEFINITIONS["attenuation"])}. <b>Theory</b>:
{e(DEFINITIONS["theory"])}. <b>Seeds</b>: {e(DEFINITIONS["seeds"])}.</p>
<h2>Figure</h2>
<img alt="depth sweep" src="data:image/png;base64,{base64.b64encode(png).decode()}">
</body></html>
"""


def write(out, res: Sweep, data_description: str = "") -> list[str]:
    """Writes sweep.json, sweep.png and report.html into the directory `out`; returns the
    names written."""
    from ..plot import depth_sweep as figure
    from .run_report import png_bytes

    out = Path(out)
    res.save(out / "sweep.json")
    png = png_bytes(figure(res))
    (out / "sweep.png").write_bytes(png)
    page = html_report(res, png, data_description)
    tmp = out / "report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out / "report.html")
    return ["sweep.json", "sweep.png", "report.html"]
