"""Reliability: bad input (CLI and API) is refused in one line, divergence is located and
reported, figures never draw non-finite values, and a signal becomes a clean stop (the
subprocess signal and kill -9 tests are in test_resume.py)."""
from __future__ import annotations

import io
import json
import os
import signal
import time

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf
from gradflow import History, cli, data, models
from gradflow.analysis import divergence
from gradflow.cli.resume import RunRecord
from gradflow.data import loaders
from gradflow.experiments import side_by_side as experiment
from gradflow.experiments import verdict
from gradflow.report import run_report as report

# -- bad command-line input: exit 2, one line naming the option, nothing written -------------------

def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path.name


def _files(tmp):
    """Bad data files and run directories the CLI cases refer to (by relative path)."""
    rng = np.random.default_rng(0)
    img = rng.random((20, 8, 8, 1), dtype=np.float32)
    (tmp / "garbage.npz").write_bytes(b"this is not a zip archive")
    _npz(tmp / "no_y.npz", x=img)
    _npz(tmp / "negative.npz", x=img, y=np.arange(20) - 1)
    nan = img.copy()
    nan[3, 2, 2, 0] = np.nan
    _npz(tmp / "nan.npz", x=nan, y=np.arange(20) % 2)
    _npz(tmp / "flat.npz", x=rng.random((20, 5), dtype=np.float32), y=np.arange(20) % 2)
    _npz(tmp / "small.npz", x=img, y=np.arange(20) % 2)
    (tmp / "mnist").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp / "mnist" / name).write_bytes(b"\x00\x00\x08")  # truncated header
    (tmp / "full").mkdir()
    (tmp / "full" / "keep.txt").write_text("mine")
    (tmp / "afile").write_text("a file")
    (tmp / "not_a_run").mkdir()
    (tmp / "not_a_run" / "x.txt").write_text("x")
    for name, status in (("done_run", "complete"), ("stopped_run", "interrupted")):
        (tmp / name).mkdir()
        RunRecord(tmp / name, ["--depth", "4", "--width", "4"], status).save()


