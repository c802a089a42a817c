"""The run directory and the report of `python -m gradflow.run`: Histories, figures,
summary.json, report.html, and the text printed at the end (summary table and diagnosis).

Inputs are the per-architecture Histories and the run's summary (the content of summary.json,
made by `gradflow.experiments.verdict.summarize`); nothing here trains or measures.
"""
from __future__ import annotations

import html

import numpy as np

from .._io import write_atomic, write_json
from ..analysis.diagnose import INPUT_FIX, Finding
from ..plot import comparison_grid, curves, grad_histograms, heatmap, png_bytes, profiles
from ..plot import training_quantities
from ..plot._style import label
from ..plot.quantities import CURVATURE, NOISE, measured_records
from ..quantities.histograms import HISTOGRAM_METRICS
from .page import REFRESH_S, document, figure_html, table_html, write_text
from .text import fmt, quantity_sentences, text_table


def write_run(out, histories: dict, summary: dict, live: str | None = None) -> list[str]:
    """Writes a run's files into the directory `out`.

    Args:
      out: the run directory (existing).
      histories: arch -> History of every architecture that trained (failed ones are absent).
      summary: summary.json's content (`verdict.summarize`): each arch's status, divergence
        step and held-out accuracy label the figures.
      live: for a run still training, the banner at the top of report.html (e.g. "running —
        plain at step 120 of 600"): the page then reloads itself every
        `page.REFRESH_S` seconds, and only the figures and report.html are written (the
        Histories and summary.json are left to the end).

    Returns:
      The names written: `<arch>_history.npz`, `<arch>_heatmap.png`, the comparison grids,
      profiles, curves, summary.json and report.html; where the Histories hold gradient noise
      or curvature (`--noise`, `--curvature`), also `quantities.png` and, per architecture
      with a measured gradient histogram, `<arch>_grad_hist.png`, in the report's section
      "Gradient noise and curvature".

    Example:
      >>> results = [side_by_side.train_arch(a, cfg, ds) for a in cfg.archs]  # doctest: +SKIP
      >>> summary = verdict.summarize(results, cfg, ds)  # doctest: +SKIP
      >>> write_run("runs/demo", {r.arch: r.history for r in results
      ...                         if r.history is not None}, summary)  # doctest: +SKIP
      ['plain_history.npz', ..., 'summary.json', 'report.html']
    """
    from pathlib import Path

    out = Path(out)
    written, figures = [], []
    def save(name, fig, title, caption, to=figures):
        png = png_bytes(fig)
        write_atomic(out / name, png)
        written.append(name)
        to.append(figure_html(title, caption, png))

    for arch, h in histories.items() if live is None else ():
        written.append(h.save(out / f"{arch}_history.npz").name)
    section = run_figures(histories, summary, save)
    if live is None:
        write_json(out / "summary.json", summary)
        written.append("summary.json")
    write_text(out / "report.html", html_report(summary, figures, section, live))
    return written + ["report.html"]


