"""`python -m gradflow.run --experiment NAME`: option checking, each experiment end to end on a
tiny setting (in process, so compiled steps are shared), and the pieces they rest on: the
binary task, Conv -> ReLU -> BN, and frozen BatchNorm during fine-tuning."""
from __future__ import annotations


import jax
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow import data, cli
from gradflow.experiments import EXPERIMENTS, batchnorm, residual

from reference import reference_probe

FILES = {
    "hierarchy": {"hierarchy.json", "report.html", "pyramid.png"},
    "residual": {"residual.json", "report.html", "comparison_error_norm.png",
                 "comparison_grad_norm.png", "heatmap_shortcuts.png", "heatmap_no_shortcuts.png",
                 "profiles.png", "curves.png", "shortcuts_history.npz",
                 "no_shortcuts_history.npz"},
    "batchnorm": {"batchnorm.json", "report.html", "placement_error_norm.png",
                  "placement_profiles.png", "placement_curves.png", "finetune.png"},
    "separable": {"separable.json", "report.html", "timing.png", "comparison_error_norm.png",
                  "curves.png"},
}


TINY = {
    "hierarchy": ["--depth", "6", "--width", "4"],
    "residual": ["--steps", "2", "--log-every", "1", "--batch-size", "8", "--seeds", "2"],
    "batchnorm": ["--depth", "4", "--width", "4", "--steps", "2", "--log-every", "1",
                  "--batch-size", "8", "--seeds", "2"],
    "separable": ["--depth", "4", "--width", "2", "--steps", "2", "--log-every", "1",
                  "--batch-size", "8", "--archs", "bn", "--seeds", "2"],
}


@pytest.fixture
def done(experiment_run):
    """(code, out, stdout, numbers) of each experiment on its TINY options, run once per
    session (tests/conftest.py, shared with tests/test_figures_story.py and
    tests/test_experiments_numbers.py)."""
    def get(name, capsys=None):
        r = experiment_run(name)
        return r["code"], r["out"], r["text"], r["numbers"]
    return get


# -- options ----------------------------------------------------------------------------------

def test_help_lists_every_experiment():
    text = cli.build_parser().format_help()
    for name in EXPERIMENTS:
        assert name in text


