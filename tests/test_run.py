"""`python -m gradflow.run` end to end on a tiny configuration, its option checking, the built-in
dataset and batch iterator, and the run figures (headless)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

import gradflow as gf
from gradflow import History, data, cli
from gradflow.experiments import evaluation, side_by_side as experiment, verdict
from gradflow.plot import comparison
from gradflow.analysis import theory
from _backend import rerun_is_bit_identical
from conftest import run_cli

TINY = ["--depth", "4", "--width", "4", "--steps", "3", "--log-every", "1",
        "--archs", "plain,residual_bn"]
ARCHS = list(gf.models.ARCHS)
FILES = ([f"{a}_history.npz" for a in ARCHS] + [f"{a}_heatmap.png" for a in ARCHS]
         + ["comparison_error_norm.png", "comparison_grad_norm.png", "profiles.png", "curves.png",
            "summary.json", "report.html", "run.json"])


# `python -m gradflow.run ARGS` in a subprocess, as the default run is made (XLA -O0 on CPU)
_cli = run_cli


@pytest.fixture
def tiny_run(default_run):
    """The default run (every arch) at depth 4, width 4, 3 steps, with progress: one run per
    session in tests/conftest.py, shared with tests/test_verdicts.py."""
    return default_run


def test_cli_exit_code_files_and_output(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert "Traceback" not in proc.stderr
    for arch in ARCHS:
        assert arch in proc.stdout  # the summary table
        assert f"{arch}: 3 steps" in proc.stderr  # per-architecture progress
    assert str(out.name) in proc.stdout and "report.html" in proc.stdout


def test_histories_load_and_match_the_configuration(tiny_run):
    _, out = tiny_run
    for arch in ("plain", "residual_bn"):
        h = History.load(out / f"{arch}_history.npz")
        assert list(h.steps) == [0, 1, 2]
        assert len(h.layers) == 4  # stem, 2 hidden weight layers, head
        assert h.meta["arch"] == arch and h.meta["depth"] == 4 and h.meta["width"] == 4
        assert h["error_norm"].shape == (3, 4)
        assert np.isfinite(h["loss"]).all()


def test_summary_is_consistent_with_the_histories(tiny_run):
    _, out = tiny_run
    s = json.loads((out / "summary.json").read_text())
    assert [a["arch"] for a in s["archs"]] == ARCHS
    assert s["config"]["depth"] == 4 and s["config"]["steps"] == 3
    n_test = s["data"]["n_test"]
    for a in s["archs"]:
        h = History.load(out / a["history"])
        e = h["error_norm"].astype(np.float64)
        assert a["status"] == "ok"
        assert a["error_ratio_init"] == pytest.approx(e[0, 0] / e[0, -1], rel=1e-6)
        assert a["error_ratio_end"] == pytest.approx(e[-1, 0] / e[-1, -1], rel=1e-6)
        # the last 10% of 3 steps is the last record alone
        assert a["final_train_loss"] == pytest.approx(float(h["loss"][-1]), rel=1e-6)
        assert a["final_train_accuracy"] == pytest.approx(float(h["accuracy"][-1]), rel=1e-6)
        assert a["initial_loss"] == pytest.approx(float(h["loss"][0]), rel=1e-6)
        assert 0 <= a["held_out_accuracy"] <= 1
        assert a["held_out_accuracy"] * n_test == pytest.approx(round(a["held_out_accuracy"]
                                                                      * n_test), abs=1e-3)
        assert a["layers"] == len(h.layers) and a["verdict"]
        # measured slope over the hidden layers at init, and the mean-field one
        hidden = np.log10(e[0, 1:-1])
        assert a["error_slope_init"] == pytest.approx(hidden[0] - hidden[1], rel=1e-6)
        pred = theory.predicted_profile("error_norm", 4, arch=a["arch"], init="lecun",
                                        activation="relu")
        assert a["error_slope_theory"] == pytest.approx(
            math.log10(pred[1] / pred[2]), rel=1e-6)
        assert isinstance(a["diagnosis_end"], list) and a["diagnosis_end"]
    # parameter counts, recounted from freshly built models: 3x3 convs 3->4 (+bias), 4->4 x2, head
    plain = (27 * 4 + 4) + 2 * (36 * 4 + 4) + (4 * 10 + 10)
    bn = 27 * 4 + 2 * 36 * 4 + 3 * 2 * 4 + (4 * 10 + 10)  # no conv bias; BN scale and offset
    params = {a["arch"]: a["params"] for a in s["archs"]}
    assert [params["plain"], params["residual_bn"]] == [plain, bn]


def test_figures_are_real_pngs_and_the_report_is_self_contained(tiny_run):
    _, out = tiny_run
    for name in FILES:
        if name.endswith(".png"):
            img = mpimg.imread(out / name)
            assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
            assert img[..., :3].std() > 0.05  # not blank
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 4 + len(ARCHS)  # 4 + a heatmap per arch
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "residual_bn" in page and "summary" in page.lower()


@pytest.mark.parametrize("args, option", [
    (["--depth", "5", "--archs", "residual"], "--depth"),
    (["--depth", "1"], "--depth"),
    (["--width", "abc"], "--width"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--archs", "plain,resnet"], "--archs"),
    (["--archs", "plain,plain"], "--archs"),
    (["--archs", ","], "--archs"),
    (["--model", "mlp", "--archs", "plain_separable"], "--archs"),
    (["--model", "rnn"], "--model"),
    (["--steps", "0"], "--steps"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--init", "zeros"], "--init"),
    (["--activation", "swish"], "--activation"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--log-every", "0"], "--log-every"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(args, option, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--out", "o"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, needle", [
    (["--dataset", "cifar10"], "--data-dir"),
    (["--data-dir", "somewhere"], "--data-dir"),
    (["--dataset", "npz", "--data-dir", "missing.npz"], "missing.npz"),
    (["--dataset", "mnist", "--data-dir", "."], "train-images-idx3-ubyte"),
])
def test_data_options_fail_cleanly_naming_the_file(args, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--out", "o"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and needle in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_real_format_dataset_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """--dataset npz: grey 8x8 images, 3 classes; the network adapts to shape and classes (a BN
    net: its norm layers too; every arch is built by the same code from the data's shape)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.random((60, 8, 8, 1), dtype=np.float32),
             y=rng.integers(0, 3, 60))
    assert cli.main(["--dataset", "npz", "--data-dir", "tiny.npz", "--depth", "3", "--width",
                     "2", "--steps", "2", "--batch-size", "8", "--archs", "bn", "--out",
                     "o", "--quiet"]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["data"]["name"] == "tiny" and s["data"]["image_shape"] == [8, 8, 1]
    assert s["data"]["num_classes"] == 3 and s["data"]["n_test"] == 12
    assert all(a["status"] == "ok" for a in s["archs"])
    assert [a["arch"] for a in s["archs"]] == ["bn"] and "bn" in capsys.readouterr().out


def test_accepted_values_are_named(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--archs", "resnet"])
    err = capsys.readouterr().err
    assert all(a in err for a in ("plain", "residual", "bn", "residual_bn"))


def test_non_empty_out_is_refused_and_left_alone(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = _cli(*TINY, "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--out" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_default_out_is_a_new_directory_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = cli.parse([]).out
    assert first.parent == Path("runs") and not first.exists()
    first.mkdir(parents=True)
    second = cli.parse([]).out
    assert second != first and second.parent == Path("runs")


def test_a_diverging_arch_is_reported_with_its_history_so_far():
    cfg = experiment.Config(depth=4, width=4, archs=("residual",), steps=6, log_every=1,
                            lr=1e4, optimizer="sgd")
    ds = data.synthetic(0, n_train=64, n_test=32)
    res = experiment.train_arch("residual", cfg, ds)
    assert res.diverged_at is not None and res.held_out_accuracy is None
    h = res.history
    assert np.isfinite(h["loss"]).all() and h.steps[-1] < res.diverged_at
    s = verdict.summarize([res], cfg, ds)
    a = s["archs"][0]
    assert a["status"] == "diverged" and "diverged" in a["verdict"]
    assert a["final_train_loss"] is None and a["error_ratio_end"] is None
    assert a["diagnosis_end"][0].startswith("divergence") and str(res.diverged_at) in \
        a["diagnosis_end"][0]
    json.dumps(s, allow_nan=False)  # summary.json never holds NaN


def test_evaluate_uses_recalibrated_running_statistics_and_leaves_the_model_alone():
    import jax
    from flax import nnx
    cfg = experiment.Config(depth=4, width=4, archs=("bn",))
    ds = data.synthetic(1, n_train=256, n_test=64)
    model = experiment.build_model("bn", cfg, ds.image_shape, ds.num_classes)
    before = jax.tree.map(np.asarray, nnx.state(model))
    loss, acc = evaluation.evaluate(model, ds.x_test, ds.y_test, ds.x_train[:128])
    after = jax.tree.map(np.asarray, nnx.state(model))
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
    # Reference without jit: BN statistics = batch statistics of the calibration images, then
    # inference with those statistics.
    ref = nnx.clone(model)
    for _, m in nnx.iter_modules(ref):
        if isinstance(m, nnx.BatchNorm):
            m.momentum, m.use_running_average = 0.0, False
    ref(ds.x_train[:128])
    logits = np.asarray(nnx.view(ref, use_running_average=True)(ds.x_test))
    assert acc == pytest.approx(np.mean(logits.argmax(-1) == ds.y_test), abs=1e-6)
    z = logits - logits.max(-1, keepdims=True)
    ce = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(z)), ds.y_test])
    assert loss == pytest.approx(ce, rel=1e-4)


# -- data -----------------------------------------------------------------------------------------

def test_synthetic_is_deterministic_shaped_and_balanced():
    a, b, c = data.synthetic(3), data.synthetic(3), data.synthetic(4)
    assert a.x_train.shape == (8192, 16, 16, 3) and a.x_train.dtype == np.float32
    assert a.x_test.shape == (2048, 16, 16, 3) and a.y_train.dtype == np.int32
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train[:100], a.x_test[:100])
    counts = np.bincount(a.y_train, minlength=10)
    assert a.num_classes == 10 and counts.min() > 0.8 * counts.mean()
    assert abs(float(a.x_train.mean())) < 0.05 and 0.3 < float(a.x_train.std()) < 1.5
    assert len(a.class_names) == 10