def run_figures(histories: dict, summary: dict, save, skipped: list | None = None) -> str:
    """Draws the figures of a run's report, in page order, through `save`.

    A History that lacks a figure's metric (absent, or NaN throughout where its model could not
    be probed) is left out of that figure, and a figure none has is not drawn; curves need
    "loss" (without "accuracy" that panel stays empty). Each omission is named in `skipped`.

    Args:
      histories: arch -> History.
      summary: summary.json's content, or a dict with the parts used here ("archs" with their
        "diverged_at" and "held_out_accuracy"; "config" "steps", "lr", "batch_size"; "data"
        "num_classes" and "held_out_class_shares"); missing parts are None.
      save: `save(name, fig, title, caption, to=...)` keeps one figure, in the page's list of
        figures or, given `to`, in that list (the noise and curvature section's).
      skipped: a list that gets one sentence per figure not drawn; default none kept.

    Returns:
      The body of the section "Gradient noise and curvature" ("" without such quantities).
    """
    skipped = [] if skipped is None else skipped
    archs = {a["arch"]: a for a in summary.get("archs", [])}
    diverged = {k: a["diverged_at"] for k, a in archs.items() if a.get("diverged_at") is not None}
    held_out = {k: a.get("held_out_accuracy") for k, a in archs.items()}
    steps = summary.get("config", {}).get("steps")
    data = summary.get("data", {})

    def measured(metric):  # unprobed models' error norms are NaN
        runs = {a: h for a, h in histories.items() if metric in h and (
            h.meta.get("probed", True) or not np.isnan(np.asarray(h[metric], float)).all())}
        left = [a for a in histories if a not in runs]
        if left:
            skipped.append(f"{label(metric)} was not measured for {', '.join(left)}; its "
                           "figures leave them out.")
        return runs

    errors, grads = measured("error_norm"), measured("grad_norm")
    if errors:
        save("comparison_error_norm.png", comparison_grid(errors, "error_norm", diverged, steps),
             "Error signal in every layer, all architectures",
             "Each panel: layers (input at the bottom) × training steps; colour is the error "
             "signal ‖∂L/∂z‖ on ONE log scale shared by all panels, so a darker band is a weaker "
             "signal. Black: exactly zero. Grey: non-finite or never reached (diverged).")
    losses = {a: h if "accuracy" in h else _with_nan(h, "accuracy")
              for a, h in histories.items() if "loss" in h}
    if histories and len(losses) < len(histories):
        skipped.append(f"No loss recorded for {', '.join(a for a in histories if a not in losses)}"
                       ": not in the loss and accuracy curves.")
    if [a for a, h in histories.items() if "loss" in h and "accuracy" not in h]:
        skipped.append("No accuracy recorded for " + ", ".join(
            a for a, h in histories.items() if "loss" in h and "accuracy" not in h)
            + ": its accuracy panel is empty.")
    if losses:
        save("curves.png", curves(losses, data.get("num_classes"), held_out, steps,
                                  class_shares=data.get("held_out_class_shares")),
             "Loss and accuracy", "Training loss and accuracy of each recorded batch (thin) and "
             "their moving average (thick); the star is the held-out accuracy after training.")
    both = tuple(m for m, runs in (("error_norm", errors), ("grad_norm", grads))
                 if runs and len(runs) == len(histories))
    if both:
        save("profiles.png", profiles(histories, both, diverged=diverged),
             "Per-layer profiles at init and at the end",
             "One line per architecture, layer 1 on the input side, log scale. Top: the error "
             "signal ‖∂L/∂z‖; bottom: the weight-gradient norm ‖∂L/∂W‖."
             if len(both) == 2 else f"One line per architecture, layer 1 on the input side, log "
             f"scale: {label(both[0])}.")
    if grads:
        save("comparison_grad_norm.png", comparison_grid(grads, "grad_norm", diverged, steps),
             "Weight-gradient norm in every layer, all architectures",
             "‖∂L/∂W‖ per layer and step on one shared log scale.")
    for arch, h in errors.items():
        title = (f"{label('error_norm')} — {arch}, diverged at step {diverged[arch]}"
                 if arch in diverged else None)
        save(f"{arch}_heatmap.png", heatmap(h, "error_norm", title=title),
             f"{arch}: error-signal heatmap",
             "On its own colour scale (compare architectures on the grid above).")
    return _quantities(histories, summary, save)


def _with_nan(h, scalar: str):
    """`h`'s scalars (no metrics) plus `scalar`, NaN at every record."""
    from ..history import History

    scalars = {k: h[k] for k in h.scalars} | {scalar: np.full(len(h), np.nan)}
    return History(h.layers, {}, scalars, h.meta, steps=h.steps)


