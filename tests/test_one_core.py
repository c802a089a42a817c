"""One measurement core: gf.probe, gf.value_and_grad and gf.train's records measure through
`measure_call`, so the same model and batch give the same numbers by all three, normalization
layers' `grad_norm:<path>` scalars included; History and checkpoints keep those scalars; eager
gf.value_and_grad calls trace the model once per call signature."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf
import gradflow.grad as grad_module
from gradflow.checkpoint import Checkpoint
from gradflow.instrument import LAYER_METRICS
from gradflow.train import TrainState

X = jax.random.normal(jax.random.key(1), (16, 6))
Y = jnp.arange(16) % 4
NORM_SCALARS = {f"grad_norm:{layer}/{p}" for layer in ("bn", "ln") for p in ("scale", "bias")}


class Net(nnx.Module):
    """Linear -> BatchNorm (batch statistics) -> relu -> Linear -> LayerNorm -> Linear."""

    def __init__(self, rngs):
        self.enc = nnx.Linear(6, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, use_running_average=False, rngs=rngs)
        self.mid = nnx.Linear(8, 8, rngs=rngs)
        self.ln = nnx.LayerNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        return self.head(self.ln(self.mid(nnx.relu(self.bn(self.enc(x))))))


def _cross_entropy(model, x, y):
    return gf.losses.resolve("cross_entropy")[0](model(x), y)  # the loss gf.probe/gf.train use


def _three_ways():
    probed = gf.probe(Net(nnx.Rngs(0)), (X, Y))
    _, _, eager = gf.value_and_grad(_cross_entropy)(Net(nnx.Rngs(0)), X, Y)
    jitted = nnx.jit(lambda m, x, y: gf.value_and_grad(_cross_entropy)(m, x, y)[2])(
        Net(nnx.Rngs(0)), X, Y)
    hist = gf.train(Net(nnx.Rngs(0)), [(X, Y)], steps=1, optimizer=optax.sgd(0.1))
    return probed, eager, jitted, hist


def test_probe_value_and_grad_and_train_agree_on_every_number():
    probed, eager, jitted, hist = _three_ways()
    recorded = hist.snapshot(0)
    assert set(probed.scalars) == NORM_SCALARS | {"loss", "accuracy"}
    assert set(eager.scalars) == set(jitted.scalars) == NORM_SCALARS | {"loss"}
    assert set(recorded.scalars) == NORM_SCALARS | {"loss", "accuracy"}
    assert probed.metrics == eager.metrics == LAYER_METRICS
    assert probed.layers == eager.layers == recorded.layers == ("enc", "mid", "head")
    for name in (*LAYER_METRICS, "loss", *sorted(NORM_SCALARS)):
        want = np.asarray(probed[name])
        assert np.all(np.isfinite(want)) and (name == "dead_frac" or np.any(want != 0)), name
        # On CPU the jitted paths (probe, train record, value_and_grad in nnx.jit) agree bit for
        # bit; eager value_and_grad runs op by op, unfused, and differs by rounding (<= 1.1e-7
        # relative). "mid" passes on the LayerNorm's output, whose mean is 0 up to rounding
        # (~3e-8): act_mean is compared to 1e-6 of the activations' spread instead.
        atol = 1e-6 * float(np.min(probed["act_std"])) if name == "act_mean" else 0
        for got in (recorded, jitted, eager):
            np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=atol, err_msg=name)
    assert float(recorded["accuracy"]) == float(probed["accuracy"])


def test_norm_layer_scalars_equal_the_gradients_norms():
    model = Net(nnx.Rngs(0))
    _, grads = nnx.value_and_grad(_cross_entropy)(Net(nnx.Rngs(0)), X, Y)
    snap = gf.probe(model, (X, Y))
    for name in NORM_SCALARS:
        layer, param = name.split(":")[1].split("/")
        want = np.linalg.norm(np.asarray(grads[layer][param][...], np.float64))
        assert float(snap[name]) == pytest.approx(want, rel=1e-5)
    assert "grad_norm:enc/kernel" not in snap  # weight layers are rows, not scalars


def test_history_and_checkpoint_keep_the_norm_layer_scalars(tmp_path):
    model = Net(nnx.Rngs(0))
    hist = gf.train(model, [(X, Y)] * 3, steps=3, optimizer=optax.sgd(0.1), log_every=1)
    assert NORM_SCALARS <= set(hist.scalars) and hist["grad_norm:bn/scale"].shape == (3,)
    back = gf.History.load(hist.save(tmp_path / "h.npz"))
    assert back.scalars == hist.scalars
    for k in hist.metrics + hist.scalars:
        np.testing.assert_array_equal(back[k], hist[k])
    records = [{k: hist[k][i] for k in hist.metrics + hist.scalars} for i in range(3)]
    _, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = optax.sgd(0.1).init(params)
    state = TrainState(3, params, rest, opt_state, [0, 1, 2], records, hist.layers)
    ckpt = Checkpoint(tmp_path / "ckpt")
    ckpt.save(state)
    restored = ckpt.restore(state)
    ckpt.close()
    assert restored.at == [0, 1, 2]
    for got, want in zip(restored.records, records):
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_eager_calls_discover_the_layout_once_per_signature(monkeypatch):
    calls = []
    original = grad_module.discover_call

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(grad_module, "discover_call", counting)
    grad_fn, model = gf.value_and_grad(_cross_entropy), Net(nnx.Rngs(0))
    grad_fn(model, X, Y)
    _, _, snap = grad_fn(model, X + 1.0, Y)  # same shapes: the cached layout
    assert len(calls) == 1 and snap.layers == ("enc", "mid", "head")
    grad_fn(model, X[:8], Y[:8])  # another batch size: traced again
    assert len(calls) == 2
    grad_fn(model, X[:8], Y[:8])
    assert len(calls) == 2
    gf.value_and_grad(_cross_entropy)(model, X, Y)  # another grad_fn: its own layouts
    assert len(calls) == 3

    def flagged(model, x, y, train=True):
        out = model(x) if train else model.head(model.ln(model.mid(model.enc(x))))
        return gf.losses.resolve("cross_entropy")[0](out, y)

    grad_fn = gf.value_and_grad(flagged)
    assert grad_fn(model, X, Y)[2].layers == ("enc", "mid", "head")
    assert grad_fn(model, X, Y, train=False)[2].layers == ("enc", "mid", "head")
    assert len(calls) == 5  # a static argument's value is part of the signature
    grad_fn(model, X, Y, train=False)
    assert len(calls) == 5

    @gf.instrument.register_activation
    class Shift(nnx.Module):  # registering clears the cached layouts
        def __call__(self, x):
            return x + 1.0

    grad_fn(model, X, Y, train=False)
    assert len(calls) == 6
