"""Issue #15, "Figures": each figure tells the story it should, checked through the matplotlib
objects (artists, labels, ticks, legends, colorbars), one test per item, plus a tiny real run of
the `residual` and `batchnorm` experiments."""
from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest
from flax import nnx
from matplotlib.patches import Rectangle

import gradflow as gf
from gradflow.experiments import hierarchy, separable
from gradflow.experiments.sweep_records import Cell, Sweep
from gradflow.report import sweep_report

matplotlib.use("Agg")


def _history(n_layers, steps, arch, *, diverged_at=None, loss=0.69, accuracy=0.6):
    """A History built from records: the error signal grows toward the output."""
    recs = [{"error_norm": 10.0 ** np.linspace(-3, 0, n_layers) * (k + 1),
             "grad_norm": np.ones(n_layers), "loss": np.float32(loss - 0.01 * k),
             "accuracy": np.float32(accuracy)} for k in range(len(steps))]
    meta = {"arch": arch} | ({"diverged_at_step": diverged_at} if diverged_at is not None else {})
    return gf.History.from_records([f"l{i}" for i in range(n_layers)], steps, recs, meta)


def _two_runs():
    """A 10-layer run over 20 steps and a 7-layer one that diverged at step 2 (one record)."""
    return {"deep": _history(10, list(range(0, 20, 2)), "deep"),
            "short": _history(7, [0], "short", diverged_at=2)}


def _legend_texts(fig):
    return [t.get_text() for leg in fig.legends + [a.get_legend() for a in fig.axes
                                                    if a.get_legend()] for t in leg.get_texts()]


def _extent(artist, fig):
    fig.canvas.draw()
    return artist.get_window_extent(fig.canvas.get_renderer())


# 1 ------------------------------------------------------------------------------------------

def test_missing_layers_are_hatched_and_labelled_apart_from_grey_divergence():
    fig = gf.plot.comparison_grid(_two_runs(), "error_norm", {"short": 2}, steps=20)
    deep, short = fig.axes[:2]
    hatched = [p for p in short.patches if p.get_hatch()]
    assert len(hatched) == 1 and not any(p.get_hatch() for p in deep.patches)
    rect = hatched[0]
    assert (rect.get_y(), rect.get_height()) == (7.5, 3)  # rows 8..10: layers it does not have
    assert rect.get_facecolor()[:3] == (1.0, 1.0, 1.0)  # white, not the grey of "diverged"
    grey = [p for p in short.patches if isinstance(p, Rectangle) and not p.get_hatch()]
    assert grey and matplotlib.colors.to_hex(grey[0].get_facecolor()) == "#d1d1d1"
    assert grey[0].get_y() == 0.5 and grey[0].get_height() == 7  # only its own rows
    assert matplotlib.colors.to_hex(short.get_facecolor()) == "#ffffff"
    texts = _legend_texts(fig)
    assert "no such layer (shorter network)" in texts
    assert "non-finite or after divergence" in texts


# 2 ------------------------------------------------------------------------------------------

def test_accuracy_baseline_is_the_majority_class_rate():
    runs = {"a": _history(4, [0, 1, 2], "a")}
    fig = gf.plot.curves(runs, 2, class_shares=[0.616, 0.384])
    ax_a = fig.axes[1]
    base = [ln for ln in ax_a.get_lines() if ln.get_label().startswith("majority class")]
    assert len(base) == 1 and base[0].get_ydata()[0] == pytest.approx(0.616)
    assert base[0].get_label() == "majority class (61.6%)"
    assert not any(np.allclose(ln.get_ydata(), 0.5) for ln in ax_a.get_lines())
    loss = [ln for ln in fig.axes[0].get_lines() if "class shares" in ln.get_label()]
    h = -(0.616 * np.log(0.616) + 0.384 * np.log(0.384))
    assert loss[0].get_ydata()[0] == pytest.approx(h)
    balanced = gf.plot.curves(runs, 10).axes[1]  # no shares: 1/num_classes, said so
    assert any(ln.get_label() == "chance (1/10 = 10.0%: majority class if balanced)"
               for ln in balanced.get_lines())


# 3 ------------------------------------------------------------------------------------------

def test_single_record_heatmap_shows_its_step():
    ax = gf.plot.heatmap(_history(5, [7], "plain"), "error_norm").axes[0]
    assert list(ax.get_xticks()) == [7]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["7"]
    assert "one record" in ax.get_xlabel()
    grid = gf.plot.comparison_grid({"a": _history(5, [3], "a"), "b": _history(4, [3], "b")})
    assert [t.get_text() for t in grid.axes[0].get_xticklabels()] == ["3"]


# 4 ------------------------------------------------------------------------------------------

