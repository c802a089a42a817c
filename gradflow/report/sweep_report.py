"""The depth sweep's outputs: its text table, its HTML report and the files of a sweep run.

The input is a `gradflow.experiments.sweep_records.Sweep` (its rows, settings, definitions and
how it was run); nothing here measures.
"""
from __future__ import annotations

import html
from pathlib import Path

from .._io import write_atomic
from ..plot import depth_sweep as sweep_figure
from ..plot import png_bytes
from .page import document, figure_html, table_html, write_text
from .text import fmt, text_table


def table_rows(res) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the summary as text cells: per arch and depth the median attenuation
    over the seeds, its min-max, the theory, and with training the median final loss."""
    head = ["arch", "depth", "attenuation", "min – max", "theory"]
    if res.steps:
        head += ["final loss", "diverged"]
    rows = []
    for r in res.rows():
        cells = [r["arch"], str(r["depth"]), fmt(r["median"], ".1e"),
                 f"{fmt(r['min'], '.1e')} – {fmt(r['max'], '.1e')}" if r["seeds"] else "—",
                 fmt(r["theory"], ".1e")]
        if res.steps:
            cells += [fmt(r["final_train_loss_median"], ".3f"),
                      f"{r['diverged']}/{len(res.seeds)}"]
        rows.append(cells)
    return head, rows


def table(res) -> str:
    """The compact text table printed by `python -m gradflow.run --depth 8,16,...`.

    Args:
      res: a Sweep.

    Returns:
      The table with a footer line saying what attenuation and theory are.
    """
    head, rows = table_rows(res)
    return text_table(head, rows, footer=(
        f"attenuation: error signal ‖∂L/∂z‖ at layer 1 / at the output layer, at init, median "
        f"over {len(res.seeds)} seeds (≪ 1: vanishing, ≫ 1: exploding); theory: mean-field "
        "prediction (plain and bn ReLU archs)"))


def html_report(res, png: bytes, data_description: str = "") -> str:
    """A standalone page: settings, the table and the figure inlined as base64 PNG."""
    e = html.escape
    head, rows = table_rows(res)
    head = [{"attenuation": "attenuation (median)", "final loss": "final loss (median)"}.get(
        h, h) for h in head]
    conf = ", ".join(f"{k}={v}" for k, v in res.config.items() if k != "probe_stack")
    run, d = res.run, res.definitions
    what = ("at init only (one probe batch of "
            f"{res.probe_batch} per cell)" if not res.steps else f"trained {res.steps} steps")
    depths = ", ".join(map(str, res.depths))
    return document(f"depth sweep {depths}", f"""\
<h1>Depth sweep: error-signal attenuation against depth</h1>
<p>Command: <code>{e(run.get("command", ""))}</code><br>Settings: {e(conf)}<br>
Depths {e(depths)}; seeds {e(", ".join(map(str, res.seeds)))}; {e(what)}.
<br>{"Data: " + e(data_description) + "<br>" if data_description else ""}
Started {e(str(run.get("started", "")))} on {e(str(run.get("device", "")))}; took
{res.elapsed_s:.0f} s.</p>
<h2>Summary</h2>{table_html(head, rows)}
<p class=note><b>Attenuation</b>: {e(d["attenuation"])}. <b>Theory</b>:
{e(d["theory"])}. <b>Seeds</b>: {e(d["seeds"])}.</p>
<h2>Figure</h2>{figure_html("Attenuation against depth", "", png)}""")


def write(out, res, data_description: str = "") -> list[str]:
    """Writes sweep.json, sweep.png and report.html into the directory `out`.

    Returns:
      The names written.
    """
    out = Path(out)
    res.save(out / "sweep.json")
    png = png_bytes(sweep_figure(res))
    write_atomic(out / "sweep.png", png)
    write_text(out / "report.html", html_report(res, png, data_description))
    return ["sweep.json", "sweep.png", "report.html"]
