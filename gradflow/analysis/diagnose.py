"""Findings from a Snapshot or History: what is wrong with the gradient flow, the evidence, and
what to do about it.

Thresholds (each a plain rule of thumb, stated so a reader can disagree):
- RATIO = 100: with one learning rate for all layers, a layer whose error signal is 100x weaker
  than the output layer's learns ~100x slower; 100x stronger, it takes steps ~100x too large.
  The error signal is compared between the first and the last weight layer; the forward signal
  (activation std) between the first and the last hidden layer.
- DEAD = 0.25: a quarter of a layer's units silent for the whole batch wastes a quarter of it.
- SATURATED: tanh units with activation std above 0.85 (sigmoid: 0.4) sit mostly in the flat
  tails, where the derivative is near zero.
- UPDATE = 0.1: an optimizer step that changes a layer's weights by more than 10% of their norm
  is unstable (~1e-3 is the usual healthy order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import divergence

RATIO = 100.0
DEAD = 0.25
SATURATED = {"tanh": 0.85, "sigmoid": 0.4}
UPDATE = 0.1
KINDS = ("vanishing", "exploding", "dead_units", "saturation", "unstable_updates", "divergence",
         "healthy")


@dataclass(frozen=True)
class Finding:
    """One thing `gf.diagnose` found: what, where, the evidence and what to do about it.

    `str(finding)` reads "kind [layers]: evidence -> suggestion".

    Attributes:
      kind: one of `KINDS`: "vanishing", "exploding", "dead_units", "saturation",
        "unstable_updates", "divergence" or "healthy".
      layers: the names of the layers concerned, in network order (empty for "healthy").
      evidence: the measurement behind the finding, in words.
      suggestion: what to try.
      value: the number judged: the error ratio layer 1 / output layer (vanishing, exploding;
        the activation-std ratio when only the forward signal explodes), the worst dead
        fraction, the largest activation std (saturation), the worst update ratio, or the step
        of divergence (NaN in a Snapshot, and for "healthy").

    Example:
      >>> f = gf.Finding("dead_units", ("stem/layer",), "40% of units silent", "use He init", 0.4)
      >>> print(f)
      dead_units [stem/layer]: 40% of units silent -> use He init
    """
    kind: str
    layers: tuple[str, ...]
    evidence: str
    suggestion: str
    value: float = float("nan")

    def __str__(self):
        where = f" [{_span(self.layers)}]" if self.layers else ""
        return f"{self.kind}{where}: {self.evidence} -> {self.suggestion}"


def _span(layers) -> str:
    return layers[0] if len(layers) == 1 else f"{layers[0]} … {layers[-1]} ({len(layers)} layers)"


def diagnose(records, *, activation: str | None = None) -> list[Finding]:
    """Judges the gradient flow of a Snapshot or History by the thresholds in this module.

    A History is judged at its last finite record and checked for divergence.

    Args:
      records: a Snapshot (`gf.probe`) or History (`gf.train`).
      activation: the hidden activation ("tanh" and "sigmoid" are checked for saturation);
        default `records.meta["activation"]`.

    Returns:
      A list of Findings: one per problem found ("divergence" alone when no record is finite),
      or a single "healthy" one.

    Example:
      >>> snap = gf.probe(gf.models.cnn("plain", 50, rngs=nnx.Rngs(0)), (x, y))  # doctest: +SKIP
      >>> [(f.kind, len(f.layers)) for f in gf.diagnose(snap)]  # doctest: +SKIP
      [('vanishing', 42)]
      >>> for finding in gf.diagnose(hist):  # doctest: +SKIP
      ...     print(finding)
    """
    activation = activation or records.meta.get("activation")
    findings = []
    record = _last_finite(records, findings)
    if record is None:
        return findings
    layers = list(records.layers)
    findings += _gradient_flow(layers, record)
    findings += _dead_and_saturated(layers, record, activation)
    if "update_ratio" in record:
        bad = [n for n, r in zip(layers, record["update_ratio"]) if r > UPDATE]
        if bad:
            worst = float(np.nanmax(record["update_ratio"]))
            findings.append(Finding(
                "unstable_updates", tuple(bad),
                f"a step changes weights by up to {worst:.0%} of their norm (> {UPDATE:.0%})",
                "lower the learning rate, or add warm-up / gradient clipping", worst))
    if not findings:
        findings.append(Finding("healthy", (), "error signal within 100x across layers, no dead "
                                "or saturated layers, moderate updates", "nothing to fix"))
    return findings


def _last_finite(records, findings) -> dict | None:
    """The per-layer arrays of the last usable record; records divergence as a finding."""
    metrics = {k: np.asarray(records[k]) for k in records.metrics}
    if not hasattr(records, "steps"):
        loss_ok = "loss" not in records or bool(np.isfinite(np.asarray(records["loss"])).all())
        return (metrics if _finite(metrics) and loss_ok
                else _diverged(records, metrics, None, findings))
    steps = np.asarray(records.steps)
    loss = np.asarray(records["loss"]) if "loss" in records else np.zeros(len(steps))
    for i in range(len(steps)):
        row = {k: v[i] for k, v in metrics.items()}
        if not (_finite(row) and np.isfinite(loss[i])):
            _diverged(records, row, int(steps[i]), findings)
            return {k: v[i - 1] for k, v in metrics.items()} if i else None
    return {k: v[-1] for k, v in metrics.items()} if len(steps) else None


def _finite(row) -> bool:
    return all(np.all(np.isfinite(row[k])) for k in ("grad_norm", "error_norm") if k in row
               and not np.all(np.isnan(row[k])))


def _diverged(records, row, step, findings):
    first_backward = divergence.first_backward(row, records.layers)  # backprop runs output -> input
    bad = first_backward is not None
    at = f"at step {step}" if step is not None else "in this batch"
    where = f"; first non-finite gradient (backward order) in {first_backward}" if bad else ""
    findings.append(Finding("divergence", (first_backward,) if bad else (),
                            f"loss or gradients became non-finite {at}{where}",
                            "lower the learning rate; add normalization or gradient clipping",
                            float(step) if step is not None else float("nan")))
    return None


def _gradient_flow(layers, record) -> list[Finding]:
    out = []
    err = np.asarray(record.get("error_norm", []), dtype=np.float64)
    if err.size >= 2 and np.all(np.isfinite(err)) and err[-1] > 0 and err[0] > 0:
        ratio = err[0] / err[-1]
        decades = math.log10(ratio)
        per_layer = decades / (len(err) - 1)
        text = (f"error signal {'falls' if ratio < 1 else 'grows'} {10 ** abs(decades):.1e}x from "
                f"layer {len(err)} to layer 1, about {abs(per_layer):.2f} decades per layer")
        if ratio <= 1 / RATIO:
            weak = [n for n, e in zip(layers, err) if e <= err[-1] / RATIO]
            out.append(Finding("vanishing", tuple(weak), text,
                               "use He init for ReLU, residual connections, or batch norm", ratio))
        elif ratio >= RATIO:
            strong = [n for n, e in zip(layers, err) if e >= err[-1] * RATIO]
            out.append(Finding("exploding", tuple(strong), text,
                               "lower the init scale or learning rate; for residual nets scale the "
                               "branches (Fixup / SkipInit) or normalize", ratio))
    std = np.asarray(record.get("act_std", []), dtype=np.float64)
    if std.size >= 3 and np.all(np.isfinite(std)) and std[0] > 0 and std[-2] > 0:
        fwd = std[-2] / std[0]
        if fwd >= RATIO and not any(f.kind == "exploding" for f in out):
            out.append(Finding("exploding", tuple(layers[1:-1]),
                               f"activations grow {fwd:.1e}x from the first to the last hidden layer",
                               "normalize (BN) or scale residual branches", fwd))
    return out


def _dead_and_saturated(layers, record, activation) -> list[Finding]:
    out = []
    dead = np.asarray(record.get("dead_frac", []), dtype=np.float64)
    bad = [n for n, d in zip(layers[:-1], dead[:-1]) if d > DEAD]  # the output layer has no act
    if bad:
        worst = float(np.nanmax(dead))
        out.append(Finding("dead_units", tuple(bad),
                           f"{len(bad)} layers have > {DEAD:.0%} units silent on the whole batch "
                           f"(worst {worst:.0%})",
                           "use He init, a smaller learning rate, or leaky ReLU / GELU", worst))
    limit = SATURATED.get(activation or "")
    std = np.asarray(record.get("act_std", []), dtype=np.float64)
    if limit is not None:
        sat = [n for n, s in zip(layers[:-1], std[:-1]) if s > limit]
        if sat:
            out.append(Finding("saturation", tuple(sat),
                               f"{len(sat)} {activation} layers have activation std > {limit}: "
                               "units sit in the flat tails", "lower the init scale, use BN, or "
                               "switch to ReLU-family activations", float(np.nanmax(std))))
    return out
