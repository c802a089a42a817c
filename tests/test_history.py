"""Snapshot and History: shapes, save/load round trips, clear errors on bad files."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf


@pytest.fixture(scope="module")
def history():
    model = gf.models.mlp("bn", 5, width=6, in_features=4, num_classes=3, rngs=nnx.Rngs(0))
    x, y = jnp.ones((8, 4)), jnp.arange(8) % 3
    return gf.train(model, [(x, y)] * 7, steps=7, optimizer=optax.sgd(0.1), log_every=3)


def test_history_shapes_and_steps(history):
    assert list(history.steps) == [0, 3, 6]
    assert set(gf.instrument.TRAIN_METRICS) == set(history.metrics)
    assert history["grad_norm"].shape == (3, 5) and history["loss"].shape == (3,)
    assert len(history.layers) == 5


def test_recorded_steps_include_last():
    assert gf.recorded_steps(10, 4) == [0, 4, 8, 9]
    assert gf.recorded_steps(9, 4) == [0, 4, 8]


def test_round_trip(tmp_path, history):
    path = history.save(tmp_path / "h.npz")
    loaded = gf.History.load(path)
    assert loaded.layers == history.layers and list(loaded.steps) == list(history.steps)
    for k in history.metrics + history.scalars:
        np.testing.assert_array_equal(loaded[k], history[k])
    snap = history.snapshot(-1)
    snap.save(tmp_path / "s.npz")
    s2 = gf.Snapshot.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(s2["grad_norm"], history["grad_norm"][-1])
    assert not list(tmp_path.glob("*.tmp"))


def test_load_errors_name_the_file(tmp_path, history):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        gf.History.load(bad)
    history.save(tmp_path / "h.npz")
    with pytest.raises(ValueError, match="snapshot"):
        gf.Snapshot.load(tmp_path / "h.npz")


def test_train_argument_errors():
    model = gf.models.mlp("plain", 3, width=4, in_features=4, num_classes=2, rngs=nnx.Rngs(0))
    batch = (jnp.ones((2, 4)), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="log_every"):
        gf.train(model, [batch], steps=1, optimizer=optax.sgd(0.1), log_every=0)
    with pytest.raises(ValueError, match="ran out"):
        gf.train(model, [batch], steps=3, optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match="optax"):
        gf.train(model, [batch], steps=1, optimizer="sgd")
    with pytest.raises(ValueError, match="loss"):
        gf.probe(model, batch, loss="hinge")


def test_train_stops_on_nonfinite_loss_and_keeps_history():
    model = gf.models.mlp("residual", 8, width=16, in_features=4, num_classes=3, init="he",
                          rngs=nnx.Rngs(0))
    x, y = jnp.ones((8, 4)) * 100, jnp.arange(8) % 3
    h = gf.train(model, [(x, y)] * 50, steps=50, optimizer=optax.sgd(10.0), log_every=1)
    stop = h.meta["diverged_at_step"]
    finite = [np.isfinite(h["loss"][i]) and np.isfinite(h["grad_norm"][i]).all()
              and np.isfinite(h["error_norm"][i]).all() for i in range(len(h.steps))]
    # the loss or some layer's gradient went non-finite at the last record, not before
    assert h.steps[-1] == stop < 49 and not finite[-1] and all(finite[:-1])
    # the diverging update was not applied: the model holds the last finite parameters
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(np.all(np.isfinite(np.asarray(a))) for a in leaves)
