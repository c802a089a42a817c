"""Part (b) of experiment `batchnorm`: fine-tuning a pretrained "bn" CNN on a small new task with
BatchNorm frozen or training, and the rule that tells a collapsed run from a steady one.

Collapse (`collapse`): a run collapsed at step s if its training loss became non-finite at step
s, or if its held-out accuracy fell to chance level and stayed there after a loss spike:

- chance level: the majority-class rate of the held-out labels plus CHANCE_MARGIN;
- stayed there: every evaluation from one on to the end (at least COLLAPSE_EVALS of them) is at
  or below chance level, and an earlier one was above it;
- loss spike: between the last evaluation above chance and the first of that final stretch, a
  training batch's loss rose above ln(classes), the loss of a uniform prediction (worse than
  knowing nothing); s is the first step of that unbroken run of batch losses above ln(classes)
  (it may have begun before the last evaluation above chance).

A collapsed run's accuracy stays flat at chance, so its wobble (standard deviation over the
second half) is small: wobble and largest drop are reported over the runs that did not collapse.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from .. import data
from ..models.freeze import batchnorm_arrays, freeze_batchnorm
from ..report.text import fmt
from ..train import train
from .common import accuracy, mean_std, shared_optimizer, subset

FINETUNE_CLASSES = (5, 6, 7, 8, 9)
FINETUNE_EXAMPLES = 256  # the small new task's training set
EVALS = 15  # held-out evaluations during fine-tuning (plus one before the first step)
VARIANTS = ("BN frozen", "BN training")
CHANCE_MARGIN = 0.02  # accuracy within 2 points of the majority-class rate is chance level
COLLAPSE_EVALS = 2  # evaluations at chance, to the end, that make a collapse
STATS = ("final_accuracy", "best_accuracy", "accuracy_std_second_half", "largest_drop")


def collapse(eval_steps, eval_accuracy, loss_steps, train_loss, *, chance: float,
             num_classes: int) -> dict | None:
    """Applies the collapse rule of the module docstring to one run.

    Args:
      eval_steps, eval_accuracy: the held-out evaluations (step = updates done).
      loss_steps, train_loss: the training loss per recorded step (at the parameters after
        that many updates).
      chance: the majority-class rate of the held-out labels.
      num_classes: the classes (the spike threshold is ln(num_classes)).

    Returns:
      None, or {"step", "reason", "at_chance_from", "spike_loss", "loss_before"}: the step
      of the non-finite loss or of the spike, the first evaluation step of the final stretch at
      chance (None for a non-finite loss), the loss at the spike's first step and the median
      loss of the ten steps before it.

    Example:
      >>> collapse([0, 10, 20, 30], [0.2, 0.5, 0.2, 0.21], range(31),
      ...          [1.0] * 15 + [3.0] + [1.6] * 15, chance=0.2, num_classes=5)["step"]
      15
    """
    steps, loss = np.asarray(loss_steps), np.asarray(train_loss, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(loss))
    if bad.size:
        return {"step": int(steps[bad[0]]), "reason": "non-finite loss", "at_chance_from": None,
                "spike_loss": None, "loss_before": None}
    at = np.asarray(eval_accuracy, dtype=np.float64) <= chance + CHANCE_MARGIN
    k = len(at)
    while k > 0 and at[k - 1]:
        k -= 1
    if k == 0 or len(at) - k < COLLAPSE_EVALS:  # never above chance, or not to the end
        return None
    lo, hi = eval_steps[k - 1], eval_steps[k]
    high = loss > math.log(num_classes)
    spike = np.flatnonzero((steps > lo) & (steps <= hi) & high)
    if not spike.size:
        return None
    s = spike[0]
    while s > 0 and high[s - 1]:  # the spike's first step, if it began before `lo`
        s -= 1
    before = loss[(steps < steps[s]) & (steps >= steps[s] - 10)]
    return {"step": int(steps[s]), "reason": f"loss {loss[s]:.2f} > ln {num_classes}, then "
            f"held-out accuracy at chance from step {hi} on", "at_chance_from": int(hi),
            "spike_loss": float(loss[s]),
            "loss_before": float(np.median(before)) if before.size else None}


def _trace(hist) -> dict:
    """Per-step diagnostics of a fine-tuning History, for the collapse's explanation."""
    g = np.asarray(hist["grad_norm"], dtype=np.float64)
    out = {"grad_norm_total": np.sqrt(np.nansum(g * g, axis=1)).tolist(),
           "update_ratio_max": np.nanmax(np.asarray(hist["update_ratio"], np.float64),
                                         axis=1).tolist(),
           "dead_frac_max": np.nanmax(np.asarray(hist["dead_frac"], np.float64),
                                      axis=1).tolist(),
           "act_std_last": np.asarray(hist["act_std"], np.float64)[:, -2].tolist()}
    return {k: [float(v) for v in vs] for k, vs in out.items()}