CLI_CASES = [
    (["--depth", "-3"], "--depth"),
    (["--depth", "1"], "--depth"),
    (["--depth", "100001"], "--depth"),
    (["--depth", "abc"], "--depth"),
    (["--depth", "8,8"], "--depth"),
    (["--depth", "5", "--archs", "residual"], "--depth"),
    (["--width", "0"], "--width"),
    (["--width", "-4"], "--width"),
    (["--width", "2.5"], "--width"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "100000"], "--batch-size"),
    (["--dataset", "npz", "--data-dir", "small.npz", "--batch-size", "17"], "--batch-size"),
    (["--archs", "resnet"], "--archs"),
    (["--archs", "plain,plain"], "--archs"),
    (["--archs", ","], "--archs"),
    (["--model", "mlp", "--archs", "bn_separable"], "--archs"),
    (["--model", "rnn"], "--model"),
    (["--init", "zeros"], "--init"),
    (["--activation", "swish"], "--activation"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--steps", "-1"], "--steps"),
    (["--steps", "0"], "--steps"),
    (["--log-every", "0"], "--log-every"),
    (["--log-every", "x"], "--log-every"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--seed", "-1"], "--seed"),
    (["--seeds", "3"], "--seeds"),
    (["--dataset", "cifar10"], "--data-dir"),
    (["--data-dir", "somewhere"], "--data-dir"),
    (["--dataset", "npz", "--data-dir", "missing.npz"], "missing.npz"),
    (["--dataset", "npz", "--data-dir", "garbage.npz"], "garbage.npz"),
    (["--dataset", "npz", "--data-dir", "no_y.npz"], "'y'"),
    (["--dataset", "npz", "--data-dir", "negative.npz"], "negative labels"),
    (["--dataset", "npz", "--data-dir", "nan.npz"], "non-finite"),
    (["--dataset", "npz", "--data-dir", "flat.npz", "--batch-size", "4"], "--model"),
    (["--dataset", "mnist", "--data-dir", "mnist"], "train-images-idx3-ubyte"),
    (["--dataset", "folder", "--data-dir", "afile"], "afile"),
    (["--out", "full"], "--out"),
    (["--out", "afile"], "--out"),
    (["--resume", "nowhere"], "--resume"),
    (["--resume", "not_a_run"], "run.json"),
    (["--resume", "done_run"], "complete"),
    (["--resume", "stopped_run", "--depth", "6"], "--depth"),
    (["--resume", "stopped_run", "--out", "elsewhere"], "--out"),
    (["--unknown-option"], "unrecognized"),
]


@pytest.mark.parametrize("args, needle", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_bad_cli_input_exits_2_with_one_line_and_writes_nothing(args, needle, tmp_path,
                                                                 monkeypatch, capsys):
    _files(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main([*args] if "--out" in args or "--resume" in args else [*args, "--out", "o"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert err.startswith("python -m gradflow.run: error: ")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing changed
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()


# -- bad API arguments: one-line ValueError naming the argument -----------------------------------

class TwoLayers(nnx.Module):
    """A user's model (cheaper to build than a zoo model)."""

    def __init__(self, rngs):
        self.hidden, self.out = nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


@pytest.fixture(scope="module")
def tiny():
    model = TwoLayers(nnx.Rngs(0))
    x = jnp.ones((4, 4))
    y = jnp.array([0, 1, 0, 1])
    return model, x, y


def _garbage(tmp):
    path = tmp / "garbage.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    return path


def _foreign_npz(tmp):
    path = tmp / "foreign.npz"
    np.savez(path, a=np.zeros(3))
    return path


def _history_file(tmp):
    path = tmp / "h.npz"
    History(["l0"], {"grad_norm": np.ones((1, 1))}, {"loss": np.ones(1)}, {}, steps=[0]).save(path)
    return path


def _bad_idx(tmp):
    path = tmp / "images-idx3-ubyte"
    path.write_bytes(b"\x01\x02\x08\x03" + b"\x00" * 12)  # wrong magic
    return path


def _npz_with(tmp, **arrays):
    path = tmp / "d.npz"
    np.savez(path, **arrays)
    return path


API_CASES = {
    "train steps=0": (lambda m, x, y, t: gf.train(m, [(x, y)], steps=0, optimizer=optax.sgd(.1)),
                      "steps"),
    "train log_every=0": (lambda m, x, y, t: gf.train(m, [(x, y)], steps=1, log_every=0,
                                                      optimizer=optax.sgd(.1)), "log_every"),
    "train steps=True": (lambda m, x, y, t: gf.train(m, [(x, y)], steps=True,
                                                     optimizer=optax.sgd(.1)), "steps"),
    "train optimizer name": (lambda m, x, y, t: gf.train(m, [(x, y)], steps=1, optimizer="sgd"),
                             "optimizer"),
    "train empty batches": (lambda m, x, y, t: gf.train(m, [], steps=1, optimizer=optax.sgd(.1)),
                            "batches"),
    "train not a model": (lambda m, x, y, t: gf.train(object(), [(x, y)], steps=1,
                                                      optimizer=optax.sgd(.1)), "model"),
    "train batch not a pair": (lambda m, x, y, t: gf.train(m, [x], steps=1,
                                                           optimizer=optax.sgd(.1)), "batch"),
    "train unknown loss": (lambda m, x, y, t: gf.train(m, [(x, y)], steps=1, loss="hinge",
                                                       optimizer=optax.sgd(.1)), "loss"),
    "probe batch not a pair": (lambda m, x, y, t: gf.probe(m, x), "batch"),
    "probe unknown loss": (lambda m, x, y, t: gf.probe(m, (x, y), loss="hinge"), "loss"),
    "probe not a model": (lambda m, x, y, t: gf.probe("model", (x, y)), "model"),
    "cnn unknown arch": (lambda *a: models.cnn("resnet", 4, rngs=nnx.Rngs(0)), "arch"),
    "cnn negative depth": (lambda *a: models.cnn("plain", -4, rngs=nnx.Rngs(0)), "depth"),
    "cnn absurd depth": (lambda *a: models.cnn("plain", 10**6, rngs=nnx.Rngs(0)), "depth"),
    "cnn odd residual depth": (lambda *a: models.cnn("residual", 5, rngs=nnx.Rngs(0)), "depth"),
    "cnn width 0": (lambda *a: models.cnn("plain", 4, width=0, rngs=nnx.Rngs(0)), "width"),
    "cnn unknown init": (lambda *a: models.cnn("plain", 4, init="zeros", rngs=nnx.Rngs(0)),
                         "init"),
    "cnn unknown conv": (lambda *a: models.cnn("plain", 4, conv="dilated", rngs=nnx.Rngs(0)),
                         "conv"),
    "mlp unknown activation": (lambda *a: models.mlp("plain", 4, width=4, in_features=4,
                                                     num_classes=2, activation="swish",
                                                     rngs=nnx.Rngs(0)), "activation"),
    "mlp in_features 0": (lambda *a: models.mlp("plain", 4, width=4, in_features=0,
                                                num_classes=2, rngs=nnx.Rngs(0)), "in_features"),
    "mlp num_classes 0": (lambda *a: models.mlp("plain", 4, width=4, in_features=4,
                                                num_classes=0, rngs=nnx.Rngs(0)), "num_classes"),
    "History.load garbage": (lambda m, x, y, t: History.load(_garbage(t)), "garbage.npz"),
    "History.load foreign npz": (lambda m, x, y, t: History.load(_foreign_npz(t)), "foreign.npz"),
    "History.load missing": (lambda m, x, y, t: History.load(t / "missing.npz"), "missing.npz"),
    "Snapshot.load a History": (lambda m, x, y, t: gf.Snapshot.load(_history_file(t)),
                                "snapshot"),
    "npz loader garbage": (lambda m, x, y, t: loaders.npz(_garbage(t)), "garbage.npz"),
    "npz loader negative labels": (lambda m, x, y, t: loaders.npz(_npz_with(
        t, x=np.zeros((4, 2, 2, 1)), y=np.array([0, 1, -1, 0]))), "negative labels"),
    "npz loader NaN images": (lambda m, x, y, t: loaders.npz(_npz_with(
        t, x=np.full((4, 2, 2, 1), np.nan), y=np.arange(4))), "non-finite"),
    "idx loader bad magic": (lambda m, x, y, t: loaders.read_idx(_bad_idx(t)), "images-idx3"),
    "folder loader not a directory": (lambda m, x, y, t: loaders.image_folder(t / "none"),
                                      "not a directory"),
    "data.load unknown dataset": (lambda *a: data.load("imagenet"), "dataset"),
    "batches size 0": (lambda m, x, y, t: next(data.batches(np.zeros((4, 1)), np.zeros(4), 0)),
                       "batch_size"),
    "batches larger than data": (lambda m, x, y, t: next(data.batches(np.zeros((4, 1)),
                                                                     np.zeros(4), 5)),
                                 "batch_size"),
    "make_optimizer unknown": (lambda *a: experiment.make_optimizer("rmsprop", 0.1),
                               "optimizer"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_bad_api_argument_raises_one_line_value_error(case, tiny, tmp_path):
    call, needle = API_CASES[case]
    with pytest.raises(ValueError) as exc:
        call(*tiny, tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and needle in msg, msg


# -- divergence --------------------------------------------------------------------------------------

def _hist(rows, layers=("in", "mid", "out"), loss=None, meta=None):
    """A History from {metric: (records, layers)} arrays."""
    rows = {k: np.asarray(v, dtype=np.float32) for k, v in rows.items()}
    n = len(next(iter(rows.values())))
    loss = np.full(n, 2.0) if loss is None else np.asarray(loss, dtype=np.float32)
    return History(layers, rows, {"loss": loss, "accuracy": np.zeros(n)}, meta or {},
                   steps=np.arange(n) * 5)


def test_divergence_is_located_in_backward_and_forward_order():
    nan, inf = np.nan, np.inf
    h = _hist({"grad_norm": [[1, 1, 1], [1, 1, 1], [inf, 1, 1], [nan, nan, nan]],
               "error_norm": [[1, 1, 1], [1, 1, 1], [1, nan, 1], [nan, nan, nan]],
               "act_std": [[1, 1, 1], [1, 1, 1], [1, inf, inf], [nan, nan, nan]]})
    where = divergence.locate(h)
    # record 2 is the first with a non-finite gradient; backprop meets 'mid' before 'in'
    assert where == divergence.Divergence(step=10, record=2, backward_layer="mid", forward_layer="mid")
    assert "'mid' (backward order)" in divergence.describe(where.backward_layer, where.forward_layer)
    # a non-finite loss alone is divergence too; error norms a model without probes could not
    # measure (NaN everywhere) are ignored
    h2 = _hist({"grad_norm": [[1, 1, 1], [1, 1, 1]], "error_norm": [[nan] * 3, [nan] * 3]},
               loss=[2.0, np.inf], meta={"probed": False})
    assert list(divergence.nonfinite_records(h2)) == [False, True]
    assert divergence.locate(h2).backward_layer is None
    assert divergence.locate(_hist({"grad_norm": np.ones((3, 3))})) is None


def test_train_stops_on_a_non_finite_gradient_even_when_the_loss_is_finite(tiny):
    model, x, y = tiny
    model = nnx.clone(model)

    def sqrt_loss(out, y):  # finite value 0, but d sqrt(u)/du at u = 0 is infinite
        return jnp.sqrt(jnp.sum(out * 0.0) ** 2)

    h = gf.train(model, [(x, y)] * 4, steps=4, optimizer=optax.sgd(0.1), loss=sqrt_loss)
    assert h.meta["diverged_at_step"] == 0 and list(h.steps) == [0]
    assert np.isfinite(h["loss"]).all() and not np.isfinite(h["grad_norm"]).all()
    assert divergence.locate(h).backward_layer == h.layers[-1]  # the output layer first


@pytest.fixture(scope="module")
def diverged():
    # lr 1e8: the first update sends the gradients to infinity at step 1, the output layer
    # first, from the scanned build's initial draw (stack "auto" off CPU) as from the unrolled
    # one's; at lr 1e4 the scanned build's loss alone overflows, at step 5, with no layer to name
    cfg = experiment.Config(depth=4, width=4, archs=("residual",), steps=6, log_every=1,
                            lr=1e8, optimizer="sgd")
    ds = data.synthetic(0, n_train=64, n_test=32)
    results = [experiment.train_arch(a, cfg, ds) for a in cfg.archs]
    return cfg, ds, results


def test_a_diverged_arch_reports_where_in_summary_diagnosis_and_report(diverged):
    cfg, ds, results = diverged
    res = results[0]
    assert res.diverged_at is not None
    h = res.history
    assert np.isfinite(h["loss"]).all() and h.steps[-1] < res.diverged_at
    layer = res.nonfinite_layer
    assert layer in h.layers and h.meta["nonfinite_layer_backward"] == layer
    summary = verdict.summarize(results, cfg, ds)
    a = summary["archs"][0]
    assert a["nonfinite_layer"] == layer
    assert f"first non-finite at layer '{layer}' (backward order)" in a["verdict"]
    assert a["diagnosis_end"][0].startswith(f"divergence at step {res.diverged_at} [{layer}]")
    json.dumps(summary, allow_nan=False)
    page = report.html_report(summary, [])
    assert page.count(f"first non-finite at layer &#x27;{layer}&#x27;") == 2  # table, diagnosis


def test_figures_never_draw_non_finite_values():
    """Non-finite cells are masked (drawn as 'bad'), colour scales and axes come from the finite
    values alone, and curves have gaps instead of infinities."""
    import matplotlib.pyplot as plt

    vals = np.array([[1e-3, 1e-2, 1.0], [np.nan, np.inf, 2.0], [-np.inf, 0.5, np.nan]])
    h = _hist({"error_norm": vals, "grad_norm": vals}, loss=[2.0, np.inf, np.nan])
    fig = gf.plot.heatmap(h, "error_norm")
    mesh = fig.axes[0].collections[0]
    cells = np.ma.masked_invalid(mesh.get_array()).reshape(3, 3)  # layers x records
    assert cells.mask[0, 1] and cells.mask[1, 1] and cells.mask[0, 2] and cells.mask[2, 2]
    assert np.isfinite(cells.compressed()).all()
    assert (mesh.norm.vmin, mesh.norm.vmax) == (pytest.approx(1e-3), pytest.approx(2.0))
    plt.close(fig)
    runs = {"a": h, "b": _hist({"error_norm": np.ones((3, 3)), "grad_norm": np.ones((3, 3))})}
    grid = gf.plot.comparison_grid(runs, "error_norm", {"a": 12}, steps=15)
    for m in (ax.collections[0] for ax in grid.axes[:2]):
        arr = np.ma.masked_invalid(m.get_array())
        assert np.isfinite(arr.compressed()).all() and np.isfinite([m.norm.vmin, m.norm.vmax]).all()
    plt.close(grid)
    for fig in (gf.plot.profiles(runs), gf.plot.curves(runs, 10, steps=15)):
        for ax in fig.axes:
            for line in ax.get_lines():
                assert not np.isinf(np.asarray(line.get_ydata(), dtype=float)).any()
            assert np.isfinite(ax.get_ylim()).all()
        plt.close(fig)


# -- signals in-process (the subprocess tests are in test_resume.py) ------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_becomes_a_stop_request_and_the_handlers_are_restored(sig, code):
    from gradflow.cli.interrupt import catch_signals

    before = signal.getsignal(sig)
    with catch_signals(stream=io.StringIO()) as stop:
        assert not stop()
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # Python runs the handler between bytecodes
        assert stop() and stop.requested and stop.exit_code == code
        assert stop.name == signal.Signals(sig).name
    assert signal.getsignal(sig) is before

