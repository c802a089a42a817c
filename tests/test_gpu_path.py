"""The choices gradflow makes off CPU, emulated on CPU: there `stack="auto"` scans every repeated
block stack (CNNs included), so costs, BatchNorm freezing, the hierarchy experiment, the
independent reference and the divergence report must all handle scanned CNNs; and the command
line turns on XLA's deterministic GPU kernels."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf
from gradflow import data
from gradflow.analysis.flops import costs
from gradflow.experiments import hierarchy, separable, verdict
from gradflow.experiments import side_by_side as experiment
from gradflow.models import networks
from gradflow.models.freeze import batchnorm_arrays
from gradflow.report import run_report
from gradflow.run import deterministic_xla_flags
from _backend import ON_CPU
from reference import reference_probe

X = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))
Y = jnp.arange(8) % 10


@pytest.fixture
def gpu_stacks(monkeypatch):
    """stack="auto" decides as it does off CPU: scanned, whatever the model and depth."""
    monkeypatch.setattr(networks, "_use_scan", lambda stack, depth, conv=True: stack != "unrolled")


def _cnn(stack, arch="residual_bn", depth=6, **kw):
    return nnx.eval_shape(lambda: gf.models.cnn(arch, depth, width=4, stack=stack,
                                                rngs=nnx.Rngs(0), **kw))


@pytest.mark.parametrize("arch,kw", [("residual_bn", {"conv": "separable", "stages": 2}),
                                     ("plain", {"stages": 3}), ("bn", {})])
def test_costs_of_a_scanned_cnn_are_the_unrolled_cnns(arch, kw):
    scanned, unrolled = (costs(_cnn(s, arch, 10, **kw), (8, 8, 3)) for s in ("scan", "unrolled"))
    assert scanned.layers == unrolled.layers  # names, kinds, shapes, parameters, MACs
    assert (scanned.model_params, scanned.macs) == (unrolled.model_params, unrolled.macs)
    assert any("/rest/blocks/1/" in r.name for r in scanned.layers)


def test_separable_cost_table_is_the_same_with_scanned_stacks(gpu_stacks):
    table = separable.cost_table(["residual_bn", "plain"], 6, 4, (16, 16, 3), 10, 0)
    for name, (c, mismatches) in table.items():
        assert mismatches == [], name  # every layer equals its closed form, biases included
        unrolled = costs(nnx.eval_shape(lambda: experiment.build_model(
            name, experiment.Config(depth=6, width=4), (16, 16, 3), 10, stack="unrolled")),
            (16, 16, 3))
        assert c.to_dict() == unrolled.to_dict(), name


def test_freeze_batchnorm_counts_a_stacked_batchnorm_once_per_block():
    for stack in ("scan", "unrolled"):
        model = _cnn(stack)
        assert gf.freeze_batchnorm(model) == 5, stack  # stem + 2 blocks x 2
        assert gf.unfreeze_batchnorm(model) == 5, stack
    mlp = nnx.eval_shape(lambda: gf.models.mlp("bn", 5, width=4, in_features=3, num_classes=2,
                                               stack="scan", rngs=nnx.Rngs(0)))
    assert gf.freeze_batchnorm(mlp) == 4  # stem + 3 hidden units


def test_a_frozen_scanned_batchnorm_is_untouched_by_training():
    model = gf.models.cnn("bn", 4, width=4, stack="scan", rngs=nnx.Rngs(0))
    gf.freeze_batchnorm(model)
    before = batchnorm_arrays(model)
    kernel = np.asarray(model.stages[0].rest.block.layer.kernel.get_value())
    gf.train(model, [(X, Y)] * 2, steps=2, optimizer=optax.sgd(0.1))
    for k, v in batchnorm_arrays(model).items():
        np.testing.assert_array_equal(before[k], v, err_msg=str(k))
    assert not np.allclose(kernel, model.stages[0].rest.block.layer.kernel.get_value())


def test_hierarchy_shows_every_block_on_every_backend(gpu_stacks):
    models = {key: (model, shape) for key, _, model, shape in hierarchy.zoo(6, 4, ["plain"], 0)}
    model, shape = models["cnn_plain"]
    rows = {b["name"]: b["params"] for b in hierarchy.blocks(gf.summary(model, shape))}
    assert rows["stages/0/rest/blocks/0"] == rows["stages/0/rest/blocks/1"] == 9 * 16 + 4
    assert hierarchy.cnn_stack(6) == "unrolled" and hierarchy.cnn_stack(1000) == "scan"


def test_the_reference_unrolls_a_scanned_cnn_itself():
    model = gf.models.cnn("residual_bn", 6, width=4, stack="scan", rngs=nnx.Rngs(0))
    snap = gf.probe(model, (X, Y))
    ref_grad, ref_err = reference_probe(model, X, Y, gf.losses.cross_entropy)
    assert len(ref_grad) == len(snap.layers) == 2 + 2 * 2
    np.testing.assert_allclose(snap["grad_norm"], ref_grad, rtol=2e-4, atol=1e-8)
    np.testing.assert_allclose(snap["error_norm"], ref_err, rtol=2e-4, atol=1e-8)


def _diverged(lr):
    cfg = experiment.Config(depth=4, width=4, archs=("residual",), steps=6, log_every=1, lr=lr,
                            optimizer="sgd")
    ds = data.synthetic(0, n_train=64, n_test=32)
    res = experiment.train_arch("residual", cfg, ds)
    summary = verdict.summarize([res], cfg, ds)
    return res, summary["archs"][0], run_report.html_report(summary, [])


def test_a_scanned_cnns_divergence_names_its_layer(gpu_stacks):
    res, a, page = _diverged(1e8)
    layer = res.nonfinite_layer
    assert layer == "head" and layer in res.history.layers and res.diverged_at == 1
    assert f"first non-finite at layer '{layer}' (backward order)" in a["verdict"]
    assert a["diagnosis_end"][0].startswith(f"divergence at step 1 [{layer}]")
    assert page.count(f"first non-finite at layer &#x27;{layer}&#x27;") == 2


def test_a_divergence_of_the_loss_alone_never_names_a_layer_none(gpu_stacks):
    """At lr 1e4 the scanned build's loss overflows (at step 5 on CPU) while every error and
    gradient norm is still finite: no backward layer to name; the activations' layer is named."""
    res, a, page = _diverged(1e4)
    if ON_CPU:  # the case this test is about (elsewhere the trajectory may round differently)
        assert res.diverged_at == 5 and res.nonfinite_layer is None
    assert a["nonfinite_layer"] == res.nonfinite_layer
    assert "None" not in a["verdict"] and "[None]" not in a["diagnosis_end"][0]
    assert "&#x27;None&#x27;" not in page and "[None]" not in page
    if res.nonfinite_layer is None:
        assert f"diverged by step {res.diverged_at} (loss became non-finite)" in a["verdict"]
        assert res.nonfinite_forward_layer in res.history.layers
        assert (f"activations non-finite from layer '{res.nonfinite_forward_layer}'"
                in a["diagnosis_end"][0])


def test_the_command_line_turns_on_deterministic_gpu_kernels_unless_told_otherwise():
    assert deterministic_xla_flags("") == "--xla_gpu_deterministic_ops=true"
    assert deterministic_xla_flags("--xla_cpu_multi_thread_eigen=false") == (
        "--xla_cpu_multi_thread_eigen=false --xla_gpu_deterministic_ops=true")
    for own in ("--xla_gpu_deterministic_ops=false", "--xla_gpu_deterministic_ops=true"):
        assert deterministic_xla_flags(own) == own
