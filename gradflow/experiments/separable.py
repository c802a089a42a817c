"""Experiment `separable`: depthwise separable against standard convolutions.

1. Cost: parameters and multiply-adds (MACs) per layer and per model of each arch's depth-`depth`
   CNN, standard and with every hidden 3x3 conv separable (`gf.flops.costs`), every layer
   checked against its closed form (`closed_form_macs`).
2. Speed: forward+backward time of one 3x3 conv layer, standard vs separable, at widths W, 4W
   and 16W on this machine (`conv_timing.time_convs`; median after warm-up).
3. Learning: both versions of each arch trained side by side as the run does
   (`side_by_side.train_arch`) from `seeds` initializations and batch orders (same data):
   held-out accuracy mean and spread over the seeds (one seed's accuracy moves by several
   points with float-level differences); error-signal maps and curves of the first seed.
"""
from __future__ import annotations

import dataclasses

import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from matplotlib.ticker import NullLocator

from .. import data, models
from ..analysis.flops import costs
from ..models.options import SEPARABLE
from ..plot import comparison_grid, curves
from ..report.page import Page
from ..report.text import fmt, text_table
from .common import comparison_rows, numbers, over_seeds, seed_rows
from .conv_timing import time_convs
from .side_by_side import Config, train_arch

WIDTH_FACTORS = (1, 4, 16)  # timed widths: W, 4W, 16W (16, 64, 256 at the default width)
TIMING = {"batch": 16, "size": 16, "repeats": 7, "warmup": 2}