def test_mlp_panel_has_no_empty_spatial_axis():
    entries = []
    for key, title, model, shape in hierarchy.zoo(6, 4, ["plain"], 0):
        if key in ("cnn_plain", "mlp_plain"):
            entries.append((title, hierarchy.blocks(gf.summary(model, shape))))
    fig = hierarchy.pyramid_figure(entries)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels.count("height = width") == 1  # the CNN's row only
    mlp_row = [ax for ax in fig.axes if ax.get_subplotspec().rowspan.start == 1]
    assert len(mlp_row) == 2 and "height = width" not in [a.get_ylabel() for a in mlp_row]
    for ax in mlp_row:
        assert all(np.isfinite(ln.get_ydata()).any() for ln in ax.get_lines())  # nothing empty


# 5 ------------------------------------------------------------------------------------------

def test_timing_x_tick_labels_are_the_widths_and_do_not_overlap():
    rows = [{"width": w, "standard_ms": 0.1 * w, "separable_ms": 0.2 * w} for w in (16, 64, 256)]
    fig = separable.timing_figure(rows)
    ax = fig.axes[0]
    fig.canvas.draw()
    shown = [t for t in ax.get_xticklabels(which="both")
             if t.get_visible() and t.get_text() and ax.get_xlim()[0] <= t.get_position()[0]
             <= ax.get_xlim()[1]]
    assert [t.get_text() for t in shown] == ["16", "64", "256"]
    boxes = [_extent(t, fig) for t in shown]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


# 6 ------------------------------------------------------------------------------------------

def test_legends_cover_neither_the_data_nor_the_bars():
    runs = _two_runs()
    fig = gf.plot.curves(runs, 2, {"deep": 0.9, "short": None}, 20)
    legend = _extent(fig.legends[0], fig)
    for ax in fig.axes:  # the held-out star and every line lie inside the axes
        assert not legend.overlaps(_extent(ax, fig))
    assert [ax.get_legend() for ax in fig.axes] == [None, None]
    entries = [("cnn", hierarchy.blocks(gf.summary(m, s))) for k, _, m, s in
               hierarchy.zoo(6, 4, ["plain"], 0) if k == "cnn_plain"]
    fig = hierarchy.pyramid_figure(entries)
    ax_p = fig.axes[0]
    legend = _extent(ax_p.get_legend(), fig)
    assert ax_p.patches and not any(legend.overlaps(_extent(p, fig)) for p in ax_p.patches)
    rows = [{"width": w, "standard_ms": w, "separable_ms": 2 * w} for w in (2, 8, 32)]
    fig = separable.timing_figure(rows)
    assert not _extent(fig.legends[0], fig).overlaps(_extent(fig.axes[0], fig))


# 7 ------------------------------------------------------------------------------------------

def test_diverged_arch_is_named_and_drawn_up_to_its_divergence():
    fig = gf.plot.curves(_two_runs(), 2, steps=20)  # divergence from the History's meta
    texts = _legend_texts(fig)
    assert "short (diverged at step 2)" in texts and "deep" in texts
    ax_l = fig.axes[0]
    line = next(ln for ln in ax_l.get_lines() if ln.get_label() == "short (diverged at step 2)")
    assert line.get_marker() == "o" and list(line.get_xdata()) == [0]  # one record, visible
    assert np.isfinite(line.get_ydata()).all()
    cross = [ln for ln in ax_l.get_lines() if ln.get_marker() == "x"]
    assert [list(c.get_xdata()) for c in cross] == [[2]]
    assert "diverged here (no later records)" in texts
    explicit = _legend_texts(gf.plot.curves({"a": _history(4, [0, 5], "a")}, diverged={"a": 9}))
    assert "a (diverged at step 9)" in explicit


# 8 ------------------------------------------------------------------------------------------

def test_colour_scales_say_whether_they_are_own_or_shared():
    h = _history(5, [0, 1, 2], "plain")
    own = gf.plot.heatmap(h, "error_norm").axes[1].get_ylabel()
    assert "this figure's own range (not shared)" in own
    fixed = gf.plot.heatmap(h, "error_norm", vmin=1e-4, vmax=10).axes[1].get_ylabel()
    assert "fixed range" in fixed and "own" not in fixed
    grid = gf.plot.comparison_grid({"a": h, "b": h})
    assert "shared by all panels" in grid.axes[-1].get_ylabel()
    rec = {"error_norm": np.array([1e-3, 1e-2, np.nan, 1.0])}
    bad = gf.History.from_records(list("abcd"), [0, 1], [rec, rec])
    assert "non-finite (diverged)" in _legend_texts(gf.plot.heatmap(bad, "error_norm"))


