"""--resume RUN_DIR: an interrupted run continues from its last checkpoint and ends with the same
histories and summary as an uninterrupted run; checkpoints restore the state bit for bit; a real
SIGINT stops a run cleanly (exit 130) and after kill -9 the flushed history still loads."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf
from gradflow import History, data, cli
from gradflow.experiments import side_by_side as experiment, verdict
from gradflow.checkpoint import Checkpoint
from gradflow.train import TrainState
from _backend import rerun_is_bit_identical

ROOT = Path(__file__).resolve().parents[1]
# The same depth, width, archs, batch and optimizer as the subprocess runs below, so that the
# compiled steps are shared within the test process.
TINY = ["--depth", "4", "--width", "4", "--steps", "6", "--log-every", "2", "--batch-size", "8",
        "--archs", "plain,bn", "--quiet"]
TIMING = {"train_s", "time_s"}  # the only numbers allowed to differ between runs


def _reference(cfg, ds):
    """Histories and summary of the uninterrupted run, from the experiment functions."""
    results = [experiment.train_arch(a, cfg, ds) for a in cfg.archs]
    return results, verdict.summarize(results, cfg, ds)


def _same_as_reference(run_dir: Path, reference):
    results, summary = reference
    for res in results:
        h, ref = History.load(run_dir / f"{res.arch}_history.npz"), res.history
        assert h.layers == ref.layers
        np.testing.assert_array_equal(h.steps, ref.steps)
        for k in ref.metrics + ref.scalars:
            np.testing.assert_array_equal(h[k], ref[k], err_msg=f"{res.arch} {k}")
    got = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads(json.dumps(summary))  # as written: JSON numbers
    assert {k: v for k, v in got["config"].items() if k != "devices"} == \
        {k: v for k, v in expected["config"].items() if k != "devices"}
    for a, b in zip(got["archs"], expected["archs"], strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING} == \
            {k: v for k, v in b.items() if k not in TIMING}


@pytest.fixture(scope="module")
def tiny_reference():
    cfg = experiment.Config(depth=4, width=4, steps=6, log_every=2, batch_size=8,
                            archs=("plain", "bn"))
    return _reference(cfg, data.synthetic(cfg.seed))


def _sigint_after(monkeypatch, k: int):
    """Makes the run's training send SIGINT to this process right after its k-th step (counted
    over all architectures), through gf.train's own `progress` hook: the CLI's handler runs
    before `stop()` is asked for that step, so the run stops exactly there."""
    done = [0]

    def train(*args, progress=None, **kwargs):
        def hook(step):
            if progress is not None:
                progress(step)
            done[0] += 1
            if done[0] == k:
                signal.raise_signal(signal.SIGINT)  # the handler has run when this returns

        return gf.train(*args, progress=hook, **kwargs)

    monkeypatch.setattr(experiment, "train", train)


def test_resume_after_a_stop_gives_the_uninterrupted_run(tiny_reference, tmp_path, monkeypatch,
                                                         capsys):
    """A real SIGINT after 8 steps: plain (6 steps) finished, bn stopped after 2 (the
    subprocess test below stops inside the first arch, with one not started)."""
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        _sigint_after(patch, 8)
        assert cli.main([*TINY, "--out", "run"]) == 130
    err = capsys.readouterr().err
    assert "SIGINT received" in err
    assert "--resume run" in err and "interrupted by SIGINT after" in err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "interrupted"
    assert os.listdir(tmp_path / "run" / "checkpoints") == ["bn"]
    assert list(record["finished"]) == ["plain"]
    assert list(History.load(tmp_path / "run" / "bn_history.npz").steps) == [0]
    # options repeated with the same values are no conflict
    assert cli.main(["--resume", "run", "--depth", "4", "--archs", "plain,bn"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    _same_as_reference(tmp_path / "run", tiny_reference)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "complete"
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(SystemExit) as exc:  # a complete run has nothing to resume
        cli.main(["--resume", "run"])
    assert exc.value.code == 2


class Small(nnx.Module):
    """Linear -> BatchNorm -> relu -> Linear: parameters, BN statistics (cheap to build)."""

    def __init__(self, width, rngs):
        self.a, self.norm = nnx.Linear(3, width, rngs=rngs), nnx.BatchNorm(width, rngs=rngs)
        self.b = nnx.Linear(width, 2, rngs=rngs)

    def __call__(self, x):
        return self.b(nnx.relu(self.norm(self.a(x))))


def test_checkpoint_round_trip_is_bit_exact_including_rng_keys(tmp_path):
    model = Small(4, nnx.Rngs(3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    keys = {"key": jax.random.key(7), "raw": jax.random.PRNGKey(8)}  # typed and raw keys
    tx = optax.adam(1e-3)
    opt = tx.init(params)
    opt = jax.tree.map(lambda a: a + 0.25 if a.dtype == np.float32 else a + 3, opt)
    records = [{"grad_norm": np.arange(4, dtype=np.float32) + i, "loss": np.float32(i)}
               for i in range(3)]
    state = TrainState(7, params, (rest, keys), opt, [0, 2, 4], records, ("a", "b", "c", "d"))
    ckpt = Checkpoint(tmp_path / "ck")
    ckpt.save(state)
    ckpt.close()
    fresh = TrainState(0, jax.tree.map(np.zeros_like, params),
                       (rest, {"key": jax.random.key(0), "raw": jax.random.PRNGKey(0)}),
                       tx.init(params), [], [], ())
    got = Checkpoint(tmp_path / "ck").restore(fresh)
    assert got.step == 7 and got.at == [0, 2, 4] and got.layers == ("a", "b", "c", "d")
    assert jax.tree.structure((got.params, got.rest, got.opt_state)) == \
        jax.tree.structure((params, (rest, keys), opt))
    for a, b in zip(jax.tree.leaves((params, rest, opt)),
                    jax.tree.leaves((got.params, got.rest[0], got.opt_state))):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(jax.random.key_data(got.rest[1]["key"]),
                                  jax.random.key_data(keys["key"]))
    np.testing.assert_array_equal(got.rest[1]["raw"], keys["raw"])
    for r, s in zip(records, got.records):
        assert r.keys() == s.keys() and all(np.array_equal(r[k], s[k]) for k in r)
    # a checkpoint of another model is refused in one line
    other = Small(5, nnx.Rngs(3))
    _, p2, r2 = nnx.split(other, nnx.Param, ...)
    with pytest.raises(ValueError, match="another model"):
        Checkpoint(tmp_path / "ck").restore(TrainState(0, p2, (r2, keys), tx.init(p2), [], []))


def test_train_resumed_from_its_own_hooks_matches_an_uninterrupted_train():
    """gf.train's hooks alone: stop at step 3, resume from the state on_record saw."""
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    batches = [(x + i, np.arange(8) % 2) for i in range(7)]

    def fresh():
        return Small(4, nnx.Rngs(1))

    tx = optax.sgd(0.1, momentum=0.9)
    whole = gf.train(fresh(), batches, steps=7, optimizer=tx, log_every=2)
    saved = []
    first = gf.train(fresh(), batches, steps=7, optimizer=tx, log_every=2,
                     on_record=lambda s, final: saved.append((s, final)),
                     stop=lambda: len(saved) >= 2)
    state, final = saved[-1]
    assert final and first.meta["stopped_at_step"] == state.step == 4  # asked after step 3
    resumed = gf.train(fresh(), batches, steps=7, optimizer=tx, log_every=2,
                       resume=lambda _: state)
    np.testing.assert_array_equal(resumed.steps, whole.steps)
    for k in whole.metrics + whole.scalars:
        np.testing.assert_array_equal(resumed[k], whole[k])


