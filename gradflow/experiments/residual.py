"""Experiment `residual`: the seed's Keras ResNet with and without its shortcuts.

`seed_resnet()` (three residual blocks 32/64/128, the first two with max-pooling and a strided
1x1 projection shortcut, the third with a plain 1x1 projection, sigmoid output) and the same
network with every shortcut removed are trained from the same initialization on the same batches
of a binary task cut from the built-in data, with every layer recorded. This is repeated over
`seeds` initializations and batch orders (the data stay those of the first seed): a single
seed's held-out accuracy moves by several points with float-level differences, so the results
are reported as mean and spread over the seeds; the figures show the first seed.

The task: does the image contain the 0° grating? (classes whose texture pair includes type 0:
4 of the 10 pair classes, ~40% positives). The seed model starts with Rescaling(1/255), so the
standardized images are mapped to 8-bit pixel values: round(128 + 48·x) clipped to 0..255.
Images are the built-in 16x16 (the model is size-agnostic: global average pooling); the summary
is shown for the seed's own 32x32x3 input, as Keras prints it.
"""
from __future__ import annotations

import numpy as np
from flax import nnx

from .. import data
from ..analysis.summary import summary
from ..models import seed_resnet
from ..plot import comparison_grid, curves, heatmap, profiles
from ..report.page import Page
from ..report.text import text_table
from .common import binary_accuracy, comparison_rows, fit, numbers, over_seeds, seed_rows
from .verdict import describe

POSITIVE_TYPE = 0  # the 0° grating
PIXEL_SCALE = 48.0  # standardized value -> 8-bit pixel: 128 + 48 x (|x| > 2.67 clips)
VARIANTS = (("with shortcuts", True), ("no shortcuts", False))
FIRST_CONV = "blocks/0/unit1/layer"


def to_pixels(x: np.ndarray) -> np.ndarray:
    """Standardized images as 0..255 pixel values, what Rescaling(1/255) expects.

    Args:
      x: standardized images.

    Returns:
      round(128 + PIXEL_SCALE * x) clipped to 0..255, as float32.

    Example:
      >>> to_pixels(np.array([-3.0, 0.0, 1.0]))
      array([  0., 128., 176.], dtype=float32)
    """
    return np.clip(np.round(128.0 + PIXEL_SCALE * x), 0, 255).astype(np.float32)


def binary_task(ds):
    """The binary task cut from the built-in data: does the image contain the 0° grating?

    Args:
      ds: the synthetic Dataset.

    Returns:
      (x_train, y_train, x_test, y_test): images as pixels (`to_pixels`), int32 label 1 where
      the class's pair includes the 0° grating, else 0.
    """
    positive = np.asarray([POSITIVE_TYPE in pair for pair in data.PAIRS])
    return (to_pixels(ds.x_train), positive[ds.y_train].astype(np.int32),
            to_pixels(ds.x_test), positive[ds.y_test].astype(np.int32))


def first_conv_ratios(res: dict) -> dict:
    """Error ratios measured at the first 3x3 conv (FIRST_CONV), alike in both networks: with
    shortcuts, row 1 is block 0's projection, which would not compare like with like.

    Args:
      res: a `fit` result (an ArchResult).

    Returns:
      {"error_ratio_init", "error_ratio_end"} at FIRST_CONV (None where not finite, or
      diverged), and "projection_error_ratio_init" at row 1 (None without shortcuts).
    """
    h = res.history
    i = h.layers.index(FIRST_CONV)
    e = np.asarray(h["error_norm"], dtype=np.float64)
    ratio = lambda k: float(e[k, i] / e[k, -1]) if np.isfinite(e[k, i] / e[k, -1]) else None
    return {"error_ratio_init": ratio(0),
            "error_ratio_end": ratio(-1) if res.diverged_at is None else None,
            "projection_error_ratio_init": (float(e[0, 0] / e[0, -1])
                                            if h.layers[0] != FIRST_CONV else None)}