# 9 ------------------------------------------------------------------------------------------

def test_sweep_footnote_names_the_archs_the_theory_covers():
    res = Sweep(config={}, archs=("plain", "residual", "bn_separable"), depths=(8, 16),
                seeds=(0,), steps=0, probe_batch=8,
                theory={"plain": [3e-2, 6e-4], "residual": [0.5, 0.3],
                        "bn_separable": [None, None]},
                cells=[Cell(a, d, 0, attenuation=0.1) for a in ("plain", "residual",
                                                                 "bn_separable")
                       for d in (8, 16)])
    foot = sweep_report.table(res).splitlines()[-1]
    assert "given for plain, residual (— where it does not apply)" in foot
    assert "plain and bn" not in foot
    head, rows = sweep_report.table_rows(res)
    listed = {r[0] for r in rows if r[head.index("theory")] != "—"}
    assert listed == {"plain", "residual"}  # the footnote's archs are those with values
    page = sweep_report.html_report(res, b"")
    assert "given for plain, residual" in page and "plain and bn" not in page


# 11 -----------------------------------------------------------------------------------------

def test_summary_of_a_scanned_stack_puts_each_layer_under_its_own_unit():
    kw = {"width": 16, "in_features": 12, "num_classes": 3, "rngs": nnx.Rngs(0)}
    scanned = gf.summary(gf.models.mlp("residual_bn", 10, stack="scan", **kw), (12,))
    unrolled = gf.summary(gf.models.mlp("residual_bn", 10, stack="unrolled", **kw), (12,))
    block = ("stages", 0, "rest", "block")
    rows = [r for r in scanned.rows if r.path[:4] == block]
    names = ["/".join(map(str, r.path[4:])) for r in rows]
    assert names == ["", "unit1", "unit1/layer", "unit1/norm", "unit1/act", "unit2",
                     "unit2/layer", "unit2/norm", "act"]  # network order, as unrolled
    by = dict(zip(names, rows))
    un = {"/".join(map(str, r.path)): r for r in unrolled.rows}
    for name in names[1:]:  # a scanned row counts all 4 stacked blocks
        assert by[name].params == sum(un[f"stages/0/rest/blocks/{i}/{name}"].params
                                      for i in range(4)), name
        assert by[name].output_shape == (None, 16)
    assert by["unit1/layer"].params == 4 * 16 * 16 and by["unit1/norm"].params == 4 * 4 * 16
    assert by["unit1"].params == by["unit1/layer"].params + by["unit1/norm"].params
    assert scanned.total == unrolled.total
    text = str(scanned)
    assert "×4 scanned (counts: all 4 blocks)" in text
    lines = [ln.strip() for ln in text.splitlines()]
    i1, i2 = lines.index(next(ln for ln in lines if ln.startswith("unit1: Unit"))), \
        lines.index(next(ln for ln in lines if ln.startswith("unit2: Unit")))
    assert lines[i1 + 1].startswith("layer: Linear") and i2 == i1 + 4


# real runs: residual (items 1, 2, 8 on its figures) and batchnorm (item 10) -----------------

def test_residual_experiment_figures(experiment_run):
    """The run of tests/test_experiments.py (tests/conftest.py: --steps 2 --batch-size 8)."""
    run = experiment_run("residual")
    assert run["code"] == 0
    figures = run["figures"]
    grid, caption = figures["comparison_error_norm.png"]
    assert "no such layer (shorter network)" in _legend_texts(grid) and "hatched" in caption
    short = next(ax for ax in grid.axes if ax.get_title().startswith("seed_resnet (no short"))
    assert [p for p in short.patches if p.get_hatch()]
    curves, caption = figures["curves.png"]
    majority = float(re.search(r"held-out labels \((\d+\.\d)%\)", caption).group(1)) / 100
    line = next(ln for ln in curves.axes[1].get_lines()
                if ln.get_label().startswith("majority class"))
    assert line.get_ydata()[0] == pytest.approx(majority, abs=5e-4) and majority > 0.5
    heat, _ = figures["heatmap_shortcuts.png"]
    assert "own range" in heat.axes[1].get_ylabel()


def test_batchnorm_text_counts_the_evaluations(experiment_run):
    """The run of tests/test_experiments.py (tests/conftest.py: depth 4, width 4, 2 steps,
    2 seeds; the count is said once, whatever the seeds)."""
    run = experiment_run("batchnorm")
    assert run["code"] == 0
    runs = run["numbers"]["finetune"]["runs"]
    said = [int(m) for t in run["texts"] for m in re.findall(r"measured (\d+) times", t)]
    assert said == [len(runs[0]["eval_steps"])] == [3]  # before the first step, after 1 and 2
