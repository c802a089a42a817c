"""gf.value_and_grad in a user's own loop on FSDP-sharded parameters (issue #14): on a 1-D mesh
of 4 simulated CPU devices, every parameter of a small MLP (Linear -> LayerNorm -> relu ->
Linear -> relu -> Linear) sharded along one axis with `nnx.with_partitioning` and the batch
sharded along the same axis, two `nnx.jit` steps of `gf.value_and_grad` + `nnx.Optimizer` (adam)
+ `gf.update_ratio` give the loss, every snapshot metric (the global norms and activation
statistics) and the gradients of the same loop on one device from the same initial values, to
float tolerance; the parameters stay sharded. Both sharding modes of JAX: Auto axes (GSPMD
propagation) and Explicit axes (sharding in types, the layers all-gathering their parameters).

The sharded runs happen in one worker process (tests/_sharded_worker.py; the device count is
fixed when JAX starts), while this process computes the one-device reference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _sharded_worker import (
    AXIS,
    BATCH,
    DEVICES,
    SHAPES,
    SHARDED_MODES,
    SPECS,
    STEPS,
    run,
)

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_sharded_worker.py")
TIMEOUT = 300
METRICS = ("grad_norm", "error_norm", "act_mean", "act_std", "dead_frac", "weight_norm",
           "update_ratio")


def _env() -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append("--xla_backend_optimization_level=0")  # faster compiles
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={DEVICES}"])}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """Starts the 4-device worker; kills it at the end if it still runs."""
    out = tmp_path_factory.mktemp("sharded_user_loop")
    with open(out / "worker.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(WORKER), str(out)], env=_env(), cwd=out,
                                stdout=log, stderr=subprocess.STDOUT)
        yield proc, out
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def reference(worker):
    """The same loop unsharded on one device, computed here while the worker runs."""
    return run("single")


@pytest.fixture(scope="module")
def sharded(worker, reference):
    """{mode: (arrays, info)} of the sharded runs."""
    proc, out = worker
    try:
        code = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = "timeout"
    assert code == 0, f"sharded worker failed ({code}):\n{(out / 'worker.log').read_text()[-4000:]}"
    checks = json.loads((out / "checks.json").read_text())
    return {mode: (dict(np.load(out / f"{mode}.npz")), checks[mode]) for mode in SHARDED_MODES}


def _key(path) -> str:
    return "/".join(path)


@pytest.mark.parametrize("mode", SHARDED_MODES)
def test_parameters_and_batch_are_sharded_fsdp_style(mode, sharded, reference):
    _, info = sharded[mode]
    assert len(info["placement"]) == STEPS + 1  # after creation and after every step
    for when, placement in enumerate(info["placement"]):
        assert sorted(placement) == sorted(map(_key, SPECS)), when
        for path, spec in SPECS.items():
            p = placement[_key(path)]
            where = f"{mode}, {_key(path)}, placement {when}"
            want_spec = list(spec) + [None] * (len(SHAPES[path]) - len(spec))
            assert p["type"] == "NamedSharding" and p["mesh"] == {AXIS: DEVICES}, where
            assert p["spec"] == want_spec, where
            assert p["devices"] == DEVICES and not p["replicated"], where
            want_shard = [n // DEVICES if s == AXIS else n for n, s in zip(SHAPES[path], want_spec)]
            assert p["shard_shape"] == want_shard, where
    assert info["batch_rows_per_device"] == [BATCH // DEVICES]  # split, not copied
    # the reference really is unsharded, on one device
    for placement in reference[1]["placement"]:
        assert all(p["devices"] == 1 for p in placement.values())


@pytest.mark.parametrize("mode", SHARDED_MODES)
def test_snapshot_and_gradients_equal_the_unsharded_run(mode, sharded, reference):
    got, info = sharded[mode]
    ref, ref_info = reference
    assert info["layers"] == ref_info["layers"] == ["l1", "l2", "l3"]
    assert sorted(got) == sorted(ref)
    for i in range(STEPS):
        names = {k[len(f"step{i}/snap/"):] for k in ref if k.startswith(f"step{i}/snap/")}
        # the rows' metrics, the loss, and the LayerNorm's parameters (not rows)
        assert names == {*METRICS, "loss", "grad_norm:ln/scale", "grad_norm:ln/bias"}
    for key in ref:
        if key.startswith("init/"):  # the same initial values
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{mode}: {key}")
    # the comparison means something: finite, and a layer with dead units
    assert all(np.isfinite(v).all() for v in ref.values())
    assert ref["step0/snap/dead_frac"][1] > 0
    # Float tolerance: rtol 1e-5, and an absolute floor relative to the array's largest value
    # for entries near zero (gradient entries summed over a sharded batch).
    for key, want in ref.items():
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=f"{mode}: {key}")
    # the norms are global: those of the whole (gathered) gradient and kernel, not of a shard
    norm = lambda a: np.linalg.norm(a.astype(np.float64))
    for row, layer in enumerate(info["layers"]):
        for i in range(STEPS):
            np.testing.assert_allclose(got[f"step{i}/snap/grad_norm"][row],
                                       norm(got[f"step{i}/grads/{layer}/kernel"]), rtol=1e-5)
        np.testing.assert_allclose(got["step0/snap/weight_norm"][row],
                                   norm(got[f"init/{layer}/kernel"]), rtol=1e-5)
    np.testing.assert_allclose(got["step0/loss"], got["step0/snap/loss"])
