"""`gf.report`: the report `python -m gradflow.run` writes (summary table, diagnosis, gradient
noise and curvature, figures), for any History or dict of Histories, as one self-contained HTML
file (figures embedded as PNG data URIs, so the file can be mailed or opened offline).

    history = gf.History()
    for step, (x, y) in enumerate(batches):
        history.append(step, measured_step(model, optimizer, x, y))
    gf.report(history, "report.html")
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from ..analysis import theory
from ..analysis.diagnose import diagnose
from ..history import History
from ..models.options import base_arch
from ..plot import png_bytes
from .page import document, figure_html, table_html, write_text
from .run_report import diagnosis_html, run_figures
from .text import flow, fmt

_HEAD = ("name", "records", "steps", "layers", "loss at first", "loss at last",
         "accuracy at last", "error ratio at first", "error ratio at last", "verdict")
_DEFINITIONS = {
    "error_slope": "Error slope: the least-squares change of log10 ‖∂L/∂z‖ per layer toward the "
                   "input over the hidden layers at the first record (negative: vanishing); "
                   "theory: the mean-field prediction, where the History's meta names a "
                   "network it covers",
    "diagnosis": "gf.diagnose findings at the first record and at the last, each naming its "
                 "moment (init, step N, end (step N))",
    "verdict": "the gradient flow in short, at the first record and at the last, and \"did "
               "not learn\" when the loss did not fall (gf.diagnose's not_learning)",
}


def report(histories, path, *, title: str | None = None) -> Path:
    """Writes the report of one History, or of several side by side, as one HTML file.

    The page is the one `python -m gradflow.run` writes: a summary table, the diagnosis, the
    gradient noise and curvature section (where the Histories hold such quantities) and the
    figures (error signal and weight-gradient maps, per-layer profiles, loss and accuracy
    curves, one error-signal heatmap per History), embedded as PNG data URIs. What a History
    lacks (accuracy, error norms of a model that could not be probed, ...) is left out, and
    the page says what. Nothing else is written.

    Args:
      histories: a History (e.g. grown with `History.append` in your own loop, or from
        `gf.train`), or a dict name -> History to compare several.
      path: the HTML file to write (replaced if it exists); its folder must exist.
      title: the page's heading; default "Gradient flow: " and the names.

    Returns:
      `path` as a Path.

    Raises:
      TypeError: if `histories` is not a History or a dict of Histories with str names.
      ValueError: if there is no History, one has no records, or `path` is a folder or in a
        folder that does not exist.

    Example:
      >>> snap = gf.Snapshot(("a", "b"), {"grad_norm": np.array([1.0, 0.1])},
      ...                    {"loss": np.float32(2.3)})
      >>> history = gf.History(); history.append(0, snap); history.append(10, snap)
      >>> gf.report(history, "report.html")  # doctest: +SKIP
      PosixPath('report.html')
    """
    runs, path = _histories(histories), _target(path)
    summary = _summary(runs)
    figures, skipped = [], []

    def save(name, fig, fig_title, caption, to=figures):
        to.append(figure_html(fig_title, caption, png_bytes(fig)))

    section = run_figures(runs, summary, save, skipped)
    title = title or "Gradient flow: " + ", ".join(runs)
    write_text(path, document(title, _body(title, runs, summary, section, figures, skipped)))
    return path


def _histories(histories) -> dict:
    """name -> History, checked."""
    if isinstance(histories, History):
        histories = {str(histories.meta.get("arch") or "history"): histories}
    if not isinstance(histories, dict):
        raise TypeError(f"gf.report takes a History or a dict name -> History, not "
                        f"{type(histories).__name__}")
    if not histories:
        raise ValueError("gf.report: no History given (the dict is empty)")
    for name, h in histories.items():
        if not isinstance(name, str) or not isinstance(h, History):
            raise TypeError(f"gf.report: {name!r} -> {type(h).__name__}: the dict must map str "
                            f"names to Histories")
        if not len(h):
            raise ValueError(f"gf.report: History {name!r} has no records (append some first)")
    return dict(histories)


def _target(path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"gf.report: {path} is a folder; give the HTML file to write")
    if not path.parent.is_dir():
        raise ValueError(f"gf.report: the folder {path.parent} does not exist")
    return path


def _summary(runs: dict) -> dict:
    """The parts of a run's summary (as summary.json has them) that Histories alone give."""
    first = next(iter(runs.values())).meta
    return {"config": {"steps": None, "lr": first.get("lr"),
                       "batch_size": first.get("batch_size")},
            "data": {"num_classes": first.get("num_classes"), "problem": None},
            "definitions": _DEFINITIONS,
            "archs": [_entry(name, h) for name, h in runs.items()]}


