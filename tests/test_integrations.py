"""gf.integrations: TensorBoard event files and W&B offline runs hold every layer's values, a
growing History is written without duplicates, gf.train(loggers=...) writes as it trains, the
CLI's --tensorboard / --wandb and its live report.html, and a missing extra is one line."""
from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf
from gradflow.integrations._base import LOG10_EDGES, layer_tags
from gradflow.quantities.histograms import HIST_BINS

SIZES = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance=SIZES)
    acc.Reload()
    return acc


def _trained(steps=6, log_every=2, loggers=()):
    model = gf.models.mlp("plain", 4, width=8, in_features=6, num_classes=3, rngs=nnx.Rngs(0))
    x, y = jnp.linspace(-1, 1, 16 * 6).reshape(16, 6), jnp.arange(16) % 3
    return gf.train(model, [(x, y)] * steps, steps=steps, optimizer=optax.sgd(0.1),
                    log_every=log_every, loggers=loggers)


@pytest.fixture(scope="module")
def history():
    """A trained History with a gradient histogram metric added (-1 counts at step 2)."""
    h = _trained()
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, (len(h), len(h.layers), HIST_BINS)).astype(np.int32)
    counts[1] = -1  # not measured at this record
    return gf.History(h.layers, {**{m: h[m] for m in h.metrics}, "grad_hist": counts},
                      {s: h[s] for s in h.scalars}, h.meta, steps=h.steps)


def _check_scalars(acc, h, prefix=""):
    tags = layer_tags(h.layers)
    per_layer = [m for m in h.metrics if h[m].ndim == 2]
    assert {"grad_norm", "error_norm", "act_std", "weight_norm", "update_ratio"} <= set(per_layer)
    for m in per_layer:
        for j, t in enumerate(tags):
            events = acc.Scalars(f"{prefix}{m}/{t}")
            want = h[m][:, j]
            keep = ~np.isnan(want)
            assert [e.step for e in events] == h.steps[keep].tolist(), (m, t)
            np.testing.assert_allclose([e.value for e in events], want[keep], rtol=1e-6)
    for s in ("loss", "accuracy"):
        np.testing.assert_allclose([e.value for e in acc.Scalars(prefix + s)], h[s], rtol=1e-6)


def test_tensorboard_writes_every_layer_histograms_and_heatmaps(history, tmp_path):
    h = history
    with gf.integrations.TensorBoardWriter(tmp_path) as tb:
        assert tb.write(h) == len(h)
    acc = _events(tmp_path)
    _check_scalars(acc, h)
    tags = layer_tags(h.layers)
    for j, t in enumerate(tags):
        events = acc.Histograms(f"grad_hist/{t}")
        assert [e.step for e in events] == [s for i, s in enumerate(h.steps) if i != 1]
        for e, r in zip(events, [0, 2, 3]):
            v = e.histogram_value
            np.testing.assert_array_equal(v.bucket, h["grad_hist"][r, j])
            np.testing.assert_array_equal(v.bucket_limit, LOG10_EDGES[1:])
            assert v.num == h["grad_hist"][r, j].sum()
    images = acc.Tags()["images"]
    assert sorted(images) == ["heatmap/error_norm", "heatmap/grad_norm"]
    img = acc.Images("heatmap/grad_norm")
    assert len(img) == 1 and img[0].step == h.steps[-1] and img[0].width > 100


def test_a_growing_history_is_written_once_per_record(history, tmp_path):
    tb = gf.integrations.TensorBoardWriter(tmp_path, heatmaps=())
    assert tb.write(history.truncated(2)) == 2
    assert tb.write(history.truncated(2)) == 0  # nothing new
    assert tb.write(history) == len(history) - 2
    tb.close()
    events = _events(tmp_path).Scalars("grad_norm/" + layer_tags(history.layers)[1])
    assert [e.step for e in events] == history.steps.tolist()
    assert not _events(tmp_path).Tags()["images"]


def test_snapshots_from_a_user_loop(tmp_path):
    h = _trained(steps=3, log_every=1)
    with gf.integrations.TensorBoardWriter(tmp_path) as tb:
        for i in range(len(h)):
            tb.write(h.snapshot(i))  # its meta carries the step
        with pytest.raises(ValueError, match="steps must increase"):
            tb.write(h.snapshot(0), step=1)
        tb.write(h.snapshot(0), step=10)
        with pytest.raises(TypeError, match="gf.History or gf.Snapshot"):
            tb.write({"grad_norm": 1.0})
    acc = _events(tmp_path)
    assert [e.step for e in acc.Scalars("loss")] == [0, 1, 2, 10]
    assert acc.Images("heatmap/grad_norm")[0].step == 10


