"""What a side-by-side run found, in words and numbers: error ratios, final training loss and
accuracy, the measured and predicted error-signal slope, a one-line verdict per architecture, and
the content of summary.json.

    results = [side_by_side.train_arch(arch, cfg, ds) for arch in cfg.archs]
    summary = summarize(results, cfg, ds)
"""
from __future__ import annotations

import math

import numpy as np

from ..analysis import advice, divergence, theory
from ..analysis.diagnose import CHANCE_MARGIN, INPUT_FIX, Finding, diagnose, moment
from ..analysis.inputs import degenerate_input
from ..history import History
from ..models.options import base_arch
from ..report.text import flow
from .side_by_side import BN_CALIBRATION, FINAL_WINDOW, ArchResult, Config


def error_ratio(hist: History, record: int):
    """The error ratio: error_norm of the first layer over the last layer's, at one record.

    Args:
      hist: a History.
      record: the record's index (0: init, -1: the last).

    Returns:
      The ratio (< 1: vanishing toward the input), or None where it is not finite.

    Example:
      >>> rec = {"error_norm": np.array([1e-3, 0.1, 1.0])}
      >>> error_ratio(gf.History.from_records(("a", "b", "c"), [0], [rec]), 0)
      0.001
    """
    e = np.asarray(hist["error_norm"][record], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = e[0] / e[-1]
    return float(r) if np.isfinite(r) else None


def final_train(hist: History):
    """The final training loss and accuracy.

    Args:
      hist: a History with "loss" and "accuracy".

    Returns:
      (loss, accuracy), each the mean over the records in the last FINAL_WINDOW of the steps,
      or None where not finite.
    """
    last = hist.steps[-1]
    sel = hist.steps >= last - FINAL_WINDOW * (last + 1)
    out = [float(np.mean(hist[k][sel])) for k in ("loss", "accuracy")]
    return tuple(v if math.isfinite(v) else None for v in out)


def verdict(a: dict, best_acc: float, num_classes: int) -> str:
    """One line: the gradient flow at each moment diagnosed (init, end) and whether the arch
    learned; the same findings as its diagnosis (`arch_summary`'s "flow" and "learned").

    Args:
      a: one architecture's `arch_summary`.
      best_acc: the best held-out accuracy of the run ("learns best" within 2 points of it).
      num_classes: the number of classes (chance level).

    Returns:
      The verdict; for a failed, interrupted or diverged arch, what happened.

    Example:
      >>> a = dict(status="ok", flow={"init": "vanishing error signal (1e-06 at layer 1)",
      ...          "end (step 99)": "vanishing error signal (1e-05 at layer 1)"},
      ...          learned=False, held_out_accuracy=0.11)
      >>> verdict(a, best_acc=0.8, num_classes=10)
      'at init: vanishing error signal (1e-06 at layer 1); at end (step 99): vanishing error signal
      (1e-05 at layer 1); did not learn'
    """
    chance, chance_loss = 1 / num_classes, math.log(num_classes)
    if a["status"] == "failed":
        return f"failed: {a['error']}"
    moments = list((a.get("flow") or {}).items())
    if len(moments) == 2 and moments[0][1] == moments[1][1]:
        moments = [(f"{moments[0][0]} and {moments[1][0]}", moments[0][1])]
    lead = "; ".join(f"at {m}: {p}" for m, p in moments)
    if a.get("input_problem"):
        lead = f"degenerate input: {a['input_problem']}"
    lead = f"{lead}; " if lead else ""
    if a["status"] == "interrupted":
        return f"{lead}interrupted after {a['interrupted_at']} steps (resume with --resume)"
    if a["status"] == "diverged":
        why = "loss became non-finite"
        if a["initial_loss"] is not None and a["initial_loss"] > 2 * chance_loss:
            why = (f"initial loss {a['initial_loss']:.3g} ≫ chance {chance_loss:.2f}: "
                   "the forward signal explodes")
        where = a.get("nonfinite_layer")
        at = f", first non-finite at layer '{where}' (backward order)" if where else ""
        return f"{lead}diverged by step {a['diverged_at']}{at} ({why})"
    acc, learned = a["held_out_accuracy"], a.get("learned")
    if acc is None:
        learn = "not evaluated"
    elif learned is False or (learned is None and acc < chance + CHANCE_MARGIN):
        learn = "did not learn"
    elif acc >= best_acc - 0.02:
        learn = "learns best"
    else:
        learn = "learns"
    return f"{lead}{learn}"


def arch_summary(res: ArchResult, num_classes: int | None = None,
                 input_problem: str | None = None) -> dict:
    """One architecture's entry in summary.json, without its verdict (`summarize` adds it).

    Args:
      res: its ArchResult.
      num_classes: the number of classes: learning is judged by the held-out accuracy.
      input_problem: why the input cannot be learned from (`degenerate_input`), or None; it
        is then the diagnosis at every moment.

    Returns:
      A JSON-ready dict: status, parameters, final training and held-out numbers, error ratios,
      divergence, slopes (`slopes`), `gf.diagnose` findings at init and at the end (each
      naming its moment), the flow at each (`flow`) and whether it learned. A failed one (no
      History) has status "failed", its error and None numbers.
    """
    if res.history is None:
        return {"arch": res.arch, "status": "failed", "error": res.error or "unknown",
                **{k: None for k in _NUMBERS}}
    h = res.history
    ended = res.status == "ok"
    loss, acc = final_train(h) if ended else (None, None)
    first_loss = float(h["loss"][0])
    init, end = diagnose(h.snapshot(0)), _end_findings(res, num_classes)
    learned = not any(f.kind == "not_learning" for f in end) if ended else None
    if input_problem:  # it explains every other finding
        init = end = [Finding("degenerate_input", (), input_problem, INPUT_FIX)]
    moments = {} if input_problem else {init[0].moment: flow(init)}
    if ended and not input_problem and end[0].moment != init[0].moment:
        moments[end[0].moment] = flow(end)
    held = res.held_out_accuracy
    return {
        "arch": res.arch, "status": res.status,
        "params": res.params, "layers": len(h.layers),
        "final_train_loss": loss, "final_train_accuracy": acc,
        "held_out_loss": res.held_out_loss, "held_out_accuracy": held,
        "error_ratio_init": error_ratio(h, 0),
        "error_ratio_end": error_ratio(h, -1) if ended else None,
        "init_step": int(h.steps[0]), "end_step": int(h.steps[-1]),
        "initial_loss": first_loss if math.isfinite(first_loss) else None,
        "diverged_at": res.diverged_at, "nonfinite_layer": res.nonfinite_layer,
        "nonfinite_forward_layer": res.nonfinite_forward_layer,
        "interrupted_at": res.interrupted_at, "records": len(h.steps),
        "train_s": round(res.train_s, 2), "time_s": round(res.time_s, 2),
        "history": f"{res.arch}_history.npz", "heatmap": f"{res.arch}_heatmap.png",
        **slopes(h), "diagnosis_init": [str(f) for f in init],
        "diagnosis_end": [str(f) for f in end], "flow": moments, "learned": learned,
        "input_problem": input_problem,
    }


def _end_findings(res: ArchResult, num_classes: int | None) -> list[Finding]:
    """gf.diagnose at the last record, learning judged by the held-out accuracy; a diverged
    arch's History stops before the non-finite record, so its divergence (and where it
    appeared) is stated first."""
    found = diagnose(res.history, num_classes=num_classes,
                     held_out_accuracy=res.held_out_accuracy)
    if res.diverged_at is None:
        return found
    where = divergence.describe(res.nonfinite_layer, res.nonfinite_forward_layer)
    layer = res.nonfinite_layer
    div = Finding("divergence", (layer,) if layer else (),
                  f"loss or gradients became non-finite by step {res.diverged_at}"
                  + (f"; {where}" if where else ""),
                  advice.divergence(advice.infer(res.history)), float(res.diverged_at),
                  moment(res.diverged_at))
    return [div] + [f for f in found if f.kind not in ("healthy", "divergence")]


def slopes(h: History) -> dict:
    """The error signal's slope at init, measured and predicted by mean-field theory.

    Args:
      h: a History whose meta holds arch, init and activation.

    Returns:
      {"error_slope_init", "error_slope_theory"}: the change of log10 ||dL/dz|| per layer
      toward the input over the hidden layers; None where not finite or no theory applies.
    """
    m = h.meta
    with np.errstate(divide="ignore", invalid="ignore"):  # zero norms: no slope, no warning
        measured = theory.slope_toward_input(h["error_norm"][0][1:-1])
        pred = theory.predicted_profile("error_norm", len(h.layers), arch=base_arch(m["arch"]),
                                        init=m["init"], activation=m["activation"])
        predicted = theory.slope_toward_input(pred[1:-1]) if pred is not None else math.nan
    return {"error_slope_init": measured if math.isfinite(measured) else None,
            "error_slope_theory": predicted if math.isfinite(predicted) else None}


_NUMBERS = ("params", "final_train_loss", "final_train_accuracy", "held_out_loss",
            "held_out_accuracy", "error_ratio_init", "error_ratio_end", "initial_loss",
            "diverged_at", "nonfinite_layer", "interrupted_at")


def class_shares(labels, num_classes: int) -> list[float]:
    """The fraction of each class among `labels` (the majority-class rate is their maximum).

    Args:
      labels: integer class labels.
      num_classes: the number of classes.

    Returns:
      `num_classes` fractions summing to 1 (all 0 for no labels).

    Example:
      >>> class_shares(np.array([0, 0, 1, 2]), 3)
      [0.5, 0.25, 0.25]
    """
    counts = np.bincount(np.asarray(labels, np.int64).ravel(), minlength=num_classes)
    return [float(c) / max(int(counts.sum()), 1) for c in counts[:num_classes]]


def summarize(results: list[ArchResult], cfg: Config, ds) -> dict:
    """summary.json's content.

    Args:
      results: one ArchResult per architecture, in the run's order.
      cfg: the run's settings.
      ds: the Dataset.

    Returns:
      A JSON-ready dict: config, data, definitions, and per arch its numbers, verdict and
      diagnosis (NaN as None).

    Example:
      >>> cfg = Config(archs=("plain",))
      >>> ds = gf.data.synthetic(cfg.seed, n_train=256, n_test=64)
      >>> results = [side_by_side.train_arch(a, cfg, ds) for a in cfg.archs]  # doctest: +SKIP
      >>> results = [ArchResult("plain", error="MemoryError")]  # one that failed
      >>> summary = summarize(results, cfg, ds)
      >>> sorted(summary), summary["archs"][0]["verdict"]
      (['archs', 'config', 'data', 'definitions'], 'failed: MemoryError')
    """
    problem = degenerate_input(ds.x_train, ds.num_classes)
    archs = [arch_summary(r, ds.num_classes, problem) for r in results]
    accs = [a["held_out_accuracy"] for a in archs if a["held_out_accuracy"] is not None]
    for a in archs:
        a["verdict"] = verdict(a, max(accs, default=1.0), ds.num_classes)
    config = {k: v for k, v in vars(cfg).items() if k != "extra"}
    config["archs"] = ",".join(cfg.archs)
    return {
        "config": config,
        "data": {"name": ds.name, "n_train": len(ds.x_train), "n_test": len(ds.x_test),
                 "image_shape": list(ds.image_shape), "num_classes": ds.num_classes,
                 "description": describe(ds), "problem": problem,
                 "held_out_class_shares": class_shares(ds.y_test, ds.num_classes)},
        "definitions": {
            "error_ratio": "error_norm (‖∂L/∂z‖) of layer 1 divided by that of the last layer, "
                           "on one training batch; init = first record, end = last record",
            "final_train": f"mean loss/accuracy of the recorded training batches in the last "
                           f"{FINAL_WINDOW:.0%} of the steps",
            "held_out": f"loss/accuracy on the held-out split in inference mode; BatchNorm "
                        f"running statistics re-estimated on {BN_CALIBRATION} training images",
            "error_slope": "least-squares change of log10 ‖∂L/∂z‖ per layer toward the input over "
                           "the hidden layers at init (negative: vanishing); theory: the "
                           "mean-field prediction (gradflow.theory; plain and BN-ReLU only)",
            "diagnosis": "gradflow.diagnose findings at init and at the end of training, each "
                         "naming its moment (init, end (step N), step N); learning is judged "
                         "by the held-out accuracy",
            "verdict": "the diagnosis in short: the gradient flow at init and at the end, and "
                       "whether the arch learned (held-out accuracy at least "
                       f"{CHANCE_MARGIN:.0%} above chance)",
        },
        "archs": archs,
    }


def describe(ds) -> str:
    """One line about the data, for the reports.

    Args:
      ds: a Dataset.

    Returns:
      Its name, what it is, sizes, image shape and classes.

    Example:
      >>> describe(gf.data.synthetic(0, n_train=256, n_test=64))
      'synthetic (two oriented gratings per image, the class is which pair): 256 training and 64
      held-out 16×16×3 images, 10 classes'
    """
    shape = "×".join(map(str, ds.image_shape))
    what = ("two oriented gratings per image, the class is which pair" if ds.name == "synthetic"
            else ds.name)
    return (f"{ds.name} ({what}): {len(ds.x_train)} training and {len(ds.x_test)} held-out "
            f"{shape} images, {ds.num_classes} classes")
