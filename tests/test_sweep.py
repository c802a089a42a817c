"""Depth sweeps: `python -m gradflow.run --depth 4,8 --steps 0` end to end, its values against a
direct `gf.probe` of the same models, the loss-scaled rescue of underflowing error norms, the
theory curve, training sweeps, the figure and the option checking."""
from __future__ import annotations

import dataclasses
import json
import math

import jax
import matplotlib.image as mpimg
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow import data, cli
from gradflow.experiments import depth_sweep as sweep, side_by_side as experiment, verdict
from gradflow.report import sweep_report as sweep_output
from gradflow.analysis import theory

TINY = ["--depth", "4,8", "--steps", "0", "--width", "4", "--archs", "plain,residual_bn"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    with pytest.MonkeyPatch.context() as mp:
        import io
        err, outbuf = io.StringIO(), io.StringIO()
        mp.setattr("sys.stderr", err)
        mp.setattr("sys.stdout", outbuf)
        code = cli.main([*TINY, "--out", str(out)])
    return code, out, outbuf.getvalue(), err.getvalue()


def test_cli_sweep_writes_its_files_table_and_progress(tiny_sweep):
    code, out, stdout, stderr = tiny_sweep
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "sweep.json", "sweep.png"]
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["arch", "depth", "attenuation"] and "theory" in lines[0]
    rows = [ln.split() for ln in lines[2:6]]
    assert [(r[0], r[1]) for r in rows] == [("plain", "4"), ("plain", "8"), ("residual_bn", "4"),
                                           ("residual_bn", "8")]
    assert float(rows[2][-1]) > 0  # residual archs: the population-dynamics theory
    assert "Traceback" not in stderr
    assert stderr.startswith("depth sweep: 2 archs × 2 depths × 3 seeds, at init")
    assert sum(": attenuation" in ln for ln in stderr.splitlines()) == 4  # one per arch, depth
    img = mpimg.imread(out / "sweep.png")
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    assert img[..., :3].std() > 0.05
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "residual_bn" in page and "--depth 4,8" in page


def test_sweep_json_matches_a_direct_probe_of_the_same_models(tiny_sweep):
    _, out, stdout, _ = tiny_sweep
    s = json.loads((out / "sweep.json").read_text())
    assert s["kind"] == "depth_sweep" and s["depths"] == [4, 8] and s["seeds"] == [0, 1, 2]
    assert s["archs"] == ["plain", "residual_bn"] and s["steps"] == 0
    assert len(s["cells"]) == 2 * 2 * 3
    cfg = experiment.Config(width=4, archs=("plain", "residual_bn"))
    ds = data.synthetic(0)
    batch = s["probe_batch"]
    assert batch == sweep.probe_batch_size(cfg) == 8
    for c in s["cells"]:
        assert c["status"] == "ok"
        cell_cfg = dataclasses.replace(cfg, depth=c["depth"], seed=c["seed"])
        # the same model, probed directly: the sweep's probes at init build it with
        # probe_stack (unrolled at these depths, on every backend; "auto" would scan it off
        # CPU, a different draw of the initial weights)
        stack = sweep.probe_stack("cnn", c["depth"])
        assert stack == "unrolled"
        model = sweep.build(c["arch"], cell_cfg, ds.image_shape, ds.num_classes, stack=stack)
        snap = gf.probe(model, sweep.first_batch(ds, batch, c["seed"]))
        e = np.asarray(snap["error_norm"], dtype=np.float64)
        assert c["layers"] == len(e) == c["depth"]
        assert c["attenuation"] == pytest.approx(e[0] / e[-1], rel=1e-5)
        assert c["error_first"] == pytest.approx(e[0], rel=1e-5)
        assert c["initial_loss"] == pytest.approx(float(snap["loss"]), rel=1e-5)
    for row in s["summary"]:
        vals = [c["attenuation"] for c in s["cells"]
                if c["arch"] == row["arch"] and c["depth"] == row["depth"]]
        assert row["median"] == pytest.approx(float(np.median(vals)))
        assert (row["min"], row["max"]) == (pytest.approx(min(vals)), pytest.approx(max(vals)))
        expected = theory.theory_attenuation(row["arch"], row["depth"], model="cnn",
                                            init="lecun", activation="relu",
                                            image_shape=ds.image_shape)
        assert row["theory"] == (None if expected is None else pytest.approx(expected))
        assert f"{row['median']:.1e}" in stdout