def test_train_writes_to_loggers_as_it_trains(tmp_path, monkeypatch):
    from gradflow import history as history_module

    seen = []

    class Recorder:
        def write(self, h):
            seen.append(h.steps.tolist())

    now = iter(range(0, 1000, 5))  # every record is a flush (5 s apart > FLUSH_S)
    monkeypatch.setattr(history_module, "_clock", lambda: next(now))
    tb = gf.integrations.TensorBoardWriter(tmp_path)
    h = _trained(steps=5, log_every=2, loggers=(Recorder(), tb))
    tb.close()
    assert seen == [[0], [0, 2], [0, 2, 4], [0, 2, 4]]  # each recorded step, then the end
    _check_scalars(_events(tmp_path), h)


def test_train_loggers_wait_for_the_flush_interval(monkeypatch):
    from gradflow import history as history_module

    seen = []

    class Recorder:
        def write(self, h):
            seen.append(len(h))

    monkeypatch.setattr(history_module, "_clock", lambda: 0.0)  # time stands still
    _trained(steps=5, log_every=1, loggers=(Recorder(),))
    assert seen == [1, 5]  # the first record, then the end


def test_missing_tensorboardx_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError) as err:
        gf.integrations.TensorBoardWriter(tmp_path)
    assert str(err.value) == ("gf.integrations.TensorBoardWriter needs tensorboardX: pip install "
                              "'gradflow-diagnostics[tensorboard]'")