def test_train_with_curvature_resumed_from_a_checkpoint_matches_an_uninterrupted_train(
        tmp_path):
    """Curvature measurements warm-start from the last Ritz vector; the checkpoint keeps it, so
    the measurements after a resume are bit for bit those of the uninterrupted run."""
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    batches = [(x + i, np.arange(8) % 2) for i in range(7)]
    tx = optax.sgd(0.1, momentum=0.9)
    options = dict(steps=7, optimizer=tx, log_every=2, curvature_every=2)
    whole = gf.train(Small(4, nnx.Rngs(1)), batches, **options)
    saved = []
    gf.train(Small(4, nnx.Rngs(1)), batches, **options,
             on_record=lambda s, final: saved.append(s), stop=lambda: len(saved) >= 2)
    state = saved[-1]
    assert state.step == 4 and state.curvature_start is not None
    ckpt = Checkpoint(tmp_path / "ck")
    ckpt.save(state)
    ckpt.close()
    resumed = gf.train(Small(4, nnx.Rngs(1)), batches, **options,
                       resume=Checkpoint(tmp_path / "ck").restore)
    np.testing.assert_array_equal(resumed.steps, whole.steps)
    for k in ("hess_max_ev", "hess_trace", "layer_hess_trace", "grad_norm"):
        np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)
    # a run without curvature resumed from that checkpoint ignores the saved start, and a
    # checkpoint without one gives a run with curvature its random start
    got = Checkpoint(tmp_path / "ck").restore(state._replace(curvature_start=None))
    assert got.curvature_start is None
    plain = tmp_path / "plain"
    Checkpoint(plain).save(state._replace(curvature_start=None))
    assert Checkpoint(plain).restore(state).curvature_start is None


