"""Data parallelism (gradflow.distributed): on 4 simulated CPU devices and on 2 processes on
localhost (2 devices each, gloo collectives), gf.probe and gf.train give every statistic, the
trained parameters and the BatchNorm running statistics of a single device on the same global
batch; bad device counts and batches that do not divide are clear errors; in a multi-process
CLI run only process 0 writes. The workers (tests/_distributed_worker.py) run in processes of their own:
the 4-device one while this one computes the single-device references, then the two
processes of the multi-host run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from _distributed_worker import CASES, MULTIHOST_PROBE, case_name, run_case
from gradflow import History, data
from gradflow.experiments import side_by_side as experiment

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_distributed_worker.py")
TIMEOUT = 300


def _env(devices: int, **extra) -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append("--xla_backend_optimization_level=0")  # ~30% faster compiles
    return {**os.environ, "JAX_PLATFORMS": "cpu", **extra,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _tiny_dataset(path: Path) -> Path:
    """80 training and 20 held-out 2x2x3 'images' (12 features, as the MLP cases)."""
    rng = np.random.default_rng(3)
    np.savez(path, x=rng.normal(size=(100, 2, 2, 3)).astype(np.float32),
             y=rng.integers(0, 10, 100))
    return path


class _Workers:
    """Worker processes of this module, each logging to OUT/<name>.log."""

    def __init__(self, out: Path):
        self.out, self.procs = out, {}

    def start(self, name: str, args, env):
        log = open(self.out / f"{name}.log", "w")
        self.procs[name] = (subprocess.Popen([sys.executable, str(WORKER), *map(str, args)],
                                             env=env, cwd=self.out, stdout=log,
                                             stderr=subprocess.STDOUT), log)

    def wait(self, name: str, timeout: float = TIMEOUT) -> tuple:
        """(exit code or "timeout", log text) of worker `name`, killed if still running."""
        proc, log = self.procs[name]
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "timeout"
        log.flush()
        return code, (self.out / f"{name}.log").read_text()

    def stop(self):
        for proc, log in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.close()


def _ok(name: str, result: tuple):
    code, text = result
    assert code == 0, f"{name} worker failed ({code}):\n{text[-3000:]}"


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Starts the 4-device worker; stops whatever is still running at the end."""
    w = _Workers(tmp_path_factory.mktemp("distributed"))
    (w.out / "sharded").mkdir()
    w.start("sharded", ["sharded", w.out / "sharded"], _env(4))
    yield w
    w.stop()


@pytest.fixture(scope="module")
def references(workers):
    """Each case on one device, computed here while the 4-device worker runs. The workers run
    on CPU; with the suite on an accelerator the references do too, in a one-device CPU process
    of their own (the accelerator builds scanned stacks and rounds differently)."""
    if jax.default_backend() == "cpu":
        return {case_name(c): run_case(c, devices=1) for c in CASES}
    out = workers.out / "single"
    out.mkdir()
    code = ("import sys; import numpy as np; sys.path.insert(0, sys.argv[2]); "
            "from _distributed_worker import CASES, case_name, run_case; "
            "[np.savez(f'{sys.argv[1]}/{case_name(c)}.npz', **run_case(c, devices=1)) "
            "for c in CASES]")
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(WORKER.parent)],
                          env=_env(1), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {case_name(c): dict(np.load(out / f"{case_name(c)}.npz")) for c in CASES}


@pytest.fixture(scope="module")
def sharded(workers, references) -> Path:
    _ok("sharded", workers.wait("sharded"))
    return workers.out / "sharded"


# Gloo gives the processes 30 s to meet whenever a new group of devices first communicates. On
# an overloaded CPU one process can fall further behind than that while it compiles, and the run
# fails with this message; that failure, and only that one, is retried once.
GLOO_DEADLINE = "Gloo context initialization failed"


@pytest.fixture(scope="module")
def multihost(workers, sharded):
    """The two-process run, started once the 4-device worker and the references are done (fewer
    processes competing for the CPU): (output dir, {pid: (exit code, log)})."""
    npz = _tiny_dataset(workers.out / "tiny.npz")
    for attempt in (1, 2):
        out = workers.out / f"multihost{attempt}"
        out.mkdir()
        port = _free_port()
        for pid in (0, 1):
            workers.start(f"process{pid}_{attempt}", ["multihost", out, pid, npz],
                          _env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid)))
        results = {0: workers.wait(f"process0_{attempt}")}
        # If process 0 gave up on a collective, process 1 waits in it: give it 2 minutes.
        results[1] = workers.wait(f"process1_{attempt}", timeout=120)
        if not any(GLOO_DEADLINE in text for _, text in results.values()):
            break
    return out, results


def _assert_same(got: dict, ref: dict, where: str):
    """Float tolerance: rtol 1e-5, and an absolute floor relative to the array's largest value
    for entries near zero (act_mean of logits; a BatchNorm bias, whose gradient is a sum over
    the batch with cancellation, after a few updates; its `grad_norm:<path>` scalar, relative to
    the largest layer gradient norm)."""
    assert sorted(got) == sorted(ref), where
    for key, want in ref.items():
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        if ":" in key:  # a normalization parameter's grad norm: on the scale of the layers'
            scale = max(scale, float(np.max(ref[key.split(":")[0]])))
        floor = 1e-5 if key.split("/")[0] in ("params", "stats") else 1e-6
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=floor * scale,
                                   err_msg=f"{where}: {key}")


