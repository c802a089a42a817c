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
    """The summary as text cells, shared by the text table and the HTML page.

    Args:
      res: a Sweep.

    Returns:
      (header, rows): per arch and depth the median attenuation over the seeds, its min – max
      and the theory; with training also the median final loss and the diverged seeds.
    """
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

    Example:
      >>> from gradflow.experiments.sweep_records import Cell, Sweep
      >>> res = Sweep(config={}, archs=("plain",), depths=(8, 16), seeds=(0,), steps=0,
      ...             probe_batch=8, theory={"plain": [3e-2, 6e-4]},
      ...             cells=[Cell("plain", 8, 0, attenuation=2e-2),
      ...                    Cell("plain", 16, 0, attenuation=4e-4)])
      >>> print(table(res))
      arch   depth  attenuation          min – max   theory
      -----...
      plain      8      2.0e-02  2.0e-02 – 2.0e-02  3.0e-02
      plain     16      4.0e-04  4.0e-04 – 4.0e-04  6.0e-04
      attenuation: error signal ‖∂L/∂z‖ at layer 1 / at the output layer, at init, median ...
    """
    head, rows = table_rows(res)
    return text_table(head, rows, footer=(
        f"attenuation: error signal ‖∂L/∂z‖ at layer 1 / at the output layer, at init, median "
        f"over {len(res.seeds)} seeds (≪ 1: vanishing, ≫ 1: exploding); theory: mean-field "
        f"prediction, {theory_coverage(res)}"))


def theory_coverage(res) -> str:
    """Which archs of a sweep the theory column (and the figure's dashed lines) covers.

    Args:
      res: a Sweep.

    Returns:
      E.g. "given for plain, residual (— where it does not apply)", from the values present.

    Example:
      >>> from gradflow.experiments.sweep_records import Sweep
      >>> res = Sweep(config={}, archs=("plain", "bn_separable"), depths=(8,), seeds=(0,),
      ...             steps=0, probe_batch=8, theory={"plain": [0.1], "bn_separable": [None]})
      >>> theory_coverage(res)
      'given for plain (— where it does not apply)'
    """
    covered = [a for a in res.archs if any(v is not None for v in res.theory.get(a, []))]
    return (f"given for {', '.join(covered)} (— where it does not apply)" if covered
            else "none applies to these archs (—)")


def html_report(res, png: bytes, data_description: str = "") -> str:
    """The sweep's standalone report.html: settings, the table and the figure.

    Args:
      res: a Sweep (its `run` holds the command, start and device).
      png: the figure's PNG bytes, inlined as base64.
      data_description: a line about the data (`verdict.describe`); "" for none.

    Returns:
      The page as a string.
    """
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
{e(d["theory"])}; in this sweep {e(theory_coverage(res))}. <b>Seeds</b>: {e(d["seeds"])}.</p>
<h2>Figure</h2>{figure_html("Attenuation against depth", "", png)}""")


def write(out, res, data_description: str = "") -> list[str]:
    """Writes sweep.json, sweep.png and report.html into the directory `out`.

    Args:
      out: an existing directory.
      res: a Sweep.
      data_description: a line about the data for the page; "" for none.

    Returns:
      The names written.

    Example:
      >>> res = depth_sweep.depth_sweep(cfg, [8, 16, 32], steps=0)  # doctest: +SKIP
      >>> write("runs/sweep", res)  # doctest: +SKIP
      ['sweep.json', 'sweep.png', 'report.html']
    """
    out = Path(out)
    res.save(out / "sweep.json")
    png = png_bytes(sweep_figure(res))
    write_atomic(out / "sweep.png", png)
    write_text(out / "report.html", html_report(res, png, data_description))
    return ["sweep.json", "sweep.png", "report.html"]
