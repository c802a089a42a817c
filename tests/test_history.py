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


# -- the user-loop data model: Snapshot as a pytree, History.append, flushing ----------------------

LAYERS = ("in", "mid", "out")


@jax.jit
def _measure(x):
    """A jitted step's measurement: a Snapshot of device arrays."""
    return gf.Snapshot(LAYERS, {"grad_norm": x * 2.0, "error_norm": jnp.sqrt(x)},
                       {"loss": x.sum(), "accuracy": x.mean()}, {"probed": False})


def test_jit_builds_and_returns_a_snapshot():
    snap = _measure(jnp.arange(1.0, 4.0))
    assert isinstance(snap, gf.Snapshot) and snap.layers == LAYERS
    assert snap.meta == {"probed": False} and snap.metrics == ("grad_norm", "error_norm")
    assert snap.scalars == ("loss", "accuracy")
    assert all(isinstance(snap[k], jax.Array) for k in snap.metrics + snap.scalars)
    leaves = jax.tree.leaves(snap)
    assert len(leaves) == 4 and leaves[0] is snap["grad_norm"] and leaves[2] is snap["loss"]
    np.testing.assert_array_equal(snap["grad_norm"], [2.0, 4.0, 6.0])
    assert snap["loss"].shape == () and float(snap["loss"]) == 6.0
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(snap)]
    assert paths == ["['grad_norm']", "['error_norm']", "['loss']", "['accuracy']"]
    host = jax.device_get(snap)
    assert isinstance(host, gf.Snapshot) and isinstance(host["grad_norm"], np.ndarray)
    doubled = jax.tree.map(lambda a: a * 2, snap)
    assert doubled.layers == LAYERS and float(doubled["loss"]) == 12.0
    # a Snapshot goes into a jitted function too; equal meta gives equal (hashable) treedefs
    assert float(jax.jit(lambda s: s["loss"] + 1)(snap)) == 7.0
    same = gf.Snapshot(LAYERS, {"grad_norm": np.ones(3), "error_norm": np.ones(3)},
                       {"loss": np.float32(1), "accuracy": np.float32(0)}, {"probed": False})
    assert jax.tree.structure(same) == jax.tree.structure(snap)
    hash(jax.tree.structure(snap))
    # numpy-backed snapshots still hold numpy; JSON meta survives a flatten round trip
    assert isinstance(same["loss"], np.ndarray)
    meta = {"b": {"c": None}, "a": [1, 2.5, "x"], "probed": True}
    back = jax.tree.map(lambda a: a, gf.Snapshot(LAYERS, {"grad_norm": np.ones(3)}, meta=meta))
    assert back.meta == meta and back.meta is not meta
    with pytest.raises(TypeError, match="JSON"):  # meta is static data: it must be JSON
        jax.tree.leaves(gf.Snapshot(LAYERS, {"grad_norm": np.ones(3)}, meta={"f": object()}))