def closed_form_macs(layer) -> int:
    """A layer's MACs per example from its kind and shapes alone (the formulas of gf.flops).

    Args:
      layer: a `gf.flops` LayerCost.

    Returns:
      The multiply-adds per example.

    Example:
      >>> from gradflow.analysis.flops import LayerCost
      >>> dw = LayerCost("dw", "depthwise 3x3", (3, 3, 1, 16), (8, 8, 16), (8, 8, 16), 144, 9216)
      >>> closed_form_macs(dw), closed_form_params(dw, bias=False)
      (9216, 144)
    """
    k = int(np.prod(layer.kernel_shape[:-2])) if layer.kind != "dense" else 1
    cin, cout = layer.input_shape[-1], layer.output_shape[-1]
    positions = int(np.prod(layer.output_shape[:-1]))
    if layer.kind.startswith("depthwise"):
        return k * cin * positions * (cout // cin)
    return k * cin * cout * positions


def closed_form_params(layer, bias: bool) -> int:
    """A layer's parameters from its kind and shapes alone.

    Args:
      layer: a `gf.flops` LayerCost.
      bias: whether the layer has a bias.

    Returns:
      Kernel and bias elements.
    """
    k = int(np.prod(layer.kernel_shape[:-2])) if layer.kind != "dense" else 1
    cin, cout = layer.input_shape[-1], layer.output_shape[-1]
    weights = k * cout if layer.kind.startswith("depthwise") else k * cin * cout
    return weights + (cout if bias else 0)


def cost_table(archs, depth, width, image_shape, num_classes, seed):
    """The cost of each arch's CNN, standard and separable, checked against the closed forms.

    Args:
      archs: the architectures.
      depth, width, num_classes: as for `gradflow.models.cnn`.
      image_shape: one image's shape.
      seed: the seed of `nnx.Rngs` (the models are built abstractly: shapes only).

    Returns:
      {name: (Costs, mismatches)}: name is the arch, with the `_separable` suffix for the
      separable version; mismatches lists the layers whose MACs or parameters differ from
      `closed_form_macs` / `closed_form_params`.
    """
    out = {}
    for arch in archs:
        for conv in ("standard", "separable"):
            model = nnx.eval_shape(lambda arch=arch, conv=conv: models.cnn(  # shapes only
                arch, depth, width=width, conv=conv, num_classes=num_classes,
                in_channels=image_shape[-1], rngs=nnx.Rngs(seed)))
            c = costs(model, image_shape)
            biased = {n for n, _ in _bias_layers(model)}
            mismatches = [r.name for r in c.layers
                          if r.macs != closed_form_macs(r)
                          or r.params != closed_form_params(r, r.name.split("#")[0] in biased)]
            out[arch + ("" if conv == "standard" else SEPARABLE)] = (c, mismatches)
    return out


def _bias_layers(model):
    """(row name, layer) of every biased conv and dense layer, named as `costs` names its rows:
    a layer in a scanned Stack's block once per block (`<stack>/blocks/<i>/...`)."""
    stacks = {tuple(p): m.n for p, m in nnx.iter_modules(model)
              if isinstance(m, models.Stack) and m.scan}
    for path, m in nnx.iter_modules(model):
        if not (isinstance(m, (nnx.Conv, nnx.Linear)) and m.bias is not None):
            continue
        path = tuple(path)
        stack = next((s for s in stacks if path[:len(s) + 1] == (*s, "block")), None)
        paths = [path] if stack is None else [
            (*stack, "blocks", i, *path[len(stack) + 1:]) for i in range(stacks[stack])]
        for p in paths:
            yield "/".join(map(str, p)), m


def timing(width: int, log) -> list[dict]:
    """Times a standard and a separable 3x3 layer at every width in WIDTH_FACTORS (`TIMING`).

    Args:
      width: the base width W.
      log: the run's logger (a line per width).

    Returns:
      One dict per width: width, standard_ms, separable_ms, speedup, mac_ratio and the
      GMAC/s of each kind (forward+backward counted as 3x the forward MACs).
    """
    rows = []
    for f in WIDTH_FACTORS:
        w = width * f
        log.line(f"timing a 3x3 conv layer, standard vs separable, width {w}…")
        t = time_convs(w, **TIMING)
        positions = TIMING["batch"] * TIMING["size"] ** 2
        macs = {"standard": 9 * w * w * positions, "separable": (9 * w + w * w) * positions}
        rows.append({"width": w, **{f"{k}_ms": v * 1e3 for k, v in t.items()},
                     "speedup": t["standard"] / t["separable"],
                     "mac_ratio": macs["separable"] / macs["standard"],
                     **{f"{k}_gmacs_per_s": 3 * macs[k] / t[k] / 1e9 for k in t}})
    return rows


def timing_figure(rows):
    """Forward+backward time against width, both kinds, log-log; x ticks at the timed widths
    only, the legend under the axes.

    Args:
      rows: `timing`'s rows.

    Returns:
      A matplotlib Figure.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    w = [r["width"] for r in rows]
    ax.plot(w, [r["standard_ms"] for r in rows], "o-", label="standard 3x3 conv")
    ax.plot(w, [r["separable_ms"] for r in rows], "s-", label="separable (depthwise 3x3 + 1x1)")
    ax.set(xscale="log", yscale="log", xlabel="channels in = out", ylabel="ms per forward+backward",
           title=f"one layer, batch {TIMING['batch']}, {TIMING['size']}x{TIMING['size']}, "
                 f"{jax.default_backend()}")
    ax.xaxis.set_minor_locator(NullLocator())  # log-axis minor labels would overlap the widths
    ax.set_xticks(w, [str(v) for v in w])
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)  # off the data
    return fig


def run(out, *, log, meta, depth, width, archs, steps, batch_size, optimizer, lr, init,
        log_every, seed, seeds: int = 1) -> str:
    """Runs the experiment: cost, speed, and learning of standard against separable convs.

    Args:
      out: the output folder (report.html, figures, separable.json).
      log, meta: the run's logger and metadata for the page.
      depth, width, init: the CNNs' settings.
      archs: the architectures; each runs standard and separable.
      steps, batch_size, optimizer, lr, log_every: the training settings.
      seed: the seed of the data, and the first seed of the initialization and batch order.
      seeds: how many training seeds, from `seed` on (figures and the detailed table: `seed`).

    Returns:
      The text summary: the cost, timing and learning tables (first seed, and over seeds).
    """
    ds = data.synthetic(seed)
    page = Page(out, "Depthwise separable convolutions: cost, speed and learning", meta)

    # 1. cost
    table = cost_table(archs, depth, width, ds.image_shape, ds.num_classes, seed)
    head_c = ("model", "params", "MACs / example", "vs standard (params, MACs)",
              "layers = closed form")
    rows_c = []
    for name, (c, bad) in table.items():
        std = table[name.removesuffix(SEPARABLE)][0]
        rows_c.append((name, f"{c.model_params:,}", f"{c.macs:,}",
                       f"{c.model_params / std.model_params:.2f}×, {c.macs / std.macs:.2f}×",
                       f"{len(c.layers) - len(bad)}/{len(c.layers)}"))
    page.heading(f"1. Cost: depth-{depth} CNNs, width {width}, {ds.image_shape} input")
    page.text("MACs: multiply-adds per example of every conv and dense layer (kernel size × "
              "output positions; standard k²·Cin·Cout·H·W, depthwise k²·Cin·H·W, pointwise "
              "Cin·Cout·H·W; bias, BN, activations and pooling not counted; FLOPs ≈ 2 × MACs). "
              "Parameters: every nnx.Param (BN scale and offset included). Last column: layers "
              "whose counted MACs and parameters equal the closed form computed from their "
              "shapes alone.")
    page.table(head_c, rows_c)
    first = archs[0]
    for name in (first, first + SEPARABLE):
        page.heading(f"Per layer: {name}")
        page.pre(str(table[name][0]))

    # 2. speed
    trows = timing(width, log)
    head_t = ("width", "standard ms", "separable ms", "separable speed-up", "MAC ratio",
              "GMAC/s std", "GMAC/s sep")
    rows_t = [(r["width"], fmt(r["standard_ms"], ".2f"), fmt(r["separable_ms"], ".2f"),
               fmt(r["speedup"], ".2f") + "×", fmt(r["mac_ratio"], ".3f"),
               fmt(r["standard_gmacs_per_s"], ".1f"), fmt(r["separable_gmacs_per_s"], ".1f"))
              for r in trows]
    page.heading(f"2. Speed on this machine ({meta.get('device', '')})")
    page.text(f"One 3x3 layer, channels in = out = width, batch {TIMING['batch']} of "
              f"{TIMING['size']}×{TIMING['size']}: a jitted gradient of sum(y²) with respect to "
              f"kernels and input (forward + full backward); median of {TIMING['repeats']} calls "
              f"after {TIMING['warmup']} warm-up calls, the two kinds interleaved. Speed-up > 1: "
              f"separable faster. GMAC/s counts forward+backward as 3× the forward MACs.")
    page.table(head_t, rows_t)
    page.figure("timing.png", timing_figure(trows), "Forward+backward time per layer")

    # 3. learning
    names, results = [a + s for a in archs for s in ("", SEPARABLE)], []
    cfg = Config(depth=depth, width=width, archs=names, steps=steps, batch_size=batch_size,
                 lr=lr, optimizer=optimizer, init=init, seed=seed, log_every=log_every)
    seed_list = list(range(seed, seed + seeds))
    progress = log.progress([f"{n} seed {k}" for k in seed_list for n in names], steps)
    per = {n: [] for n in names}
    for j, k in enumerate(seed_list):
        for i, name in enumerate(names):
            progress.start(j * len(names) + i)
            res = train_arch(name, dataclasses.replace(cfg, seed=k), ds, progress.step)
            progress.finish("diverged" if res.diverged_at is not None
                            else f"held-out accuracy {res.held_out_accuracy:.1%}")
            per[name].append(numbers(res) | {"seed": k})
            if k == seed:
                results.append(res)
    spread = {n: over_seeds(rs) for n, rs in per.items()}
    head_s, rows_s = seed_rows(spread)
    nums = [numbers(r) | {"time_s": round(r.time_s, 2)} for r in results]
    head_l, rows_l = comparison_rows(nums)
    head_l += ("train s",)
    rows_l = [r + (fmt(n["train_s"], ".1f"),) for r, n in zip(rows_l, nums)]
    page.heading(f"3. Learning: {steps} steps, {optimizer} lr {lr:g}, batch {batch_size}, "
                 f"{seeds} seed{'s' if seeds > 1 else ''}")
    page.table(head_s, rows_s, "Held-out accuracy per seed (initialization and batch order "
               f"{seed_list[0]}…{seed_list[-1]}, same data).")
    page.table(head_l, rows_l, f"Seed {seed} in detail (the figures below). err ratio: ‖∂L/∂z‖ "
               "of the stem over that of the output layer (a separable conv has two rows, depthwise and pointwise). Held-out accuracy on "
               "2,048 images, BN statistics re-estimated on 1,024 training images. train s: "
               "training wall time including compilation.")
    runs = {r.arch: r.history for r in results}
    diverged = {r.arch: r.diverged_at for r in results if r.diverged_at is not None}
    page.figure("comparison_error_norm.png", comparison_grid(runs, "error_norm", diverged, steps),
                "Error signal in every layer, standard and separable, one colour scale")
    shares = np.bincount(ds.y_test, minlength=ds.num_classes) / len(ds.y_test)
    page.figure("curves.png", curves(runs, ds.num_classes, {
        r.arch: r.held_out_accuracy for r in results}, steps, class_shares=shares,
        diverged=diverged), "Learning curves", "Dotted: the majority class's share of the "
        f"held-out labels ({shares.max():.1%}); dashed: the loss of predicting the class shares.")
    page.write("separable.json", {
        "cost": {name: {**c.to_dict(), "closed_form_mismatches": bad}
                 for name, (c, bad) in table.items()},
        "timing": {"setting": TIMING, "rows": trows}, "learning": nums, "seeds": seed_list,
        "learning_over_seeds": {n: spread[n] | {"runs": per[n]} for n in names}})
    return "\n\n".join([text_table(head_c, rows_c),
                        f"forward+backward of one 3x3 layer, batch {TIMING['batch']}, "
                        f"{TIMING['size']}x{TIMING['size']}, median of {TIMING['repeats']}:\n"
                        + text_table(head_t, rows_t),
                        f"training, seed {seed}:\n" + text_table(head_l, rows_l),
                        f"training over {seeds} seeds ({steps} steps):\n"
                        + text_table(head_s, rows_s, footer=SEEDS_FOOTER)])


SEEDS_FOOTER = ("held-out acc: 2,048 images, BN statistics re-estimated on 1,024 training images; "
                "err ratio: ‖∂L/∂z‖ of the stem / of the output layer at init")