def train_both(x, y, xt, yt, *, seed: int, progress=None, index: int = 0, **settings) -> list:
    """Trains the seed's ResNet with and without shortcuts from one seed, and evaluates both.

    Args:
      x, y, xt, yt: `binary_task`'s training and held-out data.
      seed: the seed of the initialization and the batch order.
      progress: the Progress to advance (`start`, `step`, `finish`), or None.
      index: the Progress job of the first variant (the second is index + 1).
      **settings: `fit`'s steps, batch_size, optimizer, lr, log_every.

    Returns:
      The two ArchResults (VARIANTS order), evaluated unless diverged.
    """
    results = []
    for i, (variant, shortcuts) in enumerate(VARIANTS):
        if progress is not None:
            progress.start(index + i)
        model = seed_resnet(shortcuts=shortcuts, rngs=nnx.Rngs(seed))
        res = fit(model, f"seed_resnet ({variant})", x, y, seed=seed,
                  loss="binary_cross_entropy", progress=progress and progress.step, **settings)
        if res.diverged_at is None:
            res.held_out_loss, res.held_out_accuracy = binary_accuracy(model, xt, yt)
        if progress is not None:
            progress.finish("diverged" if res.diverged_at is not None
                            else f"held-out accuracy {res.held_out_accuracy:.1%}")
        results.append(res)
    return results


