"""Experiment `hierarchy`: modularity, hierarchy and reuse, seen through `gf.summary`.

Every zoo model (the seed's Keras ResNet, the CNN of each arch as a 3-stage pyramid, its
separable version, the MLP) and a user's own NNX model is summarized as network -> stages ->
blocks -> layers with output shapes and parameter counts. A figure shows the pyramid: per block,
its parameters, channels and spatial size, coloured by stage.
"""
from __future__ import annotations

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from matplotlib.patches import Patch

from .. import models
from ..analysis.summary import summary
from ..models.networks import CPU_UNROLL_MAX_DEPTH
from ..report.page import Page
from ..report.text import text_table

STAGES = 3  # the zoo CNNs are shown as a pyramid of three stages (width, 2x, 4x) where the
# depth gives at least three blocks
IMAGE = (16, 16, 3)  # the built-in data's images
SEED_IMAGE = (32, 32, 3)  # the seed's Keras model input
BLOCK_KINDS = ("Unit", "ResidualBlock", "SeedBlock", "UserBlock")


def cnn_stack(depth: int) -> str:
    """How the summarized CNNs run their repeated blocks, the same on every backend: unrolled
    (a row per block) up to `CPU_UNROLL_MAX_DEPTH`, as stack="auto" builds them on CPU, and
    scanned above (a row per stage's stack, "×n scanned"). The MLP is scanned, as "auto" always
    builds it.

    Args:
      depth: the CNNs' depth.

    Returns:
      "unrolled" or "scan".

    Example:
      >>> cnn_stack(14), cnn_stack(1000)
      ('unrolled', 'scan')
    """
    return "unrolled" if depth <= CPU_UNROLL_MAX_DEPTH else "scan"


