"""The user-facing side of gradient noise and curvature: `python -m gradflow.run --noise
--curvature --every K`, the figures (gf.plot.training_quantities, grad_histogram,
histogram_medians), the report's "Gradient noise and curvature" section and the
edge-of-stability finding. Histories are built by hand (`History.from_records`) except in one
tiny command-line run."""
from __future__ import annotations

import inspect
import json

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import LogNorm

import gradflow as gf
from gradflow import History, cli
from gradflow.analysis.diagnose import stability_edge
from gradflow.experiments import common, side_by_side, verdict
from gradflow.plot.quantities import median_bins
from gradflow.quantities.histograms import HIST_BINS, bin_labels
from gradflow.report import run_report
from gradflow.report.text import quantity_sentences

LAYERS = ("stem/layer", "blocks/0/layer", "blocks/1/layer", "head")
NAN = np.float32(np.nan)
CURVATURE_IN_TRAIN = "curvature_every" in inspect.signature(gf.train).parameters


def _counts(seed: int, low: int = 8, high: int = 26) -> np.ndarray:
    """(n_layers, HIST_BINS) counts, each layer centred on its own bin."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(LAYERS), HIST_BINS), np.int32)
    for i in range(len(LAYERS)):
        centre = low + 3 * i
        out[i, centre - 2:centre + 3] = rng.integers(1, 50, 5)
        out[i, centre] = 1000  # the median's bin
    return out


def history(steps=(0, 3, 5), *, every=3, hess=None, noise=True, meta=None) -> History:
    """A History as gf.train(noise_every=every, curvature_every=every) records it: quantities
    at the steps divisible by `every`, NaN (-1 counts) at the others."""
    records = []
    for k, s in enumerate(steps):
        taken = s % every == 0
        r = {"grad_norm": np.full(4, 0.1, np.float32), "error_norm": np.full(4, 0.1, np.float32),
             "act_std": np.ones(4, np.float32), "loss": np.float32(2.3 - 0.1 * k),
             "accuracy": np.float32(0.1)}
        if noise:
            r |= {"norm_test": np.float32(1.5 + k) if taken else NAN,
                  "inner_test": np.float32(0.4) if taken else NAN,
                  "ortho_test": np.float32(2.0) if taken else NAN,
                  "mean_gsnr": np.float32(0.02 * (k + 1)) if taken else NAN,
                  "layer_norm_test": np.full(4, 1.0 if taken else np.nan, np.float32),
                  "example_grad_hist": _counts(k) if taken
                  else np.full((4, HIST_BINS), -1, np.int32)}
        if hess is not None:
            r |= {"hess_max_ev": np.float32(hess[k]) if taken else NAN,
                  "hess_trace": np.float32(10 * hess[k]) if taken else NAN,
                  "hess_trace_se": np.float32(hess[k]) if taken else NAN,
                  "layer_hess_trace": np.full(4, hess[k] if taken else np.nan, np.float32)}
        records.append(r)
    base = {"arch": "plain", "init": "lecun", "activation": "relu", "batch_size": 32,
            "noise_every": every if noise else None}
    if hess is not None:
        base["curvature_every"] = every
    return History.from_records(LAYERS, list(steps), records, {**base, **(meta or {})})


# -- the command line -------------------------------------------------------------------------

def test_noise_and_curvature_flags_become_train_options(tmp_path):
    args = cli.parse(["--depth", "4", "--noise", "--every", "3", "--out", str(tmp_path / "a")])
    assert args.train_options == {"noise_every": 3} and args.devices == 1
    args = cli.parse(["--depth", "4", "--noise", "--out", str(tmp_path / "b")])
    assert args.train_options == {"noise_every": 10}  # --every's default
    assert cli.parse(["--depth", "4", "--out", str(tmp_path / "c")]).train_options == {}


@pytest.mark.skipif(not CURVATURE_IN_TRAIN, reason="gf.train does not take curvature_every yet")
def test_curvature_flag_reaches_train_options(tmp_path):
    args = cli.parse(["--depth", "4", "--noise", "--curvature", "--every", "4", "--out",
                      str(tmp_path / "a")])
    assert args.train_options == {"noise_every": 4, "curvature_every": 4}


@pytest.mark.skipif(CURVATURE_IN_TRAIN, reason="gf.train takes curvature_every")
def test_curvature_flag_without_support_in_train_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--depth", "4", "--curvature", "--out", "o"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "--curvature" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, option, needle", [
    (["--noise", "--devices", "2"], "--noise", "one device"),
    (["--curvature", "--devices", "3"], "--curvature", "one device"),
    (["--noise", "--depth", "4,8"], "--noise", "depth sweep"),
    (["--every", "3"], "--every", "--noise"),
    (["--noise", "--every", "0"], "--every", ">= 1"),
    (["--experiment", "residual", "--noise"], "--noise", "not used by --experiment"),
])
def test_quantity_flags_misused_exit_2_with_one_line(args, option, needle, tmp_path, monkeypatch,
                                                     capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--out", "o"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert option in err and needle in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_experiments_fit_passes_train_options_to_gf_train(monkeypatch):
    seen = {}

    def fake_train(model, batches, **kw):
        seen.update(kw)
        return history(steps=(0,), noise=False)

    monkeypatch.setattr(common, "train", fake_train)
    monkeypatch.setattr(common, "count_params", lambda model: 0)
    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int32)
    res = common.fit(None, "m", x, y, steps=1, batch_size=4, optimizer="sgd", lr=0.1,
                     log_every=1, seed=0, train_options={"noise_every": 2})
    assert seen["noise_every"] == 2 and res.history is not None


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    """`--depth 4 --width 4 --steps 6 --noise --every 3` on one arch, in this process."""
    cwd = tmp_path_factory.mktemp("noise_run")
    out = cwd / "out"
    code = cli.main(["--depth", "4", "--width", "4", "--steps", "6", "--log-every", "3",
                     "--archs", "plain", "--noise", "--every", "3", "--out", str(out),
                     "--quiet"])
    return code, out


def test_a_noise_run_records_the_quantities_and_reports_them(noise_run):
    code, out = noise_run
    assert code == 0
    h = History.load(out / "plain_history.npz")
    assert h.meta["noise_every"] == 3 and list(h.steps) == [0, 3, 5]
    for name in ("norm_test", "inner_test", "ortho_test", "mean_gsnr"):
        v = h[name]
        assert np.isfinite(v[:2]).all() and np.isnan(v[2]), name  # taken at 0 and 3 only
    assert h["example_grad_hist"].shape == (3, 4, HIST_BINS)
    assert (h["example_grad_hist"][2] == -1).all()
    names = {p.name for p in out.iterdir()}
    assert {"quantities.png", "plain_grad_hist.png"} <= names
    for name in ("quantities.png", "plain_grad_hist.png"):
        img = mpimg.imread(out / name)
        assert img.shape[0] > 300 and img[..., :3].std() > 0.05
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>Gradient noise and curvature</h2>" in page
    assert page.index("Gradient noise and curvature") < page.index("<h2>Figures</h2>")
    assert "gradient noise every 3 steps" in page
    for title in ("norm test", "inner-product test", "orthogonality test", "mean GSNR"):
        assert f"<b>{title}</b>" in page
    assert "B·norm_test²" in page and "larger batch" in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["train_options"] == {"noise_every": 3}


# -- figures ----------------------------------------------------------------------------------

def _panels(fig):
    return {ax.get_ylabel().split(" ")[0]: ax for ax in fig.axes if ax.get_visible()}


def test_training_quantities_draw_only_finite_points_one_line_per_run():
    runs = {"plain": history(hess=[50.0, 60.0, 70.0], meta={"lr": 0.05, "optimizer": "sgd"}),
            "bn": history(hess=[10.0, 12.0, 14.0], meta={"lr": 0.05, "optimizer": "sgd"})}
    fig = gf.plot.training_quantities(runs)
    panels = _panels(fig)
    assert set(panels) == {"norm_test", "inner_test", "ortho_test", "mean_gsnr", "hess_max_ev",
                           "hess_trace"}
    for name, ax in panels.items():
        data = [line for line in ax.get_lines() if line.get_linestyle() != "--"]
        assert len(data) == 2, name  # one line per run
        for line, h in zip(data, runs.values()):
            x, y = (np.asarray(a, dtype=float) for a in line.get_data())
            assert np.isfinite(y).all() and list(x) == [0, 3], name
            np.testing.assert_allclose(y, h[name][:2], rtol=1e-6)
    for name in ("norm_test", "inner_test", "ortho_test", "mean_gsnr"):
        assert panels[name].get_yscale() == "log"
    assert panels["hess_trace"].get_yscale() == "linear"
    assert len(panels["hess_trace"].collections) == 2  # ± standard error bands


def test_the_edge_of_stability_line_is_drawn_and_labelled_where_lr_is_known():
    h = history(hess=[50.0, 60.0, 70.0], noise=False)
    fig = gf.plot.training_quantities({"plain": h}, lr=0.05)
    ax = _panels(fig)["hess_max_ev"]
    edges = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(edges) == 1 and np.allclose(edges[0].get_ydata(), 40.0)
    assert "2/lr = 40" in edges[0].get_label() and "lr 0.05" in edges[0].get_label()
    assert set(_panels(fig)) == {"hess_max_ev", "hess_trace"}  # no noise: no noise panels
    # lr unknown: no line, a note says why
    ax = _panels(gf.plot.training_quantities({"plain": h}))["hess_max_ev"]
    assert not [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert any("learning rate unknown" in t.get_text() for t in ax.texts)
    # momentum 0.9 from the meta: (2 + 2β)/lr; adam: none
    mom = history(hess=[50.0, 60.0, 70.0], noise=False, meta={"lr": 0.01, "optimizer": "momentum"})
    ax = _panels(gf.plot.training_quantities({"m": mom}))["hess_max_ev"]
    (edge,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert np.allclose(edge.get_ydata(), 380.0) and "(2 + 2·0.9)/lr" in edge.get_label()
    adam = history(hess=[50.0, 60.0, 70.0], noise=False, meta={"lr": 1e-3, "optimizer": "adam"})
    ax = _panels(gf.plot.training_quantities({"a": adam}))["hess_max_ev"]
    assert not [line for line in ax.get_lines() if line.get_linestyle() == "--"]


def test_runs_with_different_learning_rates_get_one_edge_each():
    runs = {"a": history(hess=[1.0, 2.0, 3.0], noise=False, meta={"lr": 0.1}),
            "b": history(hess=[1.0, 2.0, 3.0], noise=False, meta={"lr": 0.2})}
    ax = _panels(gf.plot.training_quantities(runs))["hess_max_ev"]
    edges = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
    assert np.allclose(edges, [10.0, 20.0])


def test_no_quantities_is_a_one_line_error():
    with pytest.raises(ValueError, match="noise_every"):
        gf.plot.training_quantities({"p": history(noise=False)})


def test_grad_histogram_axes_labels_and_the_last_measured_record():
    h = history()
    fig = gf.plot.grad_histogram(h)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "layer (input at the bottom)"
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks[0] == "1: stem/layer" and ticks[-1] == "4: head"  # network order, input low
    assert list(ax.get_yticks()) == [0, 1, 2, 3]
    assert "|per-example gradient element|" in ax.get_xlabel()
    assert {t.get_text() for t in ax.get_xticklabels()} <= set(bin_labels())
    assert "step 3" in ax.get_title()  # step 5 did not measure it
    mesh = ax.collections[0]
    assert isinstance(mesh.norm, LogNorm)
    cells = np.ma.filled(mesh.get_array(), np.nan).reshape(len(LAYERS), HIST_BINS)
    counts = h["example_grad_hist"][1]
    np.testing.assert_array_equal(np.nan_to_num(cells), counts)  # empty bins blank
    assert fig.axes[1].get_ylabel() == "elements per bin (log scale)"  # the colour bar
    dots = ax.get_lines()[0]
    np.testing.assert_array_equal(dots.get_xdata(), median_bins(counts))


def test_grad_histogram_of_a_snapshot_and_errors():
    snap = gf.Snapshot(LAYERS, {"grad_hist": _counts(0), "grad_norm": np.ones(4)},
                       meta={"step": 7})
    ax = gf.plot.grad_histogram(snap).axes[0]
    assert "step 7" in ax.get_title() and "batch gradient" in ax.get_title()
    with pytest.raises(ValueError, match="no gradient histogram"):
        gf.plot.grad_histogram(history(noise=False))
    never = history(steps=(1, 2), every=3)
    with pytest.raises(ValueError, match="no record measured"):
        gf.plot.grad_histogram(never)


def test_histogram_medians_is_layers_by_measured_steps():
    h = history(steps=(0, 3, 5, 6), every=3)
    fig = gf.plot.histogram_medians(h)
    ax = fig.axes[0]
    cells = np.asarray(ax.collections[0].get_array()).reshape(len(LAYERS), 3)  # 3 measured
    med = median_bins(h["example_grad_hist"][[0, 1, 3]])  # (records, layers)
    expected = 10.0 ** (-24 + med.T - 1)  # the lower edge of the median's decade bin
    np.testing.assert_allclose(cells, expected, rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "3", "6"]
    assert ax.get_ylabel() == "layer (input at the bottom)"
    assert isinstance(ax.collections[0].norm, LogNorm)
    assert "median |g|" in fig.axes[1].get_ylabel()
    assert len(gf.plot.grad_histograms(h).axes) == 4  # both panels and their colour bars


def test_median_bins():
    assert list(median_bins(np.array([[0, 3, 1, 1], [5, 0, 0, 4], [0, 0, 0, 0]]))) == [1, 0, -1]


# -- the edge-of-stability finding ------------------------------------------------------------

def _kinds(findings):
    return [f.kind for f in findings]


@pytest.mark.parametrize("hess, lr, found", [
    ([10.0, 45.0, 0.0], 0.05, True),  # 45 >= 2/0.05 = 40 at the last measured record (step 3)
    ([10.0, 40.0, 0.0], 0.05, True),  # exactly at the edge
    ([50.0, 39.0, 0.0], 0.05, False),  # past it earlier, below it at the last measurement
    ([10.0, 45.0, 0.0], 0.01, False),  # 2/0.01 = 200
])
def test_edge_of_stability_is_found_at_the_last_measured_record(hess, lr, found):
    h = history(hess=hess, meta={"lr": lr})
    findings = gf.diagnose(h)
    assert ("edge_of_stability" in _kinds(findings)) is found
    assert findings[0].kind != "edge_of_stability"  # the gradient flow's findings come first
    if found:
        f = findings[-1]
        assert f.moment == "step 3" and f.value == pytest.approx(hess[1] * lr / 2)
        assert "2/lr" in f.evidence and "lower the learning rate" in f.suggestion
        assert "edge of stability" in str(f)
    assert "healthy" in _kinds(findings)  # it says nothing against the gradient flow


def test_edge_of_stability_needs_a_learning_rate_and_knows_momentum_and_adam():
    h = history(hess=[45.0, 45.0, 45.0])
    assert "edge_of_stability" not in _kinds(gf.diagnose(h))  # no lr anywhere
    assert "edge_of_stability" in _kinds(gf.diagnose(h, lr=0.05))
    mom = history(hess=[45.0, 45.0, 45.0], meta={"lr": 0.05, "optimizer": "momentum"})
    assert "edge_of_stability" not in _kinds(gf.diagnose(mom))  # (2 + 1.8)/0.05 = 76
    assert "edge_of_stability" in _kinds(gf.diagnose(mom, momentum=0.0))
    adam = history(hess=[1e4] * 3, meta={"lr": 1e-3, "optimizer": "adam"})
    assert "edge_of_stability" not in _kinds(gf.diagnose(adam))
    assert stability_edge(0.05) == 40.0 and stability_edge(0.05, 0.9) == pytest.approx(76.0)
    with pytest.raises(ValueError, match="lr"):
        stability_edge(0.0)


def test_edge_of_stability_of_a_snapshot_and_of_a_history_without_curvature():
    snap = history(hess=[45.0, 0.0, 0.0], meta={"lr": 0.05}).snapshot(0)
    found = [f for f in gf.diagnose(snap) if f.kind == "edge_of_stability"]
    assert len(found) == 1 and found[0].moment == "init"
    assert "edge_of_stability" not in _kinds(gf.diagnose(history(meta={"lr": 0.05})))


# -- the report -------------------------------------------------------------------------------

def _summary(histories, lr=0.05, optimizer="sgd"):
    ds = gf.data.synthetic(0, n_train=64, n_test=32)
    cfg = side_by_side.Config(depth=4, width=4, archs=tuple(histories), steps=6, lr=lr,
                              optimizer=optimizer, batch_size=32,
                              train_options={"noise_every": 3, "curvature_every": 3})
    results = [side_by_side.ArchResult(a, params=100, history=h, held_out_accuracy=0.5)
               for a, h in histories.items()]
    return verdict.summarize(results, cfg, ds)


def test_the_report_section_explains_each_quantity_with_figures(tmp_path):
    meta = {"lr": 0.05, "optimizer": "sgd"}
    histories = {"plain": history(hess=[10.0, 45.0, 0.0], meta={**meta, "arch": "plain"}),
                 "bn": history(hess=[5.0, 6.0, 0.0], meta={**meta, "arch": "bn"})}
    summary = _summary(histories)
    written = run_report.write_run(tmp_path, histories, summary)
    assert {"quantities.png", "plain_grad_hist.png", "bn_grad_hist.png"} <= set(written)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    section = page[page.index("<h2>Gradient noise and curvature</h2>"):
                   page.index("<h2>Figures</h2>")]
    for title in ("norm test", "inner-product test", "orthogonality test", "mean GSNR",
                  "largest Hessian eigenvalue", "Hessian trace"):
        assert f"<b>{title}</b>" in section
    assert "edge of stability" in section and "Cohen et al. 2021" in section
    assert "plain 45 (1.1× the edge 40) at step 3" in section
    assert "asks for a batch of 200; B = 32" in section  # 32 · 2.5² for plain at step 3
    assert "curvature every 3 steps" in section and "gradient noise every 3 steps" in section
    assert section.count("data:image/png;base64,") == 3
    # the diagnosis names the edge of stability for plain only
    plain, bn = summary["archs"]
    assert any(d.startswith("edge_of_stability at step 3") for d in plain["diagnosis_end"])
    assert not any("edge_of_stability" in d for d in bn["diagnosis_end"])
    assert "edge_of_stability" in page and "edge of stability" in plain["verdict"]


def test_no_quantities_no_section(tmp_path):
    histories = {"plain": history(noise=False, meta={"lr": 0.05})}
    run_report.write_run(tmp_path, histories, _summary(histories))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Gradient noise and curvature" not in page
    assert not (tmp_path / "quantities.png").exists()


def test_quantity_sentences_use_the_last_measured_value():
    h = history(hess=[3.0, 4.0, 0.0], meta={"lr": 0.1, "optimizer": "sgd"})
    text = dict(quantity_sentences({"plain": h}))
    assert list(text) == ["norm test", "inner-product test", "orthogonality test", "mean GSNR",
                          "largest Hessian eigenvalue", "Hessian trace"]
    assert "plain 2.5 (asks for a batch of 200; B = 32) at step 3" in text["norm test"]
    assert "plain 4 (0.2× the edge 20) at step 3" in text["largest Hessian eigenvalue"]
    assert "plain 40 ± 4 at step 3" in text["Hessian trace"]
    assert "noise dominates" in text["mean GSNR"]
    never = history(steps=(1, 2), every=3)
    assert "No finite value" in dict(quantity_sentences({"p": never}))["norm test"]