@pytest.mark.parametrize("argv,message", [
    (["--experiment", "hierarchy", "--steps", "5"], "argument --steps: not used by --experiment "
                                                    "hierarchy"),
    (["--experiment", "residual", "--depth", "8"], "argument --depth: not used"),
    (["--experiment", "residual", "--dataset", "mnist"], "argument --dataset: not used"),
    (["--experiment", "separable", "--archs", "bn_separable"], "pairs every arch"),
    (["--experiment", "batchnorm", "--depth", "8,16"], "takes one depth"),
    (["--experiment", "separable", "--depth", "5", "--archs", "residual_bn"], "must be even"),
    (["--experiment", "nope"], "invalid choice"),
])
def test_bad_options_are_one_line_usage_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.parse(argv + ["--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_options_take_the_experiment_defaults(tmp_path):
    args = cli.parse(["--experiment", "batchnorm", "--out", str(tmp_path / "a")])
    assert args.options == EXPERIMENTS["batchnorm"].options
    args = cli.parse(["--experiment", "residual", "--optimizer", "momentum", "--steps", "7",
                      "--out", str(tmp_path / "b")])
    assert args.options["lr"] == 0.01 and args.options["steps"] == 7  # momentum's default lr
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "f").write_text("x")
    with pytest.raises(SystemExit):
        cli.parse(["--experiment", "hierarchy", "--out", str(tmp_path / "c")])


# -- end to end -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_each_experiment_writes_its_files(name, done, capsys):
    code, out, text, numbers = done(name, capsys)
    assert code == 0
    assert {p.name for p in out.iterdir()} == FILES[name]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len([f for f in FILES[name] if
                                                         f.endswith(".png")])
    assert numbers["run"]["experiment"] == name and "--experiment" in numbers["run"]["command"]


def test_hierarchy_counts_follow_the_pyramid(done, capsys):
    _, _, text, numbers = done("hierarchy", capsys)
    m = numbers["models"]
    assert m["seed_resnet"]["total"] == 297_697 and "297,697" in text  # Keras' count
    assert "user_model" in m and "classifier: Linear" in text
    # plain CNN, width 4, 3 stages, biased 3x3 convs: a repeated block of stage s has
    # 9 c^2 + c parameters with c = 4 * 2^s (depth 6: 4 hidden units, 2 + 1 + 1 over the stages)
    blocks = {b["name"]: b["params"] for b in m["cnn_plain"]["blocks"]}
    assert blocks["stages/0/rest/blocks/0"] == blocks["stages/0/rest/blocks/1"] == 9 * 16 + 4
    assert blocks["stages/1/first"] == 9 * 4 * 8 + 8
    assert blocks["stages/2/first"] == 9 * 8 * 16 + 16
    assert blocks["stem"] == 9 * 3 * 4 + 4 and blocks["head"] == 16 * 10 + 10
    assert m["cnn_plain"]["total"] == sum(blocks.values())


def test_residual_compares_with_and_without_shortcuts(done, capsys):
    _, _, text, numbers = done("residual", capsys)
    a, b = numbers["models"]
    assert a["params"] == 297_697 and b["params"] == 297_697 - (128 + 2112 + 8320)  # projections
    assert a["layers"] == 10 and b["layers"] == 7
    for m in (a, b):
        assert 0 <= m["held_out_accuracy"] <= 1 and m["error_ratio_init"] > 0
    rows = {r["path"]: r for r in numbers["summary_32x32"]["rows"]}
    assert rows["blocks/0/projection"]["output_shape"] == [None, 16, 16, 32]  # 1x1, stride 2
    assert "projection: Conv" in text


def test_binary_task_labels_and_pixels():
    ds = data.synthetic(0, n_train=64, n_test=16)
    x, y, xt, yt = residual.binary_task(ds)
    expected = [0 in data.PAIRS[c] for c in ds.y_train]
    assert y.tolist() == expected and x.min() >= 0 and x.max() <= 255
    np.testing.assert_array_equal(x, np.round(x))
    assert abs(np.corrcoef(x.ravel(), ds.x_train.ravel())[0, 1]) > 0.99


def test_batchnorm_reports_both_parts(done, capsys):
    _, _, text, numbers = done("batchnorm", capsys)
    place = numbers["placement"]
    assert set(place) == {"conv-BN-ReLU", "conv-ReLU-BN"}
    assert all(len(p["runs"]) == 2 for p in place.values())
    ft = numbers["finetune"]
    assert ft["frozen_bn_unchanged"] is True and len(ft["runs"]) == 4
    assert ft["runs"][0]["n_train"] == batchnorm.FINETUNE_EXAMPLES
    assert "frozen BN unchanged: yes" in text


def test_separable_costs_match_and_timing_is_measured(done, capsys):
    _, _, text, numbers = done("separable", capsys)
    cost = numbers["cost"]
    assert all(not c["closed_form_mismatches"] for c in cost.values())
    assert cost["bn_separable"]["macs"] < cost["bn"]["macs"]
    assert [r["width"] for r in numbers["timing"]["rows"]] == [2, 8, 32]
    assert all(r["standard_ms"] > 0 and r["separable_ms"] > 0 for r in numbers["timing"]["rows"])
    assert [m["name"] for m in numbers["learning"]] == ["bn", "bn_separable"]


# -- the pieces -------------------------------------------------------------------------------

def test_conv_relu_bn_order_and_its_gradients():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 6, 6, 3))
    y = np.arange(8) % 10
    model = gf.models.cnn("bn", 4, width=4, bn_position="after_act", rngs=nnx.Rngs(0))
    unit = model.stem
    assert unit.layer.use_bias  # Keras Conv2D(activation="relu") keeps its bias
    h = unit.layer(x)
    manual = unit.norm(nnx.relu(h))  # BN after the activation
    np.testing.assert_allclose(unit(x), manual, rtol=1e-6)
    snap = gf.probe(model, (x, y))
    ref_grad, ref_err = reference_probe(model, x, y, gf.losses.cross_entropy)
    np.testing.assert_allclose(snap["grad_norm"], ref_grad, rtol=2e-4, atol=1e-8)
    np.testing.assert_allclose(snap["error_norm"], ref_err, rtol=2e-4, atol=1e-8)
    with pytest.raises(ValueError, match="bn_position"):
        gf.models.cnn("residual_bn", 4, bn_position="after_act", rngs=nnx.Rngs(0))


def _bn(model):
    return {(tuple(p), k): np.asarray(getattr(m, k).get_value())
            for p, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)
            for k in ("mean", "var", "scale", "bias")}


def test_fine_tuning_leaves_frozen_bn_bit_identical_and_trains_the_rest():
    ds = data.synthetic(0, n_train=256, n_test=64)
    pre = gf.models.cnn("bn", 4, width=4, num_classes=5, rngs=nnx.Rngs(0))
    before = _bn(pre)
    kernel = np.asarray(pre.stem.layer.kernel.get_value())
    kw = dict(seed=0, steps=3, batch_size=8, optimizer="momentum", lr=0.05)
    rec, frozen = batchnorm.fine_tune(pre, ds, frozen=True, **kw)
    after = _bn(frozen)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert rec["bn_unchanged"] and rec["variant"] == "BN frozen"
    assert not np.array_equal(kernel, frozen.stem.layer.kernel.get_value())
    rec, free = batchnorm.fine_tune(pre, ds, frozen=False, **kw)
    changed = {k[1] for k, v in _bn(free).items() if not np.array_equal(v, before[k])}
    assert changed == {"mean", "var", "scale", "bias"} and not rec["bn_unchanged"]
    assert len(rec["eval_accuracy"]) == len(rec["eval_steps"]) == 4  # before + after each step
    for k, v in _bn(pre).items():  # the pretrained model itself is untouched
        np.testing.assert_array_equal(v, before[k])