def _quantities(histories: dict, summary: dict, save) -> str:
    """The report's "Gradient noise and curvature" section (HTML, "" without such quantities):
    one sentence per quantity, the figure over training and the gradient histograms, saved
    with `save(name, fig, title, caption, to)`."""
    e = html.escape
    runs = {a: h for a, h in histories.items() if any(k in h for k in NOISE + CURVATURE)}
    if not runs:
        return ""
    cfg = summary.get("config", {})
    figures: list[str] = []
    curvature = any("hess_max_ev" in h for h in runs.values())
    save("quantities.png", training_quantities(runs, lr=cfg.get("lr")),
         "Gradient noise and curvature over training",
         "One panel per quantity, one line per architecture, at the steps that measured it "
         "(other records hold NaN and are not drawn); the noise tests and the GSNR on log "
         "scales." + (" The dashed line is the edge of stability, 2/lr for plain SGD, "
                      "(2 + 2β)/lr with momentum β." if curvature else ""), figures)
    for arch, h in runs.items():
        metric = next((m for m in HISTOGRAM_METRICS if m in h), None)
        if metric is None or not measured_records(h[metric]).size:
            continue
        save(f"{arch}_grad_hist.png", grad_histograms(h, metric),
             f"{arch}: gradient histograms per layer",
             "Left: how many gradient elements of each layer fall in each decade of magnitude, "
             "at the last step that measured them (log colour scale; the dot marks the layer's "
             "median). Right: each layer's median magnitude over the measured steps. Layers "
             "run up from the input at the bottom.", figures)
    items = "".join(f"<li><b>{e(name)}</b>: {e(text)}</li>" for name, text in quantity_sentences(
        runs, batch_size=cfg.get("batch_size"), lr=cfg.get("lr")))
    every = [f"{what} every {k} steps" for what, key in (("gradient noise", "noise_every"),
                                                          ("curvature", "curvature_every"))
             for k in sorted({h.meta[key] for h in runs.values() if h.meta.get(key)})]
    taken = (f"<p>Measured at steps 0, k, 2k, …: {e('; '.join(every))}.</p>" if every else "")
    return f"{taken}<ul>{items}</ul>{''.join(figures)}"


_HEAD = ("arch", "params", "train loss", "train acc", "held-out acc", "error ratio at init",
         "error ratio at end", "verdict")
_TEXT_HEAD = ("arch", "params", "train loss", "train acc", "held-out", "err ratio", "(end)",
              "verdict")


def table_rows(summary: dict) -> list[tuple[str, ...]]:
    """The summary table as text cells, shared by the text table and the HTML page.

    Args:
      summary: summary.json's content.

    Returns:
      One tuple of cells per architecture: arch, params, train loss, train accuracy, held-out
      accuracy, error ratio at init and at the end, verdict.
    """
    return [(a["arch"], fmt(a["params"], ","), fmt(a["final_train_loss"], ".3f"),
             fmt(a["final_train_accuracy"], ".1%"), fmt(a["held_out_accuracy"], ".1%"),
             fmt(a["error_ratio_init"], ".1e"), fmt(a["error_ratio_end"], ".1e"), a["verdict"])
            for a in summary["archs"]]


def table(summary: dict) -> str:
    """The compact text table printed at the end of a run.

    Args:
      summary: summary.json's content.

    Returns:
      The table, with a footer line saying what the error ratio is.

    Example:
      >>> a = dict(arch="plain", params=9226, final_train_loss=2.303, final_train_accuracy=0.1,
      ...          held_out_accuracy=0.1, error_ratio_init=3e-7, error_ratio_end=None,
      ...          verdict="did not learn")
      >>> print(table({"archs": [a]}))
      arch   params  train loss  train acc  held-out  err ratio  (end)  verdict
      -----...
      plain   9,226       2.303      10.0%     10.0%    3.0e-07      —  did not learn
      err ratio: error signal ‖∂L/∂z‖ at layer 1 / at the output layer, at init and at the end ...
    """
    return text_table(_TEXT_HEAD, table_rows(summary), left=(0, -1),
                      footer="err ratio: error signal ‖∂L/∂z‖ at layer 1 / at the output layer, "
                             "at init and at the end (≪ 1: vanishing, ≫ 1: exploding)")