@pytest.mark.parametrize("case", CASES, ids=case_name)
def test_four_devices_equal_one_device_on_the_global_batch(case, sharded, references):
    out = sharded
    got = dict(np.load(out / f"{case_name(case)}.npz"))
    ref = references[case_name(case)]
    assert any(k.startswith("stats/") for k in ref) == ("bn" in case[1])
    assert len(ref["train/loss"]) == 2 and ref["train/grad_norm"].shape[1] == case[2]
    _assert_same(got, ref, f"4 devices, {case_name(case)}")


def test_batches_are_split_and_bad_counts_are_clear_errors(sharded):
    checks = json.loads((sharded / "checks.json").read_text())
    assert checks["default_mesh_size"] == 4  # every visible device by default
    assert checks["rows_per_device"] == [2]  # a batch of 8 is split, not copied
    assert "6 examples does not divide across 4 devices" in checks["probe_6_rows"]
    assert "6 examples does not divide across 4 devices" in checks["train_6_rows"]
    assert "between 1 and the 4 available" in checks["devices_5"]
    assert "between 1 and the 4 available" in checks["devices_0"]
    assert "'data' axis" in checks["mesh_without_data"]
    assert "--devices: 5 is more than the 4 visible devices" in checks["cli_devices_5"]
    assert "--batch-size of 6 does not divide across 4 devices" in checks["cli_batch_6"]
    assert "probe batch of 8 does not divide across 3 devices" in checks["cli_sweep_probe_batch"]
    for key in ("cli_devices_5", "cli_batch_6", "cli_sweep_probe_batch"):
        assert len(checks[key].splitlines()) == 1
    assert checks["cli_batch_6_on_2"] == 2


@pytest.mark.slow
def test_two_processes_probe_as_one_process(multihost, references):
    out, results = multihost
    for pid in (0, 1):
        _ok(f"process {pid}", results[pid])
    ref = {k: v for k, v in references[case_name(MULTIHOST_PROBE)].items()
           if k.startswith("probe/")}
    for pid in (0, 1):
        _assert_same(dict(np.load(out / f"probe_process{pid}.npz")), ref, f"process {pid}")


@pytest.mark.slow
def test_two_process_cli_run_equals_one_process_and_only_process_0_writes(multihost, workers):
    out, results = multihost
    for pid in (0, 1):
        _ok(f"process {pid}", results[pid])
    assert (out / "done_process0").read_text() == (out / "done_process1").read_text() == "0"
    assert not (out / "run_process1").exists()
    run = out / "run_process0"
    assert {"residual_bn_history.npz", "summary.json", "report.html"} <= {
        p.name for p in run.iterdir()}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"]["processes"] == 2 and summary["run"]["devices"] == 4
    got = History.load(run / "residual_bn_history.npz")
    cfg = experiment.Config(model="mlp", depth=4, width=8, archs=("residual_bn",), steps=3,
                            log_every=1, batch_size=8, dataset="npz",
                            data_dir=str(workers.out / "tiny.npz"), devices=1)  # as CLI_ARGS
    ds = data.load("npz", cfg.data_dir, seed=cfg.seed)
    ref = experiment.train_arch("residual_bn", cfg, ds)
    for m in (*ref.history.metrics, *ref.history.scalars):
        np.testing.assert_allclose(got[m], ref.history[m], rtol=1e-5, atol=1e-7, err_msg=m)
    arch = summary["archs"][0]
    assert arch["held_out_loss"] == pytest.approx(ref.held_out_loss, rel=1e-5)
    assert arch["held_out_accuracy"] == ref.held_out_accuracy


def test_single_device_path_and_argument_checks_in_this_process(monkeypatch, capsys):
    """One device in one process: no mesh (the unchanged single-device path); bad arguments are
    one-line errors; without JAX_* variables nothing starts a multi-process run."""
    import jax

    from gradflow import distributed, cli

    assert jax.device_count() == 1
    assert distributed.resolve() is None and distributed.resolve(1) is None
    assert distributed.resolve([jax.devices()[0]]).shape == {"data": 1}  # an explicit list
    for bad, needle in ((2, "between 1 and the 1 available"), (True, "a count >= 1"),
                        ([], "a count >= 1"), ("cpu", "a count >= 1")):
        with pytest.raises(ValueError, match=needle):
            distributed.resolve(bad)
    with pytest.raises(ValueError, match="not both"):
        distributed.resolve(1, distributed.data_mesh())
    for name in distributed.ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False and not jax.distributed.is_initialized()
    with pytest.raises(ValueError, match="needs num_processes, process_id too"):
        distributed.initialize("localhost:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize("localhost:1234", process_id=0)
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    with pytest.raises(SystemExit) as e:
        cli.parse(["--coordinator", "localhost:1234", "--process-id", "0"])
    assert e.value.code == 2
    assert "argument --coordinator: multi-process run needs num_processes too" in (
        capsys.readouterr().err)
    assert cli.parse([]).devices == 1
