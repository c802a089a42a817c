"""Experiment `batchnorm`: where BatchNorm goes, and freezing it for fine-tuning.

(a) Placement. The same depth-`depth` CNN as Conv(no bias) -> BN -> ReLU (arch "bn", the
    seed's advice) and as Conv(+bias) -> ReLU -> BN (`bn_position="after_act"`, the order it
    advises against), trained on the built-in 10-class data over `seeds` initializations:
    gradient flow (error-signal maps, profiles) and learning curves, held-out accuracy mean ± std
    (BN statistics re-estimated on training images, as the run evaluates).
(b) Fine-tuning. A "bn" CNN is pretrained on classes 0-4 (its running statistics then set from
    1,024 of its training images, as a finished training run would leave them). For each seed a
    fresh 5-way head is put on a copy, which is fine-tuned on FINETUNE_EXAMPLES images of the
    other classes 5-9 (drawn per seed) with BN frozen (`gf.freeze_batchnorm`: Keras
    trainable=False) and with BN left training, from the same head and the same batches.
    Held-out accuracy on classes 5-9 is measured during fine-tuning in inference mode (running
    statistics, as Keras predicts, no re-estimation); stability = how much it wobbles.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from .. import data, models
from ..models.freeze import batchnorm_arrays, freeze_batchnorm
from ..plot import comparison_grid, curves, profiles
from ..report.page import Page
from ..report.text import fmt, text_table
from ..train import train
from .common import accuracy, comparison_rows, fit, numbers, shared_optimizer, subset
from .evaluation import evaluate, recalibrate
from .side_by_side import BN_CALIBRATION

PLACEMENTS = (("conv-BN-ReLU", "before_act"), ("conv-ReLU-BN", "after_act"))
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
FINETUNE_CLASSES = (5, 6, 7, 8, 9)
FINETUNE_EXAMPLES = 256  # the small new task's training set
EVALS = 15  # held-out evaluations during fine-tuning (plus one before the first step)
VARIANTS = ("BN frozen", "BN training")


def _mean_std(v):
    v = [x for x in v if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def placement(ds, *, log, depth, width, steps, batch_size, optimizer, lr, init, log_every,
              seeds) -> tuple[dict, list]:
    """Part (a): trains both BN placements from every seed and evaluates them.

    Args:
      ds: the data set (`data.synthetic`).
      log: the run's logger (its `progress`).
      depth, width, steps, batch_size, optimizer, lr, init, log_every: the run's settings.
      seeds: the initialization seeds.

    Returns:
      (summary, first): per placement label the held-out accuracy mean and std, the median
      error ratio at init, the diverged count and every run's numbers; and the ArchResults of
      the first seed (for the figures).
    """
    names = [f"{label} seed {s}" for s in seeds for label, _ in PLACEMENTS]
    progress = log.progress(names, steps)
    per, first = {label: [] for label, _ in PLACEMENTS}, []
    for i, name in enumerate(names):
        label, position = PLACEMENTS[i % len(PLACEMENTS)]
        s = seeds[i // len(PLACEMENTS)]
        progress.start(i)
        model = models.cnn("bn", depth, width=width, init=init, bn_position=position,
                           rngs=nnx.Rngs(s))
        res = fit(model, label, ds.x_train, ds.y_train, steps=steps, batch_size=batch_size,
                  optimizer=optimizer, lr=lr, log_every=log_every, seed=s,
                  progress=progress.step)
        if res.diverged_at is None:
            res.held_out_loss, res.held_out_accuracy = evaluate(
                model, ds.x_test, ds.y_test, ds.x_train[:BN_CALIBRATION])
        progress.finish("diverged" if res.diverged_at is not None
                        else f"held-out accuracy {res.held_out_accuracy:.1%}")
        per[label].append(numbers(res) | {"seed": s})
        if s == seeds[0]:
            first.append(res)
    summary = {}
    for label, runs in per.items():
        acc = _mean_std([r["held_out_accuracy"] for r in runs])
        ratio = [r["error_ratio_init"] for r in runs if r["error_ratio_init"]]
        summary[label] = {"held_out_accuracy_mean": acc[0], "held_out_accuracy_std": acc[1],
                          "error_ratio_init_median": float(np.median(ratio)) if ratio else None,
                          "diverged": sum(r["diverged_at"] is not None for r in runs),
                          "runs": runs}
    return summary, first


def pretrain(ds, *, log, depth, width, steps, batch_size, optimizer, lr, init, log_every, seed):
    """Pretrains a "bn" CNN on PRETRAIN_CLASSES, then sets its running statistics from
    BN_CALIBRATION training images.

    Args:
      ds: the data set (`data.synthetic`).
      log: the run's logger (its `progress`).
      depth, width, steps, batch_size, optimizer, lr, init, log_every, seed: the run's settings.

    Returns:
      (model, numbers): the pretrained model and its training-set size, held-out accuracy and
      loss on classes 0-4, divergence step (or None) and training time.
    """
    x, y = subset(ds.x_train, ds.y_train, PRETRAIN_CLASSES)
    xt, yt = subset(ds.x_test, ds.y_test, PRETRAIN_CLASSES)
    model = models.cnn("bn", depth, width=width, init=init, num_classes=len(PRETRAIN_CLASSES),
                       rngs=nnx.Rngs(seed))
    progress = log.progress(["pretraining on classes 0-4"], steps)
    progress.start(0)
    res = fit(model, "pretrain", x, y, steps=steps, batch_size=batch_size, optimizer=optimizer,
              lr=lr, log_every=log_every, seed=seed, progress=progress.step)
    recalibrate(model, x[:BN_CALIBRATION])
    loss, acc = accuracy(model, xt, yt)
    progress.finish(f"held-out accuracy on classes 0-4 {acc:.1%}")
    return model, {"n_train": len(y), "held_out_accuracy": acc, "held_out_loss": loss,
                   "diverged_at": res.diverged_at, "train_s": round(res.train_s, 2)}


def fine_tune(pretrained, ds, *, frozen: bool, seed: int, steps, batch_size, optimizer, lr):
    """Fine-tunes a copy of `pretrained` with a fresh 5-way head on classes 5-9 with `gf.train`.

    Args:
      pretrained: the model pretrained on PRETRAIN_CLASSES (not modified).
      ds: the data set (`data.synthetic`).
      frozen: freeze BatchNorm first (`freeze_batchnorm`), else BN keeps training.
      seed: draws the FINETUNE_EXAMPLES training images, the batches and the new head.
      steps, batch_size, optimizer, lr: as for the run (batch capped at the training set size).

    Returns:
      (numbers, model): the JSON-ready numbers of the run (per-step training loss, held-out
      accuracy before the first step and every `steps // EVALS` steps and at the end, whether
      the BN arrays stayed bit-identical) and the fine-tuned model.
    """
    x, y = subset(ds.x_train, ds.y_train, FINETUNE_CLASSES, limit=FINETUNE_EXAMPLES, seed=seed)
    xt, yt = subset(ds.x_test, ds.y_test, FINETUNE_CLASSES)
    model = nnx.clone(pretrained)
    width = model.head.in_features
    model.head = nnx.Linear(width, len(FINETUNE_CLASSES), rngs=nnx.Rngs(10_000 + seed))
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
    unchanged = all(np.array_equal(bn_before[k], bn_after[k]) for k in bn_before)
    half = eval_acc[len(eval_acc) // 2:]
    drops = [a - b for a, b in zip(eval_acc, eval_acc[1:])]
    return {"seed": seed, "variant": VARIANTS[0] if frozen else VARIANTS[1],
            "final_accuracy": eval_acc[-1], "best_accuracy": max(eval_acc),
            "accuracy_std_second_half": float(np.std(half)),
            "largest_drop": max(drops, default=0.0),
            "train_loss": [float(v) for v in hist["loss"]], "eval_steps": eval_steps,
            "eval_accuracy": eval_acc,
            "bn_unchanged": unchanged, "n_train": len(y), "n_test": len(yt)}, model


def finetune_figure(runs, steps):
    """Figure of part (b).

    Args:
      runs: the numbers of `fine_tune` runs (both variants, any seeds).
      steps: fine-tuning steps (the x range).

    Returns:
      A matplotlib Figure: held-out accuracy during fine-tuning and per-step training loss, one
      line per run, coloured by variant.
    """
    fig, (ax_a, ax_l) = plt.subplots(1, 2, figsize=(12, 4.3), layout="constrained")
    for v, variant in enumerate(VARIANTS):
        for k, r in enumerate(r for r in runs if r["variant"] == variant):
            lab = variant if k == 0 else None
            ax_a.plot(r["eval_steps"], r["eval_accuracy"], "o-", ms=3, color=f"C{v}", lw=1.2,
                      alpha=0.8, label=lab)
            ax_l.plot(np.arange(1, len(r["train_loss"]) + 1), r["train_loss"], color=f"C{v}",
                      lw=0.8, alpha=0.6, label=lab)
    ax_a.axhline(1 / len(FINETUNE_CLASSES), color="0.45", ls="--", lw=1, label="chance")
    ax_a.set(xlabel="fine-tuning step", ylabel="held-out accuracy (classes 5-9)", ylim=(0, 1),
             title="held-out accuracy during fine-tuning (one line per seed)")
    ax_l.set(xlabel="fine-tuning step", ylabel="training loss (batch)", yscale="log",
             title="training loss of every batch")
    for ax in (ax_a, ax_l):
        ax.legend(fontsize=8)
        ax.set_xlim(0, steps)
    return fig


def run(out, *, log, meta, depth, width, steps, batch_size, optimizer, lr, init, log_every,
        seeds, seed) -> str:
    """Runs the experiment: part (a) placement, part (b) frozen vs training BN fine-tuning.

    Args:
      out: the output folder (report.html, figures, batchnorm.json).
      log, meta: the run's logger and metadata for the page.
      depth, width, steps, batch_size, optimizer, lr, init, log_every: the run's settings.
      seeds: how many seeds, from `seed` on.
      seed: the first seed (also the data set and pretraining seed).

    Returns:
      The text summary: both tables.
    """
    ds = data.synthetic(seed)
    seed_list = list(range(seed, seed + seeds))
    common = dict(depth=depth, width=width, steps=steps, batch_size=batch_size,
                  optimizer=optimizer, lr=lr, init=init, log_every=log_every)
    page = Page(out, "Batch normalization: placement and frozen fine-tuning", meta)

    # (a) placement
    place, first = placement(ds, log=log, seeds=seed_list, **common)
    head_a = ("placement", "held-out acc (mean ± std)", "err ratio at init (median)",
              "diverged runs")
    rows_a = [(label, f"{fmt(p['held_out_accuracy_mean'], '.1%')} ± "
               f"{fmt(p['held_out_accuracy_std'], '.1%')}",
               fmt(p["error_ratio_init_median"], ".2g"), f"{p['diverged']}/{len(seed_list)}")
              for label, p in place.items()]
    page.heading(f"(a) Placement: depth-{depth} CNN, width {width}, {len(seed_list)} seeds")
    page.text("Conv(use_bias=False) → BN → ReLU against Conv → ReLU → BN, same depth, width, "
              "init, data and batches. Held-out accuracy on 2,048 images, BN statistics "
              "re-estimated on 1,024 training images.")
    page.table(head_a, rows_a)
    head_1, rows_1 = comparison_rows([numbers(r) for r in first])
    page.table(head_1, rows_1, f"Seed {seed_list[0]} in detail (the figures below).")
    runs = {r.arch: r.history for r in first}
    page.figure("placement_error_norm.png", comparison_grid(runs, "error_norm", steps=steps),
                "Error signal in every layer, one colour scale")
    page.figure("placement_profiles.png", profiles(runs), "Per-layer profiles at init and end")
    page.figure("placement_curves.png", curves(runs, ds.num_classes, {
        r.arch: r.held_out_accuracy for r in first}, steps), "Learning curves")

    # (b) fine-tuning
    pretrained, pre = pretrain(ds, log=log, seed=seed, **common)
    ft_runs = []
    progress = log.progress([f"fine-tune {v} seed {s}" for s in seed_list for v in VARIANTS],
                            steps)
    for s in seed_list:
        for frozen in (True, False):
            progress.start(len(ft_runs))
            r, _ = fine_tune(pretrained, ds, frozen=frozen, seed=s, steps=steps,
                          batch_size=batch_size, optimizer=optimizer, lr=lr)
            progress.finish(f"held-out accuracy {r['final_accuracy']:.1%}")
            ft_runs.append(r)
    ft = {}
    for variant in VARIANTS:
        rs = [r for r in ft_runs if r["variant"] == variant]
        ft[variant] = {k: _mean_std([r[k] for r in rs]) for k in (
            "final_accuracy", "best_accuracy", "accuracy_std_second_half", "largest_drop")}
    frozen_ok = all(r["bn_unchanged"] for r in ft_runs if r["variant"] == VARIANTS[0])
    head_b = ("fine-tuning", "final acc (mean ± std)", "best acc", "wobble (2nd half std)",
              "largest drop")
    rows_b = [(v, f"{fmt(ft[v]['final_accuracy'][0], '.1%')} ± "
               f"{fmt(ft[v]['final_accuracy'][1], '.1%')}",
               fmt(ft[v]["best_accuracy"][0], ".1%"),
               fmt(ft[v]["accuracy_std_second_half"][0], ".1%"),
               fmt(ft[v]["largest_drop"][0], ".1%")) for v in VARIANTS]
    n_ft = ft_runs[0]["n_train"]
    page.heading(f"(b) Fine-tuning with BN frozen vs training, {len(seed_list)} seeds")
    page.text(f"Pretrained on classes 0-4 ({pre['n_train']} images, {steps} steps; held-out "
              f"accuracy {pre['held_out_accuracy']:.1%}), then a new 5-way head fine-tuned on "
              f"{n_ft} images of classes 5-9 for {steps} steps ({optimizer}, lr {lr:g}, batch "
              f"{min(batch_size, n_ft)}). Held-out accuracy on the {ft_runs[0]['n_test']} "
              f"test images of classes 5-9, measured {len(ft_runs[0]['eval_steps'])} times "
              f"(before fine-tuning, then during it) in inference mode (running statistics). "
              f"Frozen BN's running statistics, scale and "
              f"offset bit-identical after fine-tuning: {'yes' if frozen_ok else 'NO'}.")
    page.table(head_b, rows_b, "Means over seeds. Wobble: standard deviation of the held-out "
               "accuracy over the second half of the evaluations; largest drop: the largest "
               "fall between two consecutive evaluations.")
    page.figure("finetune.png", finetune_figure(ft_runs, steps),
                "Fine-tuning: held-out accuracy and training loss per seed")
    page.write("batchnorm.json", {
        "placement": place, "pretrain": pre,
        "finetune": {"summary": {v: {k: {"mean": m, "std": sd} for k, (m, sd) in d.items()}
                                 for v, d in ft.items()},
                     "frozen_bn_unchanged": frozen_ok, "runs": ft_runs,
                     "finetune_examples": n_ft}})
    return "\n\n".join([f"(a) BN placement, depth {depth}, {len(seed_list)} seeds\n"
                        + text_table(head_a, rows_a),
                        f"(b) fine-tuning on {n_ft} images of classes 5-9 after pretraining on "
                        f"0-4 (held-out {pre['held_out_accuracy']:.1%}); frozen BN unchanged: "
                        f"{'yes' if frozen_ok else 'NO'}\n" + text_table(head_b, rows_b)])
