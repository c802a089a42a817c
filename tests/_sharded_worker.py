"""`gf.value_and_grad` in a user's loop on FSDP-sharded parameters, for
tests/test_sharded_user_loop.py. Run in a process of its own with 4 simulated CPU devices (the
device count is fixed when JAX starts):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/_sharded_worker.py OUT

It writes OUT/<mode>.npz (`run(mode)`) for the two sharded modes and OUT/checks.json (where the
parameters and the batch live). `run("single")` is the test's unsharded reference, computed in
the test's own one-device process from the same initial values.

The modes, each on a 1-D mesh of the 4 devices with the axis 'fsdp':
  auto:     `jax.sharding.AxisType.Auto` (GSPMD): every parameter is annotated with
            `nnx.with_partitioning(init, PartitionSpec, mesh=mesh)`, which Flax's eager
            sharding (`nnx.use_eager_sharding`, on by default) applies when the Variable is
            created; XLA inserts the all-gathers of the weights.
  explicit: `AxisType.Explicit` under `jax.set_mesh(mesh)` (sharding in types, the default of
            `jax.make_mesh`): the same annotations; the layers gather their parameters
            themselves (`jax.sharding.reshard(p, P())` in their `promote_dtype` hook), as
            explicit-mode FSDP requires.
The batch is sharded along the same axis (FSDP is data parallel over the axis that shards
the parameters): each device holds BATCH // 4 rows of x and y.
"""
from __future__ import annotations

import contextlib
import faulthandler
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.nnx.nn import dtypes
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import gradflow as gf

DEVICES, AXIS = 4, "fsdp"
BATCH, IN, WIDTH, CLASSES, STEPS = 16, 12, 16, 4, 2
DEAD = 4  # l2's first DEAD units get a bias of -10: dead after the relu (dead_frac > 0)
SHARDED_MODES = ("auto", "explicit")
# Each parameter's PartitionSpec: kernels sharded along one axis (l2's along its output axis),
# biases and the LayerNorm's scale and bias along their only axis.
SPECS = {
    ("l1", "kernel"): P(AXIS, None), ("l1", "bias"): P(AXIS),
    ("ln", "scale"): P(AXIS), ("ln", "bias"): P(AXIS),
    ("l2", "kernel"): P(None, AXIS), ("l2", "bias"): P(AXIS),
    ("l3", "kernel"): P(AXIS, None), ("l3", "bias"): P(AXIS),
}
SHAPES = {("l1", "kernel"): (IN, WIDTH), ("l1", "bias"): (WIDTH,),
          ("ln", "scale"): (WIDTH,), ("ln", "bias"): (WIDTH,),
          ("l2", "kernel"): (WIDTH, WIDTH), ("l2", "bias"): (WIDTH,),
          ("l3", "kernel"): (WIDTH, CLASSES), ("l3", "bias"): (CLASSES,)}


def initial_values() -> dict:
    """Seeded numpy values for every parameter (kernels N(0, 1/fan_in)): the sharded and the
    unsharded model start from exactly these."""
    rng = np.random.default_rng(0)
    out = {}
    for path, shape in SHAPES.items():
        if path[-1] == "kernel":
            value = rng.normal(size=shape) / np.sqrt(shape[0])
        elif path == ("ln", "scale"):
            value = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        out[path] = value.astype(np.float32)
    out[("l2", "bias")][:DEAD] = -10.0
    return out


def batches():
    rng = np.random.default_rng(1)
    return [(rng.normal(size=(BATCH, IN)).astype(np.float32),
             rng.integers(0, CLASSES, BATCH).astype(np.int32)) for _ in range(STEPS)]


def _gather(args, dtype=None, inexact=True):
    """A `promote_dtype` hook for explicit mode: all-gathers the layer's parameters (every
    argument but the input) before the layer computes with them."""
    x, *params = args
    params = [None if p is None else jax.sharding.reshard(p, P()) for p in params]
    return dtypes.promote_dtype((x, *params), dtype=dtype, inexact=inexact)