def test_scanned_probes_match_gf_probe_and_the_eager_build(monkeypatch):
    """Above UNROLL_MAX_DEPTH the sweep scans the hidden blocks and initializes them with one
    compiled program: the same parameters as the eager build (to float32 rounding), and the
    measured values are gf.probe's."""
    monkeypatch.setattr(sweep, "UNROLL_MAX_DEPTH", 4)
    cfg = experiment.Config(width=4, archs=("bn",))
    ds = data.synthetic(0, n_train=64, n_test=16)
    res = sweep.depth_sweep(cfg, [8, 4], seeds=[3], steps=0, ds=ds)
    assert res.depths == (4, 8) and res.config["probe_stack"] == {4: "unrolled", 8: "scan"}
    for c in res.cells:
        cell_cfg = dataclasses.replace(cfg, depth=c.depth, seed=c.seed)
        stack = sweep.probe_stack("cnn", c.depth)
        model = sweep.build("bn", cell_cfg, ds.image_shape, ds.num_classes, stack)
        snap = gf.probe(model, sweep.first_batch(ds, res.probe_batch, c.seed))
        assert c.attenuation == pytest.approx(snap["error_norm"][0] / snap["error_norm"][-1],
                                              rel=1e-5)
        if stack == "scan":
            eager = gf.models.cnn("bn", c.depth, width=4, num_classes=10, stack="scan",
                                  rngs=nnx.Rngs(c.seed))
            for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(eager))):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_tiny_error_norms_are_measured():
    """A deep plain ReLU MLP (lecun) attenuates ~2^-(D-1)/2, at depth 100 about 1e-15 and at
    width 16 far less (~1e-20), where per-element float32 squares underflow: the error tap's
    rescaled sum measures it directly."""
    cfg = experiment.Config(depth=100, width=16, model="mlp", archs=("plain",))
    ds = data.synthetic(0, n_train=64, n_test=16)
    model = sweep.build("plain", cfg, ds.image_shape, ds.num_classes, "scan")
    batch = sweep.first_batch(ds, 32, 0)
    assert gf.probe(model, batch)["error_norm"][0] > 0  # no underflow
    m = sweep.attenuation(model, batch)
    assert m["error_last"] > 0 and m["attenuation"] is not None and 0 < m["attenuation"] < 1e-15
    assert m["error_first"] == pytest.approx(m["attenuation"] * m["error_last"], rel=1e-5)


def test_theory_attenuation():
    # plain ReLU, lecun: ||dL/dz||^2 halves per layer below the output layer
    assert theory.theory_attenuation("plain", 10, model="mlp", init="lecun",
                                    activation="relu") == pytest.approx(0.5 ** 4.5)
    # CNN: the global average pooling over H*W = 256 positions divides the norm by 16
    assert theory.theory_attenuation("plain", 10, model="cnn", init="lecun", activation="relu",
                                    image_shape=(16, 16, 3)) == pytest.approx(0.5 ** 4.5 / 16)
    assert theory.theory_attenuation("plain", 10, model="mlp", init="he",
                                    activation="relu") == pytest.approx(1.0)
    growth = math.pi / (math.pi - 1)
    assert theory.theory_attenuation("bn", 6, model="mlp", init="lecun",
                                    activation="relu") == pytest.approx(growth ** 2.5)
    # residual archs: the population-dynamics profile (tested against measurements in
    # test_theory), read the same way; with BN the error grows toward the input
    res = theory.theory_attenuation("residual_bn", 8, model="mlp", init="lecun", activation="relu")
    p = theory.residual_profile(8, init="lecun", bn=True)["error_sq"]
    assert res == pytest.approx(math.sqrt(p[0] / p[-1])) and res > 1
    for arch, act in (("residual", "gelu"), ("bn", "tanh"), ("plain", "gelu"),
                      ("plain_separable", "relu")):
        assert theory.theory_attenuation(arch, 8, model="cnn", init="lecun", activation=act,
                                        image_shape=(16, 16, 3)) is None