def html_report(summary: dict, figures: list[str], quantities: str = "",
                live: str | None = None) -> str:
    """The run's standalone report.html: settings, summary table, diagnosis, the section
    "Gradient noise and curvature" (when there is one) and figures.

    Args:
      summary: summary.json's content, with its "run" entry (command, start, device, time).
      figures: HTML figure sections (`page.figure_html`), in page order.
      quantities: the body of the gradient noise and curvature section ("": none).
      live: the banner of a run still training (the page then reloads itself); None: final.

    Returns:
      The page as a string.
    """
    e = html.escape
    cfg = summary["config"]
    table = table_html(_HEAD, table_rows(summary), row_class=[
        "bad" if a["status"] not in ("ok", "training") else "" for a in summary["archs"]])
    figs = "".join(figures)
    conf = ", ".join(f"{k}={v}" for k, v in cfg.items())
    d = summary["definitions"]
    run = summary.get("run", {})
    title = f"depth {cfg['depth']} {cfg['model']}: {cfg['archs']}"
    section = f"\n<h2>Gradient noise and curvature</h2>{quantities}" if quantities else ""
    banner = f"<p class=live><b>{e(live)}</b></p>\n" if live else ""
    return document(title, f"""<h1>Gradient flow through a depth-{cfg['depth']} \
{e(cfg['model'].upper())}</h1>
{banner}<p>Command: <code>{e(run.get('command', ''))}</code><br>Settings: {e(conf)}<br>
Data: {e(summary['data']['description'])}<br>
Started {e(run.get('started', ''))} on {e(run.get('device', ''))}; training and evaluation took
{run.get('training_s', 0):.0f} s.</p>
<h2>Summary</h2>{table}
<p class=note><b>Error ratio</b>: {e(d['error_ratio'])}. 1e-06 means the input-side layer receives a
millionth of the error signal the top layer gets (vanishing); far above 1 it grows toward the input
(exploding). <b>Train loss/acc</b>: {e(d['final_train'])}. <b>Held-out acc</b>: {e(d['held_out'])}.
</p>
<h2>Diagnosis</h2>{diagnosis_html(summary)}{section}
<h2>Figures</h2>{figs}""", REFRESH_S if live else None)


def _diagnosis(summary: dict) -> list[tuple[str, list[str]]]:
    """(heading, findings) per architecture that did not fail; one line alone, naming the
    input, when the input cannot be learned from (it explains every other finding)."""
    problem = summary.get("data", {}).get("problem")
    if problem:
        return [(str(Finding("degenerate_input", (), problem, INPUT_FIX)), [])]
    out = []
    for a in summary["archs"]:
        if a["status"] == "failed":
            continue
        theory = fmt(a.get("error_slope_theory"), "+.3f")
        head = (f"{a['arch']}: error signal {fmt(a.get('error_slope_init'), '+.3f')} decades "
                f"per layer toward the input at init (mean-field theory: {theory})")
        out.append((head, a.get("diagnosis_init", []) + a.get("diagnosis_end", [])))
    return out


def diagnosis_lines(summary: dict) -> list[str]:
    """The diagnosis printed at the end of a run.

    Args:
      summary: summary.json's content.

    Returns:
      Per architecture that did not fail: a line with the measured and the mean-field error
      slope at init, then one indented line per finding at init and at the end, each naming
      its moment. Degenerate input is one line alone.
    """
    return [line for head, finds in _diagnosis(summary)
            for line in [head] + [f"  - {f}" for f in finds]]


def diagnosis_html(summary: dict) -> str:
    """The diagnosis section of report.html, as `diagnosis_lines` gives it in text.

    Args:
      summary: summary.json's content.

    Returns:
      An HTML list, one item per architecture that did not fail (with its findings at init
      and at the end), and the definitions' note.
    """
    e = html.escape
    items, archs = "", {a["arch"] for a in summary["archs"]}
    for head, finds in _diagnosis(summary):
        name, rest = head.split(": ", 1)
        head = f"<b>{e(name)}</b>: {e(rest)}" if name in archs else e(head)
        items += f"<li>{head}" + (
            f"<ul>{''.join(f'<li>{e(f)}</li>' for f in finds)}</ul>" if finds else "") + "</li>"
    d = summary["definitions"]
    return (f"<ul>{items}</ul><p class=note>{e(d.get('error_slope', ''))}. "
            f"{e(d.get('diagnosis', ''))}. <b>Verdict</b>: {e(d.get('verdict', ''))}.</p>")