def run(out, *, log, meta, steps: int, batch_size: int, optimizer: str, lr: float,
        log_every: int, seed: int, seeds: int = 1) -> str:
    """Runs the experiment: the seed's ResNet with and without shortcuts, trained alike.

    Args:
      out: the output folder (report.html, figures, histories, residual.json).
      log, meta: the run's logger and metadata for the page.
      steps, batch_size, optimizer, lr, log_every: the training settings.
      seed: the seed of the data, and the first seed of the initialization and batch order.
      seeds: how many seeds, from `seed` on (the figures and the detailed table show `seed`).

    Returns:
      The text summary: the model's summary (32x32x3 input), the first seed's results table
      and the table over seeds.
    """
    ds = data.synthetic(seed)
    x, y, xt, yt = binary_task(ds)
    page = Page(out, "Residual connections: the seed's ResNet with and without shortcuts", meta)
    page.text(f"Task: does the image contain the 0° grating? {describe(ds)}; label 1 for the "
              f"{sum(POSITIVE_TYPE in p for p in data.PAIRS)} pair "
              f"classes that include it ({y.mean():.0%} of the training images). Images mapped "
              f"to 0..255 pixels (round(128 + {PIXEL_SCALE:g}·x), clipped) for the model's "
              f"Rescaling(1/255). Both networks start from the same weights (seed {seed}) and "
              f"see the same batches; binary cross-entropy, {optimizer} lr {lr:g}, batch "
              f"{batch_size}, {steps} steps.")
    s = summary(nnx.eval_shape(lambda: seed_resnet(rngs=nnx.Rngs(seed))), (32, 32, 3))
    page.heading("The seed's model (gf.summary, 32×32×3 input as in the paper)")
    page.pre(str(s))
    names = [f"seed_resnet ({v})" for v, _ in VARIANTS]
    seed_list = list(range(seed, seed + seeds))
    progress = log.progress([f"{n} seed {k}" for k in seed_list for n in names], steps)
    settings = dict(steps=steps, batch_size=batch_size, optimizer=optimizer, lr=lr,
                    log_every=log_every)
    per = {n: [] for n in names}
    for j, k in enumerate(seed_list):
        res_k = train_both(x, y, xt, yt, seed=k, progress=progress, index=2 * j, **settings)
        for r in res_k:
            per[r.arch].append(numbers(r) | first_conv_ratios(r) | {"seed": k})
        if k == seed:
            results = res_k
    spread = {n: over_seeds(rs) for n, rs in per.items()}
    head_s, rows_s = seed_rows(spread)
    nums = [numbers(r) | first_conv_ratios(r) for r in results]
    head, rows = comparison_rows(nums)
    page.heading(f"Results over {seeds} seed{'s' if seeds > 1 else ''}")
    page.table(head_s, rows_s, "Held-out accuracy per seed (initialization and batch order "
               f"{seed_list[0]}…{seed_list[-1]}, same data); err ratio at the first 3×3 conv.")
    page.heading(f"Seed {seed} in detail")
    page.table(head, rows, "err ratio: error signal ‖∂L/∂z‖ of the first 3×3 conv over that of "
               "the output layer, on a training batch (≪ 1: vanishing toward the input); init = "
               "before the first update, end = the last recorded step. Held-out: "
               f"{len(yt)} images, accuracy at threshold 0.5 (majority class: "
               f"{max(yt.mean(), 1 - yt.mean()):.1%}).")
    runs = {r.arch: r.history for r in results}
    diverged = {r.arch: r.diverged_at for r in results if r.diverged_at is not None}
    page.figure("comparison_error_norm.png", comparison_grid(runs, "error_norm", diverged, steps),
                "Error signal in every layer, both networks, one colour scale",
                "Layers (input at the bottom; with shortcuts, each block's projection is a row "
                "before its two convs) × training steps. The network without shortcuts has 7 "
                "rows (no projections): the hatched band above them is no layer. Grey: "
                "non-finite, or after a divergence.")
    page.figure("comparison_grad_norm.png", comparison_grid(runs, "grad_norm", diverged, steps),
                "Weight-gradient norm in every layer, one colour scale")
    for r in results:
        key = "shortcuts" if "with" in r.arch else "no_shortcuts"
        page.figure(f"heatmap_{key}.png", heatmap(r.history, "error_norm"),
                    f"{r.arch}: error-signal heatmap (own colour scale)")
    page.figure("profiles.png", profiles(runs, diverged=diverged),
                "Per-layer profiles at init and at the end")
    shares = [float(np.mean(yt == k)) for k in (0, 1)]  # of the held-out labels
    page.figure("curves.png", curves(runs, 2, {r.arch: r.held_out_accuracy for r in results},
                                     steps, class_shares=shares, diverged=diverged),
                "Loss and accuracy", "Binary cross-entropy and accuracy of the recorded "
                "batches; the star is the held-out accuracy. Dotted: the majority class's "
                f"share of the held-out labels ({max(shares):.1%}), the accuracy of always "
                "predicting it; dashed: the loss of predicting the class shares.")
    for r in results:
        r.history.save(out / f"{'shortcuts' if 'with' in r.arch else 'no_shortcuts'}"
                          f"_history.npz")
    page.write("residual.json", {
        "task": {"positive": "contains the 0° grating", "n_train": len(y), "n_test": len(yt),
                 "positive_fraction_train": float(y.mean()), "pixel_scale": PIXEL_SCALE},
        "summary_32x32": {"total": s.total, "rows": [
            {"path": "/".join(map(str, q.path)), "kind": q.kind, "output_shape": q.output_shape,
             "params": q.params} for q in s.rows]},
        "models": nums, "seeds": seed_list,
        "over_seeds": {n: spread[n] | {"runs": per[n]} for n in names}})
    majority = f"majority class {max(yt.mean(), 1 - yt.mean()):.1%}"
    return "\n\n".join([str(s), f"seed {seed} ({len(yt)} held-out images, {majority})\n"
                        + text_table(head, rows),
                        f"over {seeds} seeds ({steps} steps, {optimizer} lr {lr:g})\n"
                        + text_table(head_s, rows_s, footer=ERR_FOOTER)])


ERR_FOOTER = ("err ratio: error signal ‖∂L/∂z‖ of the first 3×3 conv / of the output layer, "
              "at init (≪ 1: vanishing toward the input)")