def _entry(name: str, h: History) -> dict:
    """One History's row of the summary: its numbers, diagnosis and verdict."""
    diverged = h.meta.get("diverged_at_step")
    init = diagnose(h.snapshot(0))
    end = diagnose(h) if len(h) > 1 else []
    first = init[0].moment if init else "init"
    if _error_ratio(h, 0) is None and _error_ratio(h, -1) is None:
        verdict = "error signal not measured"  # the flow cannot be judged
    elif not end or flow(end) == flow(init):
        verdict = f"at {first}{f' and {end[0].moment}' if end else ''}: {flow(init)}"
    else:
        verdict = f"at {first}: {flow(init)}; at {end[0].moment}: {flow(end)}"
    if any(f.kind == "not_learning" for f in end):
        verdict += "; did not learn"
    if diverged is not None:
        verdict += f"; diverged at step {diverged}"
    return {"arch": name, "status": "diverged" if diverged is not None else "ok",
            "diverged_at": diverged, "records": len(h), "layers": len(h.layers),
            "steps": (int(h.steps[0]), int(h.steps[-1])),
            "loss": [_scalar(h, "loss", 0), _scalar(h, "loss", -1)],
            "accuracy": _scalar(h, "accuracy", -1),
            "error_ratio": [_error_ratio(h, 0), _error_ratio(h, -1)],
            **_slopes(h), "verdict": verdict, "diagnosis_init": [str(f) for f in init],
            "diagnosis_end": [str(f) for f in end]}


def _scalar(h: History, name: str, record: int):
    v = float(h[name][record]) if name in h.scalars else math.nan
    return v if math.isfinite(v) else None


def _error_ratio(h: History, record: int):
    """error_norm of the first layer over the last one's, or None."""
    if "error_norm" not in h.metrics:
        return None
    e = np.asarray(h["error_norm"][record], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = e[0] / e[-1]
    return float(r) if np.isfinite(r) else None


def _slopes(h: History) -> dict:
    """The error signal's slope at the first record, measured and by mean-field theory."""
    measured = predicted = math.nan
    if "error_norm" in h.metrics and len(h.layers) > 3:
        m = h.meta
        with np.errstate(divide="ignore", invalid="ignore"):
            measured = theory.slope_toward_input(h["error_norm"][0][1:-1])
            if {"arch", "init", "activation"} <= m.keys():
                pred = theory.predicted_profile("error_norm", len(h.layers),
                                                arch=base_arch(m["arch"]), init=m["init"],
                                                activation=m["activation"])
                if pred is not None:
                    predicted = theory.slope_toward_input(pred[1:-1])
    return {k: float(v) if math.isfinite(v) else None
            for k, v in (("error_slope_init", measured), ("error_slope_theory", predicted))}


def _rows(summary: dict) -> tuple[tuple, list[tuple], list[str]]:
    """The summary table's head and rows without the columns no History has, and those."""
    rows = [(a["arch"], a["records"], "–".join(map(str, dict.fromkeys(a["steps"]))), a["layers"],
             fmt(a["loss"][0], ".4g"), fmt(a["loss"][1], ".4g"), fmt(a["accuracy"], ".1%"),
             fmt(a["error_ratio"][0], ".1e"), fmt(a["error_ratio"][1], ".1e"), a["verdict"])
            for a in summary["archs"]]
    keep = [i for i in range(len(_HEAD)) if any(r[i] != "—" for r in rows)]
    gone = [_HEAD[i] for i in range(len(_HEAD)) if i not in keep]
    return (tuple(_HEAD[i] for i in keep), [tuple(r[i] for i in keep) for r in rows], gone)


def _records(h: History) -> str:
    if len(h) == 1:
        return f"1 record, at step {h.steps[0]}"
    return f"{len(h)} records, steps {h.steps[0]}–{h.steps[-1]}"


def _layers(runs: dict) -> str:
    e = html.escape
    return "".join(
        f"<details><summary>{e(name)}: {len(h.layers)} layers, input first</summary><ol>"
        + "".join(f"<li><code>{e(layer)}</code></li>" for layer in h.layers) + "</ol></details>"
        for name, h in runs.items())


def _body(title: str, runs: dict, summary: dict, section: str, figures: list[str],
          skipped: list[str]) -> str:
    e = html.escape
    head, rows, gone = _rows(summary)
    bad = ["bad" if a["status"] != "ok" else "" for a in summary["archs"]]
    not_recorded = (f" Not recorded, so not shown: {e(', '.join(gone))}." if gone else "")
    notes = "".join(f"<p class=note>{e(s)}</p>" for s in skipped)
    quantities = f"\n<h2>Gradient noise and curvature</h2>{section}" if section else ""
    return f"""<h1>{e(title)}</h1>
<p>{len(runs)} {'History' if len(runs) == 1 else 'Histories'}: {e('; '.join(
        f"{n}: {_records(h)}" for n, h in runs.items()))}.</p>
<h2>Summary</h2>{table_html(head, rows, row_class=bad)}
<p class=note><b>Error ratio</b>: ‖∂L/∂z‖ of layer 1 over that of the last layer, at the first
and the last record (≪ 1: vanishing toward the input, ≫ 1: exploding).
<b>Loss, accuracy</b>: of the recorded batch.{not_recorded}</p>
<h2>Diagnosis</h2>{diagnosis_html(summary)}{quantities}
<h2>Layers</h2>{_layers(runs)}
<h2>Figures</h2>{notes}{''.join(figures)}"""