def test_synthetic_labels_are_not_in_colour_or_brightness():
    """Per-image channel means and brightness carry (almost) no label information: a nearest
    class-mean classifier on them stays near chance."""
    ds = data.synthetic(0)
    feats = lambda x: np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], 1)  # noqa: E731
    f_tr, f_te = feats(ds.x_train), feats(ds.x_test)
    means = np.stack([f_tr[ds.y_train == k].mean(0) for k in range(10)])
    pred = np.argmin(((f_te[:, None] - means[None]) ** 2).sum(-1), 1)
    assert np.mean(pred == ds.y_test) < 0.2


def test_batches_are_deterministic_fixed_size_and_cover_each_epoch():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10)
    it1, it2 = data.batches(x, y, 3, seed=5), data.batches(x, y, 3, seed=5)
    got = [next(it1) for _ in range(9)]
    for (xa, ya), (xb, yb) in zip(got, (next(it2) for _ in range(9))):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert all(bx.shape == (3, 1) and by.shape == (3,) for bx, by in got)
    for epoch in range(3):  # 3 batches per epoch, the remainder dropped; no repeats within one
        seen = np.concatenate([by for _, by in got[3 * epoch:3 * epoch + 3]])
        assert len(set(seen.tolist())) == 9
        np.testing.assert_array_equal(x[seen, 0], seen)
    other = [next(data.batches(x, y, 3, seed=6))[1] for _ in range(1)]
    assert not np.array_equal(other[0], got[0][1])
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(x, y, 11))