class MLP(nnx.Module):
    """Linear -> LayerNorm -> relu -> Linear -> relu -> Linear."""

    def __init__(self, mesh=None, explicit=False):
        values = initial_values()

        def init(path):
            fn = lambda key, shape, dtype=jnp.float32: jnp.asarray(values[path], dtype)
            return fn if mesh is None else nnx.with_partitioning(fn, SPECS[path], mesh=mesh)

        def layer(name, cls, *shape):
            kw = {"promote_dtype": _gather} if explicit else {}
            if cls is nnx.LayerNorm:
                return nnx.LayerNorm(*shape, scale_init=init((name, "scale")),
                                     bias_init=init((name, "bias")), rngs=rngs, **kw)
            return cls(*shape, kernel_init=init((name, "kernel")),
                       bias_init=init((name, "bias")), rngs=rngs, **kw)

        rngs = nnx.Rngs(0)
        self.l1 = layer("l1", nnx.Linear, IN, WIDTH)
        self.ln = layer("ln", nnx.LayerNorm, WIDTH)
        self.l2 = layer("l2", nnx.Linear, WIDTH, WIDTH)
        self.l3 = layer("l3", nnx.Linear, WIDTH, CLASSES)

    def __call__(self, x):
        h = nnx.relu(self.ln(self.l1(x)))
        return self.l3(nnx.relu(self.l2(h)))


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _flat(state, prefix: str) -> dict:
    return {prefix + "/".join(map(str, path)): np.asarray(v.get_value() if isinstance(
        v, nnx.Variable) else v) for path, v in nnx.to_flat_state(state)}


def _placement(model) -> dict:
    """Per parameter: its PartitionSpec (padded to the array's rank), the shape of one shard,
    the number of distinct devices holding shards, and whether it is fully replicated."""
    out = {}
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        a = v.get_value()
        s = a.sharding
        spec = list(s.spec) + [None] * (a.ndim - len(s.spec)) if isinstance(
            s, NamedSharding) else None
        out["/".join(map(str, path))] = {
            "type": type(s).__name__, "spec": spec,
            "mesh": dict(s.mesh.shape) if isinstance(s, NamedSharding) else None,
            "shard_shape": list(s.shard_shape(a.shape)),
            "devices": len({d.id for d in s.device_set}),
            "replicated": bool(s.is_fully_replicated)}
    return out


def run(mode: str):
    """`STEPS` steps of a user's loop (`nnx.jit`, `gf.value_and_grad`, `nnx.Optimizer` (adam),
    `gf.update_ratio`) in `mode` ("single", "auto" or "explicit").

    Returns:
      (arrays, info): the initial parameters, and per step the loss, every snapshot metric and
      scalar, and the gradients; the final parameters. info: the snapshot's layer names, where
      the parameters were before and after each step and, when sharded, where the batch was.
    """
    mesh = None
    if mode != "single":
        assert jax.device_count() == DEVICES, jax.devices()
        kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
        mesh = jax.make_mesh((DEVICES,), (AXIS,), axis_types=(kind,))
    # explicit axes (and P() in reshard) need the mesh in context
    with jax.set_mesh(mesh) if mode == "explicit" else contextlib.nullcontext():
        return _run(mesh, mode == "explicit")


def _run(mesh, explicit):
    grad_fn = gf.value_and_grad(loss_fn)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads, snap = grad_fn(model, x, y)
        updates = optimizer.update(model, grads)
        return loss, grads, gf.update_ratio(snap, updates)

    model = MLP(mesh, explicit)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    arrays = _flat(nnx.state(model, nnx.Param), "init/")
    info = {"placement": [_placement(model)]}
    for i, (x, y) in enumerate(batches()):
        if mesh is not None:
            x = jax.device_put(x, NamedSharding(mesh, P(AXIS, None)))
            y = jax.device_put(y, NamedSharding(mesh, P(AXIS)))
            info["batch_rows_per_device"] = sorted({s.data.shape[0] for s in x.addressable_shards})
        loss, grads, snap = step(model, optimizer, x, y)
        arrays[f"step{i}/loss"] = np.asarray(loss)
        arrays |= {f"step{i}/snap/{k}": np.asarray(snap[k]) for k in (*snap.metrics,
                                                                       *snap.scalars)}
        arrays |= _flat(grads, f"step{i}/grads/")
        info["layers"] = list(snap.layers)
        info["placement"].append(_placement(model))
    arrays |= _flat(nnx.state(model, nnx.Param), "final/")
    return arrays, info


def main(out: Path):
    checks = {}
    for mode in SHARDED_MODES:
        arrays, checks[mode] = run(mode)
        np.savez(out / f"{mode}.npz", **arrays)
    (out / "checks.json").write_text(json.dumps(checks))


if __name__ == "__main__":
    faulthandler.enable()  # a crash in native code: say where
    faulthandler.dump_traceback_later(240, exit=True)  # a hang: say where, and end
    main(Path(sys.argv[1]))
