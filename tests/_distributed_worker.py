"""Runs gradflow on several devices for tests/test_distributed.py, in a process of its own (the
device count is fixed when JAX starts). `run_case` is also the test's single-device reference.

    python tests/_distributed_worker.py sharded OUT                  # 4 simulated CPU devices
    python tests/_distributed_worker.py multihost OUT PID NPZ        # one of 2 processes (env:
                                                                     # JAX_COORDINATOR_ADDRESS ...)
"""
from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradflow as gf
from gradflow import distributed

BATCH, STEPS, LOG_EVERY = 8, 3, 2  # records at steps 0 and 2; step 1 runs the bare step
# (model, arch, depth, width): a residual+BN CNN, a plain and a residual+BN MLP. Few, because
# every compile (and every kernel shape's first initialization) costs 0.5-2 s of CPU.
CASES = [("cnn", "residual_bn", 4, 4), ("mlp", "plain", 4, 8), ("mlp", "residual_bn", 4, 8)]
MULTIHOST_PROBE = CASES[-1]  # probed by both processes of the multi-host run
# The multi-host CLI run (on a tiny .npz dataset the test writes).
CLI_ARGS = ["--model", "mlp", "--depth", "4", "--width", "8", "--archs", "residual_bn",
            "--steps", "3", "--log-every", "1", "--batch-size", "8", "--dataset", "npz",
            "--quiet"]


def case_name(case) -> str:
    return "_".join(map(str, case))


def case_data(case):
    """STEPS + 1 global batches (the first is the probe's) of seeded data."""
    model, *_ = case
    rng = np.random.default_rng(7)
    shape = (BATCH, 8, 8, 3) if model == "cnn" else (BATCH, 12)
    return [(rng.normal(size=shape).astype(np.float32), rng.integers(0, 10, BATCH))
            for _ in range(STEPS + 1)]


def build(case):
    """The zoo's model for `case`, its variables drawn with numpy (kernels N(0, 1/fan_in)):
    initializing with jax.random costs a compilation per kernel shape, seconds per process."""
    model, arch, depth, width = case
    graphdef, state = nnx.split(nnx.eval_shape(lambda: (
        gf.models.cnn(arch, depth, width=width, rngs=nnx.Rngs(0)) if model == "cnn" else
        gf.models.mlp(arch, depth, width=width, in_features=12, num_classes=10,
                      rngs=nnx.Rngs(0)))))
    rng = np.random.default_rng(0)
    for path, v in nnx.to_flat_state(state):
        shape, name = v.get_value().shape, path[-1]
        if name == "kernel":  # (in, out), (h, w, in, out), with a leading axis when scanned
            fan_in = np.prod(shape[-2:-1] if len(shape) in (2, 3) else shape[-4:-1])
            value = rng.normal(size=shape) / np.sqrt(fan_in)
        elif name in ("scale", "var"):
            value = np.ones(shape)
        else:  # biases, running means
            value = 0.1 * rng.normal(size=shape) if name == "bias" else np.zeros(shape)
        v.set_value(jnp.asarray(value, jnp.float32))
    return nnx.merge(graphdef, state)


def run_case(case, share=lambda batch: batch, **where) -> dict:
    """gf.probe on the first batch and gf.train on the others, on `where` (devices= / mesh=);
    `share` picks this process's rows of a global batch. Every metric, the trained parameters
    and the BatchNorm running statistics, as flat numpy arrays."""
    batches = case_data(case)
    model = build(case)
    snap = gf.probe(model, share(batches[0]), **where)
    hist = gf.train(model, [share(b) for b in batches[1:]], steps=STEPS,
                    optimizer=optax.sgd(0.1, momentum=0.9), log_every=LOG_EVERY, **where)
    out = {f"probe/{k}": np.asarray(snap[k]) for k in (*snap.metrics, "loss", "accuracy")}
    out |= {f"train/{k}": np.asarray(hist[k]) for k in (*hist.metrics, *hist.scalars)}
    for kind, state in (("params", nnx.state(model, nnx.Param)),
                        ("stats", nnx.state(model, nnx.BatchStat))):
        for path, v in nnx.to_flat_state(state):
            out[f"{kind}/" + "/".join(map(str, path))] = np.asarray(v.get_value())
    return out


