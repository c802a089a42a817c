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
    statistics, as Keras predicts, no re-estimation). A run that collapses to chance after a
    loss spike is reported as collapsed, with its step (`finetune.collapse`), and left out of
    the steadiness statistics (wobble, largest drop). Part (b)'s code: `finetune`.
"""
from __future__ import annotations

from flax import nnx

from .. import data, models
from ..plot import comparison_grid, curves, profiles
from ..report.page import Page
from ..report.text import text_table
from .common import accuracy, comparison_rows, fit, numbers, over_seeds, seed_rows, subset
from .evaluation import evaluate, recalibrate
from .finetune import (  # noqa: F401  (part (b), re-exported)
    EVALS, FINETUNE_CLASSES, FINETUNE_EXAMPLES, FOOTER, VARIANTS, collapse, fine_tune, figure,
    rows, summarize)
from .side_by_side import BN_CALIBRATION

PLACEMENTS = (("conv-BN-ReLU", "before_act"), ("conv-ReLU-BN", "after_act"))
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)


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
    return {label: over_seeds(runs) | {"runs": runs} for label, runs in per.items()}, first


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
    head_a, rows_a = seed_rows(place)
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
            progress.finish(f"held-out accuracy {r['final_accuracy']:.1%}" + (
                f", collapsed at step {r['collapse']['step']}" if r["collapsed"] else ""))
            ft_runs.append(r)
    ft = summarize(ft_runs)
    frozen_ok = all(r["bn_unchanged"] for r in ft_runs if r["variant"] == VARIANTS[0])
    head_b, rows_b = rows(ft)
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
    page.table(head_b, rows_b, "Means over seeds. " + FOOTER[0].upper() + FOOTER[1:] + ".")
    page.figure("finetune.png", figure(ft_runs, steps),
                "Fine-tuning: held-out accuracy and training loss per seed",
                "Dashed: a run that collapsed (the dotted vertical line at its step, the cross "
                "at its loss spike); dotted horizontal: the majority-class rate of the held-out "
                "labels (left) and ln 5, the loss of a uniform prediction (right).")
    page.write("batchnorm.json", {
        "placement": place, "pretrain": pre,
        "finetune": {"summary": {v: {**{k: d[k] for k in ("n_runs", "collapsed",
                                                          "collapse_steps")},
                                     **{part: {k: {"mean": m, "std": sd}
                                               for k, (m, sd) in d[part].items()}
                                        for part in ("all", "not_collapsed")}}
                                 for v, d in ft.items()},
                     "collapse_rule": FOOTER.split("; *")[0],
                     "frozen_bn_unchanged": frozen_ok, "runs": ft_runs,
                     "finetune_examples": n_ft}})
    return "\n\n".join([f"(a) BN placement, depth {depth}, {len(seed_list)} seeds\n"
                        + text_table(head_a, rows_a),
                        f"(b) fine-tuning on {n_ft} images of classes 5-9 after pretraining on "
                        f"0-4 (held-out {pre['held_out_accuracy']:.1%}); frozen BN unchanged: "
                        f"{'yes' if frozen_ok else 'NO'}\n"
                        + text_table(head_b, rows_b, footer=FOOTER)])
