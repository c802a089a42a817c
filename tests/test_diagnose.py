"""gf.diagnose on constructed cases whose answer is known."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import gradflow as gf

X = jax.random.normal(jax.random.PRNGKey(7), (64, 32))
Y = jnp.arange(64) % 10


def kinds(model, **kw):
    return {f.kind: f for f in gf.diagnose(gf.probe(model, (X, Y)), **kw)}


def mlp(arch, init="he", **kw):
    return gf.models.mlp(arch, 50, width=64, in_features=32, num_classes=10, init=init,
                         rngs=nnx.Rngs(0), **kw)


def test_vanishing_plain_net():
    found = kinds(mlp("plain", init="lecun"))
    f = found["vanishing"]
    assert "falls" in f.evidence and "decades per layer" in f.evidence and f.value < 1e-6
    assert f.layers[0] == "stem/layer" and "He init" in f.suggestion


def test_exploding_plain_bn_net():
    f = kinds(mlp("bn"))["exploding"]
    assert "grows" in f.evidence and f.value > 1e3


def test_exploding_unnormalized_residual_net():
    assert "exploding" in kinds(mlp("residual"))


def test_healthy_residual_bn_net():
    found = kinds(mlp("residual_bn"))
    assert list(found) == ["healthy"]


def test_dead_relus():
    model = gf.models.mlp("plain", 6, width=32, in_features=32, num_classes=10, init="he",
                          rngs=nnx.Rngs(0))
    bias = model.stages[0].rest.block.layer.bias
    bias.set_value(bias.get_value() - 10.0)  # every hidden unit pushed far below zero
    f = kinds(model)["dead_units"]
    assert f.value == 1.0 and len(f.layers) == 4


def test_saturated_tanh():
    model = gf.models.mlp("plain", 6, width=64, in_features=32, num_classes=10, init="he",
                          activation="tanh", rngs=nnx.Rngs(0))
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.Linear):
            m.kernel.set_value(m.kernel.get_value() * 4)
    assert "saturation" in kinds(model, activation="tanh")


def test_divergence_in_history():
    metrics = {"grad_norm": np.array([[1.0, 1.0, 1.0], [np.nan, np.inf, 2.0]]),
               "error_norm": np.ones((2, 3))}
    h = gf.History(["a", "b", "c"], metrics, {"loss": np.array([1.0, np.nan])}, steps=[0, 10])
    f = {f.kind: f for f in gf.diagnose(h)}["divergence"]
    assert "step 10" in f.evidence and f.layers == ("b",)  # b is hit first going backward


def test_unstable_updates():
    metrics = {"grad_norm": np.ones((1, 2)), "error_norm": np.ones((1, 2)),
               "update_ratio": np.array([[0.5, 1e-3]])}
    h = gf.History(["a", "b"], metrics, {"loss": np.ones(1)}, steps=[0])
    f = {f.kind: f for f in gf.diagnose(h)}["unstable_updates"]
    assert f.layers == ("a",) and "learning rate" in f.suggestion


def test_a_healthy_verdict_names_only_what_was_measured():
    layers = ("a", "b", "c")
    snap = gf.Snapshot(layers, {"grad_norm": np.ones(3), "error_norm": np.full(3, np.nan),
                                "act_std": np.full(3, np.nan)})
    healthy = [f for f in gf.diagnose(snap) if f.kind == "healthy"]
    assert healthy and healthy[0].evidence == "error signal not measured"
    measured = gf.Snapshot(layers, {"grad_norm": np.ones(3), "error_norm": np.ones(3),
                                    "act_std": np.ones(3), "dead_frac": np.zeros(3)})
    text = [f for f in gf.diagnose(measured) if f.kind == "healthy"][0].evidence
    assert text == "error signal within 100x across layers, no dead or saturated layers"