# -- real signals and kill -9 (subprocesses) --------------------------------------------------------

SIGNALLED = ["--depth", "4", "--width", "4", "--batch-size", "8", "--archs", "plain,bn",
             "--log-every", "20", "--quiet"]
STEPS = 200  # the signal comes right after the first flush (step 0), before step 1 is compiled


def _start(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "gradflow.run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, changes=1, timeout=180.0) -> bool:
    """Waits until `path` has been (re)written `changes` times; False if proc ended first."""
    seen, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != seen:
            seen, changes = stamp, changes - 1
            if changes == 0:
                return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def signalled(tmp_path_factory):
    """Two runs started together: one gets SIGINT once its first history flush is on disk, the
    other SIGKILL after its second flush (FLUSH_S later)."""
    cwd = tmp_path_factory.mktemp("signals")
    sigint = _start([*SIGNALLED, "--steps", str(STEPS), "--out", "int"], cwd)
    killed = _start([*SIGNALLED, "--steps", "1000000", "--out", "kill"], cwd)
    try:
        assert _wait_for(cwd / "int" / "plain_history.npz", sigint), sigint.communicate()
        sigint.send_signal(signal.SIGINT)
        assert _wait_for(cwd / "kill" / "plain_history.npz", killed, 2), killed.communicate()
        killed.send_signal(signal.SIGKILL)
        out, err = sigint.communicate(timeout=180)
        killed.communicate(timeout=60)
    finally:
        for proc in (sigint, killed):
            if proc.poll() is None:
                proc.kill()
    cfg = experiment.Config(depth=4, width=4, batch_size=8, archs=("plain", "bn"), steps=STEPS,
                            log_every=20)
    return cwd, sigint.returncode, out, err, killed.returncode, _reference(
        cfg, data.synthetic(cfg.seed))


def test_sigint_saves_everything_so_far_prints_where_and_exits_130(signalled):
    cwd, code, out, err, *_ = signalled
    assert code == 130, err
    assert "Traceback" not in err and "SIGINT received" in err
    assert "interrupted by SIGINT after" in err and "--resume int" in err
    run_dir = cwd / "int"
    for name in ("plain_history.npz", "plain_heatmap.png", "comparison_error_norm.png",
                 "curves.png", "profiles.png", "summary.json", "report.html", "run.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert not (run_dir / "bn_history.npz").exists()  # never started
    s = json.loads((run_dir / "summary.json").read_text())
    stop = s["run"]["interrupted"]
    assert stop["signal"] == "SIGINT" and stop["arch"] == "plain" and stop["not_started"] == ["bn"]
    h = History.load(run_dir / "plain_history.npz")
    assert h.steps[-1] < stop["step"] < STEPS and list(h.steps) == list(range(0, stop["step"], 20))
    assert s["archs"][0]["status"] == "interrupted" and "plain" in out
    assert (run_dir / "checkpoints" / "plain").is_dir()


@rerun_is_bit_identical  # the reference runs in this process, the interrupted run in another
def test_a_real_sigint_then_resume_gives_the_uninterrupted_run(signalled, monkeypatch):
    cwd, code, *_, reference = signalled
    assert code == 130
    monkeypatch.chdir(cwd)
    assert cli.main(["--resume", "int", "--quiet"]) == 0
    _same_as_reference(cwd / "int", reference)


@rerun_is_bit_identical
def test_after_kill_9_the_flushed_history_loads_and_holds_the_records_so_far(signalled):
    cwd, *_, code, reference = signalled
    assert code == -signal.SIGKILL
    h = History.load(cwd / "kill" / "plain_history.npz")
    assert h.meta["partial"] and h.meta["arch"] == "plain"
    assert len(h.steps) >= 2 and list(h.steps) == list(range(0, 20 * len(h.steps), 20))
    ref = reference[0][0].history  # the same records, as far as both got
    n = min(len(h.steps), len(ref.steps) - 1)  # the reference's last record is its last step
    for k in h.metrics + h.scalars:
        np.testing.assert_array_equal(h[k][:n], ref[k][:n], err_msg=k)
