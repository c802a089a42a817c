"""Findings from a Snapshot or History: what is wrong with the gradient flow, at which moment
(init, step N, end), the evidence, and what to do about it (`advice`, fitted to the network).

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
- CHANCE_MARGIN = 0.05: accuracy less than 5 points above chance (1 / classes) is "did not
  learn"; without the number of classes, a loss that fell by less than LOSS_FALL = 2% from the
  first record to the last WINDOW = 10% of the records is.
- Edge of stability: gradient descent with learning rate lr is unstable along a direction whose
  curvature exceeds 2 / lr ((2 + 2β) / lr with heavy-ball momentum β); training tends to rise to
  that sharpness and hover there (Cohen et al. 2021). `hess_max_ev` at or above it, at the last
  record that measured it, is "edge_of_stability". Adaptive optimizers (adam) are not judged:
  their edge concerns the preconditioned Hessian, not the one measured.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..quantities.curvature import stability_edge  # noqa: F401 (re-exported)
from . import advice, divergence
from .inputs import degenerate_input

RATIO = 100.0
DEAD = 0.25
SATURATED = {"tanh": 0.85, "sigmoid": 0.4}
UPDATE = 0.1
CHANCE_MARGIN = 0.05
LOSS_FALL = 0.02
WINDOW = 0.1
KINDS = ("vanishing", "exploding", "dead_units", "saturation", "unstable_updates", "divergence",
         "not_learning", "degenerate_input", "healthy", "edge_of_stability")
MOMENTUM = {"sgd": 0.0, "momentum": 0.9}  # heavy-ball β of the command line's optimizers
ADAPTIVE = ("adam",)  # optimizers whose edge of stability the raw Hessian does not give
INPUT_FIX = "check the data pipeline (loading, scaling, augmentation) before the network"


@dataclass(frozen=True)
class Finding:
    """One thing `gf.diagnose` found: what, when, where, the evidence and what to do about it.

    `str(finding)` reads "kind at moment [layers]: evidence -> suggestion".

    Attributes:
      kind: one of `KINDS`: "vanishing", "exploding", "dead_units", "saturation",
        "unstable_updates", "divergence", "not_learning", "degenerate_input", "healthy" or
        "edge_of_stability".
      layers: the names of the layers concerned, in network order (may be empty).
      evidence: the measurement behind the finding, in words.
      suggestion: what to try.
      value: the number judged: the error ratio layer 1 / output layer (vanishing, exploding;
        the activation-std ratio when only the forward signal explodes), the worst dead
        fraction, the largest activation std (saturation), the worst update ratio, the step
        of divergence, the accuracy (not_learning; without classes the final loss), the
        largest Hessian eigenvalue over the edge of stability (edge_of_stability); else NaN.
      moment: the record judged (`moment`): "init", "step N", "end (step N)", or "" when
        unknown (a Snapshot without a step, the input).

    Example:
      >>> f = gf.Finding("dead_units", ("stem/layer",), "40% of units silent", "use He init", 0.4,
      ...                "init")
      >>> print(f)
      dead_units at init [stem/layer]: 40% of units silent -> use He init
    """
    kind: str
    layers: tuple[str, ...]
    evidence: str
    suggestion: str
    value: float = float("nan")
    moment: str = ""

    def __str__(self):
        when = f" at {self.moment}" if self.moment else ""
        where = f" [{_span(self.layers)}]" if self.layers else ""
        return f"{self.kind}{when}{where}: {self.evidence} -> {self.suggestion}"


def _span(layers) -> str:
    return layers[0] if len(layers) == 1 else f"{layers[0]} … {layers[-1]} ({len(layers)} layers)"


def moment(step: int | None, *, last: bool = False) -> str:
    """The name of the moment a record describes.

    Args:
      step: the record's training step (None: unknown).
      last: it is the last record of a finished training.

    Returns:
      "init" for step 0, "end (step N)" for the last record, "step N" otherwise, "" for None.

    Example:
      >>> moment(0), moment(40), moment(149, last=True)
      ('init', 'step 40', 'end (step 149)')
    """
    if step is None:
        return ""
    if step == 0:
        return "init"
    return f"end (step {step})" if last else f"step {step}"


def edge_setting(meta: dict, lr: float | None = None,
                 momentum: float | None = None) -> tuple[float, float] | None:
    """The learning rate and momentum that place the edge of stability, or None if unknown.

    Args:
      meta: a Snapshot's or History's meta: "lr", and "momentum" or "optimizer" (the command
        line's names: "sgd" β = 0, "momentum" β = 0.9; "adam" is not judged).
      lr: the learning rate (None: `meta["lr"]`).
      momentum: the heavy-ball momentum β (None: from meta; 0 when it says nothing).

    Returns:
      (lr, β); None without a learning rate, or for an adaptive optimizer unless `momentum`
      is given.

    Example:
      >>> edge_setting({"lr": 0.01, "optimizer": "momentum"})
      (0.01, 0.9)
      >>> edge_setting({"optimizer": "sgd"}, lr=0.1)
      (0.1, 0.0)
      >>> edge_setting({"lr": 1e-3, "optimizer": "adam"}) is None
      True
    """
    lr = meta.get("lr") if lr is None else lr
    if lr is None:
        return None
    if momentum is None:
        optimizer = meta.get("optimizer")
        if optimizer in ADAPTIVE:
            return None
        momentum = meta.get("momentum", MOMENTUM.get(optimizer, 0.0))
    return float(lr), float(momentum)


def diagnose(records, *, activation: str | None = None, init: str | None = None,
             norm: bool | None = None, skip: bool | None = None, num_classes: int | None = None,
             held_out_accuracy: float | None = None, inputs=None, lr: float | None = None,
             momentum: float | None = None) -> list[Finding]:
    """Judges the gradient flow of a Snapshot or History by the thresholds in this module.

    A History is judged at its last finite record (checked for divergence, and for learning).
    Advice fits the network: what it has (an init, normalization, skip connections) is never
    proposed, what is unknown is proposed conditionally ("... (if the network has none)").
    Unknown arguments come from `records` (`advice.infer`: meta, row names, scalars).

    Args:
      records: a Snapshot (`gf.probe`) or History (`gf.train`).
      activation: the hidden activation ("tanh" and "sigmoid" are checked for saturation);
        default `records.meta["activation"]`.
      init: the kernel initializer's name; default `records.meta["init"]`.
      norm: the network has normalization layers; default inferred.
      skip: the network has skip (residual) connections; default inferred.
      num_classes: the number of classes, for the chance level; default
        `records.meta["num_classes"]`.
      held_out_accuracy: judge learning by this accuracy instead of the History's training
        accuracy.
      inputs: examples the network is fed (an array, e.g. a batch); degenerate input
        (`inputs.degenerate_input`) is then the only finding, as it explains all others.
      lr: the learning rate, for the edge of stability (`hess_max_ev`, `gf.train(...,
        curvature_every=k)`); default `records.meta["lr"]`.
      momentum: the heavy-ball momentum β of the optimizer; default from `records.meta`
        (`edge_setting`), else 0 (plain SGD).

    Returns:
      A list of Findings, each with its moment: one per problem found ("divergence" alone when
      no record is finite), or a single "healthy" one (never when the run did not learn); then
      "edge_of_stability" when `hess_max_ev` at the last record that measured it is at or above
      the edge (`stability_edge`), the learning rate known (it does not count against
      "healthy", which is about the gradient flow).

    Example:
      >>> snap = gf.probe(gf.models.cnn("plain", 50, rngs=nnx.Rngs(0)), (x, y))  # doctest: +SKIP
      >>> [(f.kind, len(f.layers)) for f in gf.diagnose(snap)]  # doctest: +SKIP
      [('vanishing', 42)]
      >>> for finding in gf.diagnose(hist, init="he", norm=False):  # doctest: +SKIP
      ...     print(finding)
    """
    setup = advice.infer(records, init=init, activation=activation, norm=norm, skip=skip)
    num_classes = num_classes or records.meta.get("num_classes")
    if inputs is not None:
        why = degenerate_input(inputs, num_classes)
        if why is not None:
            return [Finding("degenerate_input", (), why, INPUT_FIX)]
    findings: list[Finding] = []
    index = _last_finite(records, findings, setup)
    if index is None:
        return findings
    record = _row(records, index)
    layers = list(records.layers)
    found = _gradient_flow(layers, record, setup) + _dead_and_saturated(layers, record, setup)
    if "update_ratio" in record:
        bad = [n for n, r in zip(layers, record["update_ratio"]) if r > UPDATE]
        if bad:
            worst = float(np.nanmax(record["update_ratio"]))
            found.append(Finding(
                "unstable_updates", tuple(bad),
                f"a step changes weights by up to {worst:.0%} of their norm (> {UPDATE:.0%})",
                "lower the learning rate, or add warm-up / gradient clipping", worst))
    meta = records.meta
    if not findings and meta.get("diverged_at_step") is None and meta.get("stopped_at_step") \
            is None:  # a diverged or stopped History's learning is not judged
        found += _learning(records, num_classes, held_out_accuracy, bool(found))
    if not found and not findings:
        found.append(Finding("healthy", (), _healthy_text(record),
                             "nothing to fix in the gradient flow"))
    when = _moment_of(records, index)
    edge = edge_setting(records.meta, lr, momentum)
    sharp = _edge_of_stability(records, index, *edge) if edge is not None else None
    return findings + [dataclasses.replace(f, moment=when) for f in found] + (
        [sharp] if sharp is not None else [])


def _edge_of_stability(records, index: int, lr: float, momentum: float) -> Finding | None:
    """"edge_of_stability" when the largest Hessian eigenvalue at the last record (up to
    `index`) that measured it is at or above `stability_edge(lr, momentum)`."""
    if "hess_max_ev" not in records:
        return None
    values = np.asarray(records["hess_max_ev"], dtype=np.float64)
    if values.ndim == 0:  # a Snapshot
        at, value = -1, float(values)
    else:
        measured = np.flatnonzero(np.isfinite(values[:index + 1]))
        if not measured.size:
            return None
        at = int(measured[-1])
        value = float(values[at])
    edge = stability_edge(lr, momentum)
    if not (math.isfinite(value) and value >= edge):
        return None
    what = "2/lr" if momentum == 0 else f"(2 + 2·{momentum:g})/lr"
    return Finding("edge_of_stability", (), f"largest Hessian eigenvalue {value:.3g} ≥ {what} = "
                   f"{edge:.3g} (lr {lr:g}): training sits at or past the edge of stability "
                   "(Cohen et al. 2021), where the loss oscillates along the sharpest direction",
                   advice.edge_of_stability((2 + 2 * momentum) / value), value / edge,
                   _moment_of(records, at))


def _row(records, index: int) -> dict:
    metrics = {k: np.asarray(records[k]) for k in records.metrics}
    one = not hasattr(records, "steps")  # a Snapshot is one record
    return metrics if one else {k: v[index] for k, v in metrics.items()}


def _moment_of(records, index: int) -> str:
    meta = records.meta
    if not hasattr(records, "steps"):
        return moment(meta.get("step"))
    ended = meta.get("diverged_at_step") is None and meta.get("stopped_at_step") is None
    return moment(int(records.steps[index]), last=ended and index == len(records.steps) - 1)


def _last_finite(records, findings, setup) -> int | None:
    """The index of the last usable record (-1 for a Snapshot); records divergence."""
    metrics = {k: np.asarray(records[k]) for k in records.metrics}
    if not hasattr(records, "steps"):
        loss_ok = "loss" not in records or bool(np.isfinite(np.asarray(records["loss"])).all())
        if _finite(metrics) and loss_ok:
            return -1
        _diverged(records, metrics, records.meta.get("step"), findings, setup)
        return None
    steps = np.asarray(records.steps)
    loss = np.asarray(records["loss"]) if "loss" in records else np.zeros(len(steps))
    for i in range(len(steps)):
        row = {k: v[i] for k, v in metrics.items()}
        if not (_finite(row) and np.isfinite(loss[i])):
            _diverged(records, row, int(steps[i]), findings, setup)
            return i - 1 if i else None
    return len(steps) - 1 if len(steps) else None


def _finite(row) -> bool:
    return all(np.all(np.isfinite(row[k])) for k in ("grad_norm", "error_norm") if k in row
               and not np.all(np.isnan(row[k])))


def _diverged(records, row, step, findings, setup):
    first_backward = divergence.first_backward(row, records.layers)  # backprop runs output -> input
    bad = first_backward is not None
    at = f"at step {step}" if step is not None else "in this batch"
    where = f"; first non-finite gradient (backward order) in {first_backward}" if bad else ""
    findings.append(Finding("divergence", (first_backward,) if bad else (),
                            f"loss or gradients became non-finite {at}{where}",
                            advice.divergence(setup),
                            float(step) if step is not None else float("nan"), moment(step)))


def _healthy_text(record) -> str:
    """What a healthy verdict rests on: only what was measured (an unprobed model has no error
    signal or activation statistics)."""
    err = np.asarray(record.get("error_norm", []), dtype=np.float64)
    std = np.asarray(record.get("act_std", []), dtype=np.float64)
    parts = ["error signal within 100x across layers" if err.size and np.all(np.isfinite(err))
             else "error signal not measured"]
    if std.size and np.all(np.isfinite(std)):
        parts.append("no dead or saturated layers")
    if "update_ratio" in record:
        parts.append("moderate updates")
    return ", ".join(parts)


def _gradient_flow(layers, record, setup) -> list[Finding]:
    out = []
    err = np.asarray(record.get("error_norm", []), dtype=np.float64)
    if err.size >= 2 and np.all(np.isfinite(err)) and err[-1] > 0 and err[0] == 0:
        weak = [n for n, e in zip(layers, err) if e <= err[-1] / RATIO]
        out.append(Finding("vanishing", tuple(weak), f"error signal is exactly 0 at layer 1 "
                           f"(layer {len(err)}: {err[-1]:.1e})", advice.vanishing(setup), 0.0))
    elif err.size >= 2 and np.all(np.isfinite(err)) and err[-1] > 0 and err[0] > 0:
        ratio = err[0] / err[-1]
        decades = math.log10(ratio)
        per_layer = decades / (len(err) - 1)
        text = (f"error signal {'falls' if ratio < 1 else 'grows'} {10 ** abs(decades):.1e}x from "
                f"layer {len(err)} to layer 1, about {abs(per_layer):.2f} decades per layer")
        if ratio <= 1 / RATIO:
            weak = [n for n, e in zip(layers, err) if e <= err[-1] / RATIO]
            out.append(Finding("vanishing", tuple(weak), text, advice.vanishing(setup), ratio))
        elif ratio >= RATIO:
            strong = [n for n, e in zip(layers, err) if e >= err[-1] * RATIO]
            out.append(Finding("exploding", tuple(strong), text, advice.exploding(setup), ratio))
    std = np.asarray(record.get("act_std", []), dtype=np.float64)
    if std.size >= 3 and np.all(np.isfinite(std)) and std[0] > 0 and std[-2] > 0:
        fwd = std[-2] / std[0]
        if fwd >= RATIO and not any(f.kind == "exploding" for f in out):
            out.append(Finding("exploding", tuple(layers[1:-1]), f"activations grow {fwd:.1e}x "
                               "from the first to the last hidden layer",
                               advice.exploding(setup), fwd))
    return out


def _dead_and_saturated(layers, record, setup) -> list[Finding]:
    out = []
    dead = np.asarray(record.get("dead_frac", []), dtype=np.float64)
    bad = [n for n, d in zip(layers[:-1], dead[:-1]) if d > DEAD]  # the output layer has no act
    if bad:
        worst = float(np.nanmax(dead))
        out.append(Finding("dead_units", tuple(bad),
                           f"{len(bad)} layers have > {DEAD:.0%} units silent on the whole batch "
                           f"(worst {worst:.0%})", advice.dead_units(setup), worst))
    limit = SATURATED.get(setup.activation or "")
    std = np.asarray(record.get("act_std", []), dtype=np.float64)
    if limit is not None:
        sat = [n for n, s in zip(layers[:-1], std[:-1]) if s > limit]
        if sat:
            out.append(Finding("saturation", tuple(sat),
                               f"{len(sat)} {setup.activation} layers have activation std > "
                               f"{limit}: units sit in the flat tails", advice.saturation(setup),
                               float(np.nanmax(std))))
    return out


def _learning(records, num_classes, held_out, others: bool) -> list[Finding]:
    """"not_learning" when the accuracy stayed within CHANCE_MARGIN of chance, or (classes
    unknown) the loss did not fall; nothing for a single record, which cannot show learning."""
    history = hasattr(records, "steps") and len(records.steps) >= 2
    if num_classes and held_out is not None:
        acc, what = float(held_out), "held-out accuracy"
    elif history and num_classes and "accuracy" in records:
        acc, what = _final(records, "accuracy"), "training accuracy (last 10% of records)"
    elif history and "loss" in records:  # classes unknown: did the loss fall?
        first, last = float(np.asarray(records["loss"])[0]), _final(records, "loss")
        if not (math.isfinite(first) and math.isfinite(last)) or last < first * (1 - LOSS_FALL):
            return []
        return [Finding("not_learning", (), f"the loss did not fall: {first:.3g} at the first "
                        f"record, {last:.3g} over the last 10% of records",
                        advice.not_learning(others), last)]
    else:
        return []
    chance = 1 / num_classes
    if not math.isfinite(acc) or acc >= chance + CHANCE_MARGIN:
        return []
    return [Finding("not_learning", (), f"{what} {acc:.1%} is not {100 * CHANCE_MARGIN:.0f} "
                    f"points above chance ({chance:.1%})", advice.not_learning(others), acc)]


def _final(records, name) -> float:
    """The mean of a scalar over the records in the last WINDOW of the steps."""
    steps, values = np.asarray(records.steps), np.asarray(records[name], dtype=np.float64)
    sel = steps >= steps[-1] - WINDOW * (steps[-1] + 1)
    return float(np.mean(values[sel]))