def _usage_error(argv) -> str:
    """stderr of gradflow.cli.parse(argv), which must exit with code 2."""
    from gradflow import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli.parse(argv)
        except SystemExit as e:
            assert e.code == 2, e.code
            return err.getvalue().strip()
    raise AssertionError(f"{argv} was accepted")


def _value_error(fn) -> str:
    try:
        fn()
    except ValueError as e:
        return str(e)
    raise AssertionError("no ValueError")


def sharded(out: Path):
    """4 simulated devices: every case on all of them, the placement, and the error paths."""
    import jax

    from gradflow import cli

    assert jax.device_count() == 4, jax.devices()
    for case in CASES:
        np.savez(out / f"{case_name(case)}.npz", **run_case(case, devices=4))
    x, y = case_data(CASES[0])[0]
    mesh = distributed.resolve()
    xs, _ = distributed.place_batch(x, y, mesh)
    model = build(CASES[0])
    checks = {
        "default_mesh_size": mesh.size,
        "rows_per_device": sorted({s.data.shape[0] for s in xs.addressable_shards}),
        "probe_6_rows": _value_error(lambda: gf.probe(model, (x[:6], y[:6]))),
        "train_6_rows": _value_error(lambda: gf.train(
            model, [(x[:6], y[:6])], steps=1, optimizer=optax.sgd(0.1), devices=4)),
        "devices_5": _value_error(lambda: gf.probe(model, (x, y), devices=5)),
        "devices_0": _value_error(lambda: gf.probe(model, (x, y), devices=0)),
        "mesh_without_data": _value_error(lambda: gf.probe(model, (x, y), mesh=jax.make_mesh(
            (4,), ("batch",)))),
        "cli_devices_5": _usage_error(["--devices", "5"]),
        "cli_batch_6": _usage_error(["--batch-size", "6"]),
        "cli_sweep_probe_batch": _usage_error(["--depth", "8,16", "--steps", "0",
                                               "--batch-size", "12", "--devices", "3"]),
        "cli_batch_6_on_2": cli.parse(["--batch-size", "6", "--devices", "2"]).devices,
    }
    (out / "checks.json").write_text(json.dumps(checks))


def multihost(out: Path, pid: int, npz: str):
    """One of two processes with 2 CPU devices each, joined from the JAX_* variables: a probe
    of this process's half of a batch, then the CLI (which trains on half of every batch)."""
    from gradflow import cli

    assert distributed.initialize()
    import jax

    assert (jax.process_count(), jax.device_count(), jax.process_index()) == (2, 4, pid)
    mesh = distributed.data_mesh()
    batch = distributed.process_share(case_data(MULTIHOST_PROBE)[0], mesh)
    assert len(batch[0]) == BATCH // 2
    snap = gf.probe(build(MULTIHOST_PROBE), batch, mesh=mesh)
    np.savez(out / f"probe_process{pid}.npz",
             **{f"probe/{k}": np.asarray(snap[k]) for k in (*snap.metrics, "loss", "accuracy")})
    code = cli.main([*CLI_ARGS, "--data-dir", npz, "--out", str(out / f"run_process{pid}")])
    (out / f"done_process{pid}").write_text(str(code))


if __name__ == "__main__":
    faulthandler.enable()  # a crash in native code: say where
    faulthandler.dump_traceback_later(240, exit=True)  # a hung collective: say where, and end
    mode, where = sys.argv[1], Path(sys.argv[2])
    if mode == "sharded":
        sharded(where)
    else:
        multihost(where, int(sys.argv[3]), sys.argv[4])