def test_training_sweep_records_final_loss_and_plots_two_panels():
    cfg = experiment.Config(width=4, archs=("plain",), steps=3, log_every=1, batch_size=8)
    ds = data.synthetic(0, n_train=64, n_test=32)
    seen = []
    res = sweep.depth_sweep(cfg, [3, 5], seeds=[1], ds=ds, on_step=lambda *a: seen.append(a))
    assert res.steps == 3 and res.probe_batch is None and len(res.cells) == 2
    assert seen[:3] == [(0, 3, "plain", 3, 1), (1, 3, "plain", 3, 1), (2, 3, "plain", 3, 1)]
    for c in res.cells:
        r = experiment.train_arch("plain", dataclasses.replace(cfg, depth=c.depth, seed=1), ds)
        h = r.history
        assert c.status == "ok"
        assert c.final_train_loss == pytest.approx(verdict.final_train(h)[0], rel=1e-6)
        assert c.attenuation == pytest.approx(verdict.error_ratio(h, 0), rel=1e-6)
        assert c.attenuation_end == pytest.approx(verdict.error_ratio(h, -1), rel=1e-6)
    row = res.rows()[0]
    assert row["final_train_loss_median"] == res.cells[0].final_train_loss
    assert "final loss" in sweep_output.table(res)
    fig = gf.plot.depth_sweep(res)
    assert len(fig.axes) == 2
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))  # sweep.json round trip
    assert len(gf.plot.depth_sweep(d).axes) == 2


def test_a_failing_or_unmeasurable_cell_is_kept_and_plotted(monkeypatch):
    cfg = experiment.Config(width=4, archs=("plain", "bn"))
    ds = data.synthetic(0, n_train=64, n_test=16)
    real = sweep.attenuation

    def flaky(model, batch, devices=None):
        if len(jax.tree.leaves(nnx.state(model, nnx.BatchStat))):
            raise MemoryError("pretend")
        return real(model, batch, devices)
    monkeypatch.setattr(sweep, "attenuation", flaky)
    res = sweep.depth_sweep(cfg, [3, 4], seeds=[0], steps=0, ds=ds)
    assert [c.status for c in res.cells] == ["ok", "ok", "failed", "failed"]
    assert res.cells[2].note == "MemoryError: pretend" and res.cells[2].attenuation is None
    assert "—" in sweep_output.table(res)
    json.dumps(res.to_dict(), allow_nan=False)
    gf.plot.depth_sweep(res)


@pytest.mark.parametrize("args, option", [
    (["--depth", "4,x"], "--depth"),
    (["--depth", "4,1"], "--depth"),
    (["--depth", "8,4,8"], "--depth"),
    (["--depth", ","], "--depth"),
    (["--depth", "4,5", "--archs", "residual"], "--depth"),
    (["--depth", "4,20000"], "--depth"),
    (["--depth", "4,8", "--steps", "-1"], "--steps"),
    (["--depth", "4,8", "--steps", "x"], "--steps"),
    (["--depth", "8", "--steps", "0"], "--steps"),
    (["--depth", "4,8", "--seeds", "0"], "--seeds"),
    (["--seeds", "2"], "--seeds"),
    (["--depth", "4,8", "--archs", "plain,nope"], "--archs"),
])
def test_bad_sweep_options_exit_2_with_one_line_and_write_nothing(args, option, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--out", "o"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err, err
    assert list(tmp_path.iterdir()) == []


def test_single_depth_parsing_is_unchanged():
    args = cli.parse(["--depth", "12", "--out", "x"])
    assert args.depth == 12 and not args.sweep and args.steps == experiment.Config.steps
    args = cli.parse(["--depth", "16,8", "--steps", "0", "--out", "x"])
    assert args.sweep and args.depths == [8, 16] and args.steps == 0