class UserBlock(nnx.Module):
    """A user's own block, written with plain Flax NNX: conv -> BN -> relu, twice, max-pool.

    Args:
      cin, cout: input and output channels.
      rngs: the `nnx.Rngs` to initialize from.
    """

    def __init__(self, cin, cout, rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return nnx.max_pool(x, (2, 2), strides=(2, 2))


class UserNet(nnx.Module):
    """A VGG-like user model: blocks of doubling width, then a dense classifier.

    Args:
      rngs: the `nnx.Rngs` to initialize from.
      widths: the output channels of each UserBlock, one block per entry; 10 classes out.
    """

    def __init__(self, rngs, widths=(16, 32)):
        cins = (3,) + tuple(widths[:-1])
        self.features = nnx.List([UserBlock(a, b, rngs) for a, b in zip(cins, widths)])
        self.classifier = nnx.Linear(widths[-1], 10, rngs=rngs)

    def __call__(self, x):
        for block in self.features:
            x = block(x)
        return self.classifier(jnp.mean(x, axis=(1, 2)))


def zoo(depth: int, width: int, archs, seed: int) -> list[tuple[str, str, nnx.Module, tuple]]:
    """Every model the experiment summarizes, built abstractly (`nnx.eval_shape`: shapes only).

    Args:
      depth, width: the zoo networks' depth and width.
      archs: the CNN architectures; the last one is also shown separable and as an MLP.
      seed: the initialization seed.

    Returns:
      (key, title, model, input shape) per model: the seed's ResNet, a CNN per arch, the
      separable CNN, the MLP and UserNet.
    """
    out = [(key, title, nnx.eval_shape(make), shape)
           for key, title, make, shape in _zoo(depth, width, archs, seed)]
    return out


def _zoo(depth, width, archs, seed):
    """(key, title, constructor, input shape) of every model summarized."""
    rngs = lambda: nnx.Rngs(seed)
    out = [("seed_resnet", "seed_resnet(): the seed paper's Keras ResNet",
            lambda: models.seed_resnet(rngs=rngs()), SEED_IMAGE)]
    stages = {a: max(1, min(STAGES, models.hidden_blocks(a, depth))) for a in archs}
    stack = cnn_stack(depth)
    for arch in archs:
        out.append((f"cnn_{arch}", f"cnn({arch!r}, {depth}, width={width}, stages={stages[arch]}, "
                                   f"stack={stack!r})",
                    lambda a=arch: models.cnn(a, depth, width=width, stages=stages[a],
                                              stack=stack, rngs=rngs()), IMAGE))
    sep = archs[-1]
    out.append((f"cnn_{sep}_separable",
                f"cnn({sep!r}, {depth}, width={width}, stages={stages[sep]}, conv='separable', "
                f"stack={stack!r})",
                lambda: models.cnn(sep, depth, width=width, stages=stages[sep], conv="separable",
                                   stack=stack, rngs=rngs()), IMAGE))
    out.append((f"mlp_{sep}", f"mlp({sep!r}, {depth}, width={width * 8}) (scanned stack)",
                lambda: models.mlp(sep, depth, width=width * 8, in_features=int(np.prod(IMAGE)),
                                   num_classes=10, rngs=rngs()), IMAGE))
    out.append(("user_model", "a user's own NNX model (UserNet, plain Flax code)",
                lambda: UserNet(rngs()), IMAGE))
    return out


def blocks(s) -> list[dict]:
    """The outermost block-like rows of a summary (units, residual blocks, user blocks; then
    the head), in network order.

    Args:
      s: a `gf.summary` Summary.

    Returns:
      One dict per block: name (its path), kind, stage ("stage i" under `stages`, "blocks i"
      or "features i" for the seed's and the user's blocks, else the top-level name), params
      and output_shape.
    """
    rows = []
    for r in s.rows:
        outer = [q for q in s.rows if q.path == r.path[:len(q.path)] and q.path != r.path]
        is_block = r.kind in BLOCK_KINDS and not any(q.kind in BLOCK_KINDS for q in outer)
        is_head = r.depth == 1 and r.kind == "Linear"
        if not (is_block or is_head):
            continue
        stage = f"stage {r.path[1]}" if r.path[0] == "stages" else str(r.path[0])
        if r.path[0] in ("blocks", "features"):  # the seed's and the user's blocks: one per level
            stage = f"{r.path[0]} {r.path[1]}"
        rows.append({"name": "/".join(map(str, r.path)), "kind": r.kind, "stage": stage,
                     "params": r.params, "output_shape": r.output_shape})
    return rows


def pyramid_figure(entries):
    """The pyramid figure, one row per model.

    Args:
      entries: (title, `blocks` rows) per model.

    Returns:
      A matplotlib Figure: per block its parameters (log scale, coloured by stage; the legend
      right of the bars), and its channels and, for images, spatial size along the network.
    """
    fig, axes = plt.subplots(len(entries), 2, figsize=(12, 2.8 * len(entries)), squeeze=False,
                             layout="constrained")
    for (title, rows), (ax_p, ax_s) in zip(entries, axes):
        stages = list(dict.fromkeys(r["stage"] for r in rows))
        colors = [f"C{stages.index(r['stage']) % 10}" for r in rows]
        x = np.arange(len(rows))
        ax_p.bar(x, [max(r["params"], 1) for r in rows], color=colors)
        ax_p.set_yscale("log")
        ax_p.set_ylabel("parameters")
        ax_p.set_title(title, fontsize=9, loc="left")
        ax_p.set_xticks(x, [r["name"].replace("stages/", "s").replace("/rest/blocks/", "/b")
                            for r in rows],
                        rotation=60, ha="right", fontsize=6.5)
        # outside the bars, to their right
        ax_p.legend(handles=[Patch(color=f"C{s % 10}", label=st) for s, st in enumerate(stages)],
                    fontsize=6.5, ncol=1 + len(stages) // 8, loc="upper left",
                    bbox_to_anchor=(1.01, 1.0), title="stage", title_fontsize=6.5)
        shapes = [r["output_shape"] for r in rows]
        chans = [sh[-1] if sh else np.nan for sh in shapes]
        side = [sh[1] if sh and len(sh) == 4 else np.nan for sh in shapes]
        ax_s.plot(x, chans, "o-", color="C0", label="channels / features")
        ax_s.set_yscale("log", base=2)
        ax_s.set_xticks(x, [""] * len(x))
        if np.isfinite(side).any():  # images: the spatial size on a second axis
            ax_s.set_ylabel("channels", color="C0")
            ax2 = ax_s.twinx()
            ax2.plot(x, side, "s--", color="C3", label="spatial size")
            ax2.set_ylabel("height = width", color="C3")
            ax_s.set_title("the pyramid: channels grow as the spatial size shrinks", fontsize=9)
        else:  # vectors (an MLP): no spatial size to show
            ax_s.set_ylabel("features", color="C0")
            ax_s.set_title("features per block (vectors: no spatial size)", fontsize=9)
    return fig


def run(out, *, log, meta, depth: int, width: int, archs, seed: int) -> str:
    """Runs the experiment: summarizes every model of `zoo` into `out`.

    Args:
      out: the output folder (report.html, pyramid.png, hierarchy.json).
      log, meta: the run's logger and metadata for the page.
      depth, width, archs, seed: as for `zoo`.

    Returns:
      The text summary: every model's summary table, then the totals.
    """
    page = Page(out, "Modularity, hierarchy, reuse: model summaries", meta)
    page.text("gf.summary(model, input_shape) lists every module as network → stages → blocks → "
              "layers with its output shape and parameter count (nnx.Param leaves below it; "
              "BatchNorm's running statistics are not parameters). Identical blocks inside a "
              "stage have identical counts (reuse); each later stage doubles the channels and "
              "halves the spatial size (hierarchy).")
    texts, numbers, entries, totals = [], {}, [], []
    for key, title, model, shape in zoo(depth, width, archs, seed):
        log.line(f"summarizing {key}…")
        s = summary(model, shape)
        table = str(s)
        texts.append(f"{title}, input {shape}\n{table}")
        page.heading(title)
        page.pre(table)
        rows = blocks(s)
        entries.append((title, rows))
        totals.append((key, f"{s.total:,}", len(rows), len(s.rows)))
        numbers[key] = {"title": title, "input_shape": shape, "total": s.total,
                        "trainable": s.trainable,
                        "rows": [{"path": "/".join(map(str, r.path)), "kind": r.kind,
                                  "output_shape": r.output_shape, "params": r.params,
                                  "note": r.note} for r in s.rows],
                        "blocks": rows}
    head = ("model", "parameters", "blocks", "rows")
    page.heading("Totals")
    page.table(head, totals)
    page.figure("pyramid.png", pyramid_figure(entries), "Parameters per block and the pyramid",
                "Left: parameters of each block in network order (log scale), coloured by "
                "stage; repeated blocks of one stage have equal bars. Right: output channels "
                "(circles, left axis) and spatial size (squares, right axis) per block; the "
                "MLP's blocks output vectors, so only its features are shown.")
    page.write("hierarchy.json", {"models": numbers})
    return "\n\n".join(texts + [text_table(head, totals)])