def test_snapshot_of_jax_arrays_saves_diagnoses_and_plots(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    snap = _measure(jnp.arange(1.0, 4.0))
    s2 = gf.Snapshot.load(snap.save(tmp_path / "s.npz"))
    assert s2.layers == LAYERS and s2.meta == snap.meta and isinstance(s2["loss"], np.ndarray)
    for k in snap.metrics + snap.scalars:
        np.testing.assert_array_equal(s2[k], np.asarray(snap[k]))
    assert [f.kind for f in gf.diagnose(snap)] == [f.kind for f in gf.diagnose(s2)]
    fig = gf.plot.profile(snap, "grad_norm")
    assert len(fig.axes[0].lines) == 1
    matplotlib.pyplot.close(fig)


def _appended(n, path=None):
    xs = [jnp.arange(1.0, 4.0) * (i + 1) for i in range(n)]
    hist = gf.History() if path is None else gf.History().flush_to(path)
    for i, x in enumerate(xs):
        hist.append(5 * i, _measure(x))
    return hist, xs


def test_append_equals_from_records():
    hist, xs = _appended(40)  # past the first buffer (16) and one doubling
    records = [{k: np.asarray(s[k]) for k in s.metrics + s.scalars} for s in map(_measure, xs)]
    ref = gf.History.from_records(LAYERS, np.arange(40) * 5, records, {"probed": False})
    assert len(hist) == 40 and hist.layers == LAYERS and hist.meta == {"probed": False}
    assert hist.metrics == ref.metrics and hist.scalars == ref.scalars
    assert hist.steps.dtype == np.int64 and hist.steps.tolist() == ref.steps.tolist()
    for k in ref.metrics + ref.scalars:
        assert isinstance(hist[k], np.ndarray) and hist[k].dtype == ref[k].dtype
        assert hist[k].shape == ref[k].shape and hist[k].tobytes() == ref[k].tobytes()
    np.testing.assert_array_equal(hist.snapshot(7)["grad_norm"], ref.snapshot(7)["grad_norm"])
    assert hist.snapshot(-1).meta["step"] == 195
    short = hist.truncated(3)
    assert len(short) == 3 and short.steps.tolist() == [0, 5, 10]
    np.testing.assert_array_equal(short["loss"], ref["loss"][:3])
    # arrays read earlier keep their values and length; appending to a truncated copy is separate
    before = hist["loss"]
    hist.append(1000, _measure(xs[0]))
    assert len(before) == 40 and len(hist["loss"]) == 41 and hist.steps[-1] == 1000
    short.append(11, _measure(xs[0]))
    assert len(short) == 4 and len(hist) == 41 and hist.steps[3] == 15


def test_empty_history_and_constructor_defaults():
    h = gf.History()
    assert len(h) == 0 and h.layers == () and h.metrics == () and h.steps.shape == (0,)
    assert h.steps.dtype == np.int64
    h = gf.History(["a"], {"grad_norm": np.ones((2, 1))})
    assert h.steps.tolist() == [0, 1] and len(h) == 2
    # a History built from arrays grows without touching them
    grad = np.ones((2, 1))
    h = gf.History(["a"], {"grad_norm": grad}, {"loss": np.ones(2)}, steps=[0, 1])
    h.append(2, gf.Snapshot(["a"], {"grad_norm": np.zeros(1)}, {"loss": 0.5}))
    assert h["grad_norm"].tolist() == [[1], [1], [0]] and grad.tolist() == [[1], [1]]
    # a wider dtype later promotes the column
    h.append(3, gf.Snapshot(["a"], {"grad_norm": np.zeros(1, np.float64) + 0.1}, {"loss": 1}))
    assert h["grad_norm"][-1, 0] == 0.1


def test_append_refuses_mismatches_and_keeps_the_history():
    hist, _ = _appended(2)
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="steps must increase"):
        hist.append(5, _measure(x))
    with pytest.raises(ValueError, match="steps must increase"):
        hist.append(4, _measure(x))
    wrong = jax.tree.map(lambda a: a, gf.Snapshot(("in", "mid", "top"), {"grad_norm": x}))
    with pytest.raises(ValueError, match=r"layers differ.*new \['top'\], missing \['out'\]"):
        hist.append(10, wrong)
    fewer = gf.Snapshot(LAYERS, {"grad_norm": x}, {"loss": 1.0, "accuracy": 0.0})
    with pytest.raises(ValueError, match=r"metrics differ.*missing \['error_norm'\]"):
        hist.append(10, fewer)
    more = gf.Snapshot(LAYERS, {"grad_norm": x, "error_norm": x}, {"loss": 1.0, "accuracy": 0.0,
                                                                    "lr": 0.1})
    with pytest.raises(ValueError, match=r"scalars differ.*new \['lr'\]"):
        hist.append(10, more)
    bad = gf.Snapshot(LAYERS, {"grad_norm": x, "error_norm": jnp.ones(4)},
                      {"loss": 1.0, "accuracy": 0.0})
    with pytest.raises(ValueError, match="'error_norm' has shape"):
        hist.append(10, bad)
    with pytest.raises(TypeError, match="Snapshot"):
        hist.append(10, {"grad_norm": x})
    assert len(hist) == 2 and hist.steps.tolist() == [0, 5]
    with pytest.raises(ValueError, match="layers differ"):  # layers given up front are kept
        gf.History(["a", "b"]).append(0, gf.Snapshot(["a", "c"], {"grad_norm": np.ones(2)}))


def test_appended_history_round_trips(tmp_path):
    hist, _ = _appended(20)
    hist.meta["arch"] = "toy"
    loaded = gf.History.load(hist.save(tmp_path / "h.npz"))
    assert loaded.layers == LAYERS and loaded.meta == {"probed": False, "arch": "toy"}
    assert loaded.steps.tolist() == hist.steps.tolist() and loaded.steps.dtype == np.int64
    for k in hist.metrics + hist.scalars:
        assert loaded[k].shape == (20,) + hist[k].shape[1:]
        assert loaded[k].tobytes() == hist[k].tobytes()
    loaded.append(100, _measure(jnp.ones(3)))  # a loaded History grows too
    assert len(loaded) == 21


def test_flush_writes_when_due_and_close_writes_the_rest(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(gf.history, "_clock", lambda: now[0])
    path = tmp_path / "h.npz"
    hist = gf.History().flush_to(path, every_s=2.0)
    assert hist.close() == path and not path.exists()  # nothing appended, nothing written
    x = jnp.ones(3)
    hist.append(0, _measure(x))  # the first append writes
    assert gf.History.load(path).steps.tolist() == [0]
    now[0] += 1.0
    hist.append(1, _measure(x))  # 1 s later: not due
    assert gf.History.load(path).steps.tolist() == [0]
    now[0] += 1.5
    hist.append(2, _measure(x))  # 2.5 s after the last write: due
    got = gf.History.load(path)
    assert got.steps.tolist() == [0, 1, 2] and got.meta == {"probed": False}
    np.testing.assert_array_equal(got["grad_norm"], hist["grad_norm"])
    hist.append(3, _measure(x))
    assert len(gf.History.load(path)) == 3
    assert hist.close() == path and gf.History.load(path).steps.tolist() == [0, 1, 2, 3]
    assert not list(tmp_path.glob("*.tmp"))
    assert gf.History().close() is None


def test_flush_with_the_real_clock(tmp_path):
    hist, _ = _appended(3, path=tmp_path / "h.npz")  # every_s=2: only the first append wrote
    assert len(gf.History.load(tmp_path / "h.npz")) == 1
    hist.close()
    assert len(gf.History.load(tmp_path / "h.npz")) == 3


def test_a_returned_snapshot_keeps_its_meta_without_reencoding_it():
    """jit returns and device_get pass meta along as it came; reading it parses it once, and a
    changed meta travels changed."""
    snap = gf.Snapshot(("a",), {"grad_norm": np.ones(1)}, {}, {"probed": True, "n": [1, 2]})
    back = jax.jit(lambda s: s)(snap)
    assert back._meta is None and back.meta == {"probed": True, "n": [1, 2]}
    back.meta["n"] = [3]
    assert jax.device_get(back).meta == {"probed": True, "n": [3]}