def test_importing_gradflow_imports_no_tracker():
    import subprocess

    code = ("import sys, gradflow as gf; gf.integrations.TensorBoardWriter; "
            "print(sorted(m for m in ('tensorboardX', 'tensorboard', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _wandb_records(path):
    """The records of a `.wandb` file: W&B's own record protobufs in a LevelDB-style log (a
    7-byte file header, then 32 KiB blocks of chunks, each with a 7-byte header: checksum,
    length, type FULL/FIRST/MIDDLE/LAST); a chunk the service has not finished writing ends
    the list."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, part, records = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if pos + 7 + length > len(data):  # the service is still writing this chunk
            break
        part, pos = part + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            records.append(pb.Record())
            records[-1].ParseFromString(part)
            part = b""
    return records


def _wandb_history(run_dir):
    """The `run.log` rows of an offline run, once W&B's service has written its last record
    (it writes the file in the background, after `finish` returns)."""
    import json
    import time

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    for _ in range(600):
        records = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def test_wandb_offline_run_holds_every_layer(history, tmp_path, monkeypatch):
    for var, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"),
                       ("WANDB_CONFIG_DIR", tmp_path / "config"),
                       ("WANDB_CACHE_DIR", tmp_path / "cache"),
                       ("WANDB_DATA_DIR", tmp_path / "data")):
        monkeypatch.setenv(var, str(value))
    h = history
    with gf.integrations.WandbLogger(project="gradflow-test", dir=tmp_path) as wb:
        wb.write(h.truncated(2))
        wb.write(h)
    rows = [r for r in _wandb_history(tmp_path) if any(k.startswith("grad_norm/") for k in r)]
    assert rows and all(isinstance(v, (int, float, str, list)) for r in rows for v in r.values())
    assert [r["_step"] for r in rows] == h.steps.tolist()  # no record twice
    tags = layer_tags(h.layers)
    for i, row in enumerate(rows):
        for m in (m for m in h.metrics if h[m].ndim == 2):
            for j, t in enumerate(tags):
                if not np.isnan(h[m][i, j]):
                    assert row[f"{m}/{t}"] == pytest.approx(h[m][i, j], rel=1e-6), (m, t)
        assert row["loss"] == pytest.approx(h["loss"][i], rel=1e-6)
        for j, t in enumerate(tags):
            key = f"grad_hist/{t}"  # W&B stores a histogram as key/values, key/bins
            if i == 1:
                assert key + "/values" not in row  # -1 counts: not measured
            else:
                assert row[key + "/_type"] == "histogram"
                assert row[key + "/values"] == h["grad_hist"][i, j].tolist()
                np.testing.assert_allclose(row[key + "/bins"], LOG10_EDGES)
    for m in ("grad_norm", "error_norm"):
        images = [r for r in rows if f"heatmap/{m}/_type" in r]
        assert len(images) == 1 and images[0][f"heatmap/{m}/_type"] == "image-file"
        assert images[0]["_step"] == h.steps[-1]


def test_missing_wandb_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError) as err:
        gf.integrations.WandbLogger()
    assert str(err.value) == ("gf.integrations.WandbLogger needs wandb: pip install "
                              "'gradflow-diagnostics[wandb]'")


# -- python -m gradflow.run --tensorboard / --wandb, and the running report -----------------

def test_cli_writes_tensorboard_wandb_and_a_live_report(tmp_path, monkeypatch):
    """One tiny run in process: TensorBoard and W&B get the arch's History, report.html says
    "running" with a reload while training (refreshes made due at once) and neither at the end."""
    from gradflow import cli
    from gradflow.cli import live

    for var, value in (("WANDB_SILENT", "true"), ("WANDB_CONFIG_DIR", tmp_path / "config"),
                       ("WANDB_CACHE_DIR", tmp_path / "cache"), ("WANDB_DATA_DIR", tmp_path)):
        monkeypatch.setenv(var, str(value))
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)  # so --wandb runs offline
    pages = []
    refresh = live.Live.refresh

    def capture(self, *args, **kwargs):
        refresh(self, *args, **kwargs)
        pages.append((tmp_path / "out" / "report.html").read_text())

    monkeypatch.setattr(live, "LIVE_S", 0.0)
    monkeypatch.setattr(live.Live, "refresh", capture)
    code = cli.main(["--depth", "4", "--width", "4", "--steps", "3", "--log-every", "1",
                     "--archs", "plain", "--out", str(tmp_path / "out"), "--tensorboard",
                     str(tmp_path / "tb"), "--wandb", "--quiet"])
    assert code == 0
    assert pages and "running — plain (1 of 1 architectures) at step 1 of 3" in pages[0]
    assert '<meta http-equiv="refresh" content="10">' in pages[0]
    final = (tmp_path / "out" / "report.html").read_text()
    assert "running —" not in final and "http-equiv" not in final
    h = gf.History.load(tmp_path / "out" / "plain_history.npz")
    acc = _events(tmp_path / "tb" / "plain")
    _check_scalars(acc, h)
    assert sorted(acc.Tags()["images"]) == ["heatmap/error_norm", "heatmap/grad_norm"]
    rows = [r for r in _wandb_history(tmp_path / "out") if "loss" in r]
    assert [r["_step"] for r in rows] == h.steps.tolist()


def test_cli_refuses_an_unwritable_tensorboard_dir_or_a_missing_extra(tmp_path, monkeypatch,
                                                                      capsys):
    from gradflow.cli.args import parse

    (tmp_path / "file").write_text("")
    for argv, says in (
            (["--tensorboard", str(tmp_path / "file" / "tb")], "cannot be written"),
            (["--tensorboard", str(tmp_path / "file")], "is not a directory"),
            (["--tensorboard", str(tmp_path / "tb"), "--depth", "4,8"], "not a depth sweep")):
        with pytest.raises(SystemExit) as exit_:
            parse([*argv, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and says in err and err.count("\n") == 1, err
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(SystemExit) as exit_:
        parse(["--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "python -m gradflow.run: error: argument --tensorboard: gf.integrations."
        "TensorBoardWriter needs tensorboardX: pip install 'gradflow-diagnostics[tensorboard]' "
        "(see --help)\n")
    assert not (tmp_path / "tb").exists() and not (tmp_path / "out").exists()


def test_a_failing_refresh_never_stops_training(history, monkeypatch, capsys):
    from types import SimpleNamespace

    from gradflow.cli import live

    watcher = live.Live(SimpleNamespace(tensorboard=None, wandb=None, out="unused"), None, None,
                        [], {})
    monkeypatch.setattr(live, "LIVE_S", 0.0)
    monkeypatch.setattr(live.Live, "refresh", lambda *args: 1 / 0)
    state = SimpleNamespace(params={"w": np.ones(3)}, step=1)
    watcher.flushed("plain", history, state)
    watcher.flushed("plain", history, state)  # not tried again
    err = capsys.readouterr().err
    assert err == ("gradflow: report.html is not refreshed while training (ZeroDivisionError: "
                   "division by zero)\n")