# -- figures ---------------------------------------------------------------------------------------

def _history(values, steps):
    values = np.asarray(values, dtype=np.float32)
    return History([f"l{i}" for i in range(values.shape[1])],
                   {"error_norm": values, "grad_norm": values},
                   {"loss": np.full(len(steps), 2.3), "accuracy": np.full(len(steps), 0.1)},
                   {}, steps=steps)


def test_run_figures_render_with_zeros_nan_and_a_diverged_arch():
    ok = _history([[1e-9, 1e-3, 1.0], [0.0, 1e-4, 1.0], [0.0, 0.0, 0.5]], [0, 5, 9])
    short = _history([[1.0, 2.0, 3.0]], [0])
    nan = _history([[np.nan, 1.0, 1.0], [1.0, np.inf, 1.0]], [0, 5])
    runs = {"plain": ok, "residual": short, "bn": nan}
    diverged = {"residual": 3}
    for fig in (gf.plot.comparison_grid(runs, "error_norm", diverged, steps=10),
                gf.plot.profiles(runs, diverged=diverged),
                gf.plot.curves(runs, 10, {"plain": 0.1, "residual": None}, steps=10)):
        png = gf.plot.png_bytes(fig)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    lo, hi = comparison.shared_range(runs.values())
    assert (lo, hi) == (pytest.approx(1e-9), pytest.approx(3.0))


@rerun_is_bit_identical
def test_same_command_same_seed_gives_bit_identical_histories(tiny_run, tmp_path):
    """Determinism on CPU (and on a GPU with XLA's deterministic kernels, which the CLI turns
    on): a second process running the same settings and seed (and XLA flags: both through
    run_cli) writes the same histories bit for bit (on two of the archs: each arch is built and fed from the seed alone,
    whatever the other archs of the run)."""
    _, out = tiny_run
    proc = _cli(*TINY, "--out", "again", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for arch in ("plain", "residual_bn"):
        a = History.load(out / f"{arch}_history.npz")
        b = History.load(tmp_path / "again" / f"{arch}_history.npz")
        np.testing.assert_array_equal(a.steps, b.steps)
        for k in a.metrics + a.scalars:
            np.testing.assert_array_equal(a[k], b[k])


def test_summary_keeps_the_held_out_class_shares_for_the_majority_line(tiny_run):
    _, out = tiny_run
    data = json.loads((out / "summary.json").read_text())["data"]
    shares = data["held_out_class_shares"]
    assert len(shares) == data["num_classes"] and abs(sum(shares) - 1) < 1e-9
    fig = gf.plot.curves({"a": History.load(out / "plain_history.npz")}, class_shares=shares)
    labels = [label for ax in fig.axes for label in ax.get_legend_handles_labels()[1]]
    labels += [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any(f"majority class ({100 * max(shares):.1f}%)" in t for t in labels), labels