def fine_tune(pretrained, ds, *, frozen: bool, seed: int, steps, batch_size, optimizer, lr):
    """Fine-tunes a copy of `pretrained` with a fresh 5-way head on classes 5-9 with `gf.train`.

    Args:
      pretrained: the model pretrained on classes 0-4 (not modified).
      ds: the data set (`data.synthetic`).
      frozen: freeze BatchNorm first (`freeze_batchnorm`), else BN keeps training.
      seed: draws the FINETUNE_EXAMPLES training images, the batches and the new head.
      steps, batch_size, optimizer, lr: as for the run (batch capped at the training set size).

    Returns:
      (numbers, model): the JSON-ready numbers of the run (per-step training loss and
      diagnostics, held-out accuracy before the first step and every `steps // EVALS` steps and
      at the end, the held-out class shares, `collapse`'s verdict, whether the BN arrays stayed
      bit-identical) and the fine-tuned model.
    """
    x, y = subset(ds.x_train, ds.y_train, FINETUNE_CLASSES, limit=FINETUNE_EXAMPLES, seed=seed)
    xt, yt = subset(ds.x_test, ds.y_test, FINETUNE_CLASSES)
    model = nnx.clone(pretrained)
    model.head = nnx.Linear(model.head.in_features, len(FINETUNE_CLASSES),
                            rngs=nnx.Rngs(10_000 + seed))
    if frozen:
        freeze_batchnorm(model)
    bn_before = batchnorm_arrays(model)
    view = nnx.clone(model)  # gf.train updates `model` only at the end: evaluate on this copy
    every = max(1, steps // EVALS)
    eval_steps, eval_acc = [0], [accuracy(view, xt, yt)[1]]

    def on_record(state, final):  # every step is recorded (log_every=1)
        if state.step % every == 0 or state.step == steps:
            nnx.update(view, state.params, state.rest)
            eval_steps.append(state.step)
            eval_acc.append(accuracy(view, xt, yt)[1])

    # stop_on_nonfinite=False: every step trains, as a run that does not cut at divergence
    hist = train(model, data.batches(x, y, min(batch_size, len(x)), seed), steps=steps,
                 optimizer=shared_optimizer(optimizer, lr), log_every=1,
                 stop_on_nonfinite=False, on_record=on_record)
    bn_after = batchnorm_arrays(model)
    shares = np.bincount(yt, minlength=len(FINETUNE_CLASSES)) / len(yt)
    loss = [float(v) for v in hist["loss"]]
    verdict = collapse(eval_steps, eval_acc, hist.steps, loss, chance=float(shares.max()),
                       num_classes=len(FINETUNE_CLASSES))
    half = eval_acc[len(eval_acc) // 2:]
    drops = [a - b for a, b in zip(eval_acc, eval_acc[1:])]
    return {"seed": seed, "variant": VARIANTS[0] if frozen else VARIANTS[1],
            "final_accuracy": eval_acc[-1], "best_accuracy": max(eval_acc),
            "accuracy_std_second_half": float(np.std(half)),
            "largest_drop": max(drops, default=0.0), "collapsed": verdict is not None,
            "collapse": verdict, "train_loss": loss,
            "loss_steps": [int(s) for s in hist.steps], "trace": _trace(hist),
            "eval_steps": eval_steps, "eval_accuracy": eval_acc,
            "class_shares": shares.tolist(), "bn_unchanged": all(
                np.array_equal(bn_before[k], bn_after[k]) for k in bn_before),
            "n_train": len(y), "n_test": len(yt)}, model


def summarize(runs) -> dict:
    """Per variant: collapsed runs, and the accuracy statistics over all runs and over the
    runs that did not collapse.

    Args:
      runs: `fine_tune` numbers (both variants, any seeds).

    Returns:
      variant -> {"n_runs", "collapsed", "collapse_steps", "all": {stat: (mean, std)},
      "not_collapsed": {stat: (mean, std)}} with the stats of STATS.
    """
    out = {}
    for v in VARIANTS:
        rs = [r for r in runs if r["variant"] == v]
        ok = [r for r in rs if not r["collapsed"]]
        out[v] = {"n_runs": len(rs), "collapsed": len(rs) - len(ok),
                  "collapse_steps": [r["collapse"]["step"] for r in rs if r["collapsed"]],
                  "all": {k: mean_std([r[k] for r in rs]) for k in STATS},
                  "not_collapsed": {k: mean_std([r[k] for r in ok]) for k in STATS}}
    return out


def rows(summary: dict) -> tuple[tuple, list[tuple]]:
    """The fine-tuning table: collapsed runs apart, steadiness only over the others.

    Args:
      summary: `summarize`'s result.

    Returns:
      (head, rows) of text cells.
    """
    head = ("fine-tuning", "collapsed (step)", "final acc, all runs", "final acc, not collapsed",
            "best acc", "wobble*", "largest drop*")
    pm = lambda ms: f"{fmt(ms[0], '.1%')} ± {fmt(ms[1], '.1%')}"
    out = []
    for v, s in summary.items():
        steps = ", ".join(map(str, s["collapse_steps"]))
        ok = s["not_collapsed"]
        out.append((v, f"{s['collapsed']}/{s['n_runs']}" + (f" ({steps})" if steps else ""),
                    pm(s["all"]["final_accuracy"]), pm(ok["final_accuracy"]),
                    fmt(s["all"]["best_accuracy"][0], ".1%"),
                    fmt(ok["accuracy_std_second_half"][0], ".1%"),
                    fmt(ok["largest_drop"][0], ".1%")))
    return head, out


FOOTER = (f"collapsed: held-out accuracy at chance (majority class + {CHANCE_MARGIN:.0%}) to the "
          f"end after a batch loss above ln {len(FINETUNE_CLASSES)}, or a non-finite loss; "
          "* over the runs that did not collapse (— if none): wobble = std of held-out "
          "accuracy over the 2nd half, largest drop = largest fall between two evaluations")


def figure(runs, steps):
    """The fine-tuning figure: held-out accuracy and per-step training loss, one line per run.

    Collapsed runs are dashed, named with their step in the legend and crossed at it; the
    accuracy panel's dotted line is the majority-class rate of the held-out labels, the loss
    panel's the loss of a uniform prediction, ln(classes).

    Args:
      runs: `fine_tune` numbers (both variants, any seeds).
      steps: fine-tuning steps (the x range).

    Returns:
      A matplotlib Figure.
    """
    fig, (ax_a, ax_l) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for v, variant in enumerate(VARIANTS):
        for r in (r for r in runs if r["variant"] == variant):
            c = r["collapse"]
            lab = f"{variant}, seed {r['seed']}" + (f": collapsed at step {c['step']}"
                                                     if c else "")
            ls = "--" if c else "-"
            ax_a.plot(r["eval_steps"], r["eval_accuracy"], marker="o", ls=ls, ms=3,
                      color=f"C{v}", lw=1.2, alpha=0.8, label=lab)
            ax_l.plot(r.get("loss_steps", range(len(r["train_loss"]))), r["train_loss"],
                      ls=ls, color=f"C{v}", lw=0.8, alpha=0.6)
            if c:
                for ax in (ax_a, ax_l):
                    ax.axvline(c["step"], color=f"C{v}", ls=":", lw=0.8, alpha=0.7)
                ax_l.plot([c["step"]], [c["spike_loss"] or np.nan], "x", color=f"C{v}", ms=8,
                          mew=2)
    major = max(max(r["class_shares"]) for r in runs)
    ax_a.axhline(major, color="0.45", ls=":", lw=1.2,
                 label=f"majority class of the held-out labels ({major:.1%})")
    ax_l.axhline(math.log(len(FINETUNE_CLASSES)), color="0.45", ls=":", lw=1.2,
                 label=f"ln {len(FINETUNE_CLASSES)}: uniform prediction")
    ax_a.set(xlabel="fine-tuning step", ylabel="held-out accuracy (classes 5-9)", ylim=(0, 1),
             title="held-out accuracy during fine-tuning (dashed: collapsed)")
    ax_l.set(xlabel="fine-tuning step", ylabel="training loss (batch)", yscale="log",
             title="training loss of every batch (×: the collapse's loss spike)")
    for ax in (ax_a, ax_l):
        ax.set_xlim(0, steps)
    ax_a.legend(fontsize=7, loc="upper left")
    ax_l.legend(fontsize=8, loc="upper right")
    return fig
