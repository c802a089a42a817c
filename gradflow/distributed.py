"""Data parallelism on JAX's own machinery: a 1-D `jax.sharding.Mesh` with a `data` axis, the
batch sharded along it, parameters and optimizer state replicated, and the compiled steps
re-jitted with those shardings. Statistics stay those of the global batch because `jit` has
global semantics: XLA turns every reduction over the batch (loss, BatchNorm's batch mean, error
norms, activation statistics) into a cross-device one.

    mesh = data_mesh(4)                  # the first 4 devices; data_mesh() takes them all
    gf.train(model, batches, ..., mesh=mesh)   # or devices=4

Several processes (hosts): call `initialize()` first (it wraps `jax.distributed.initialize`);
each process then passes its own share of every global batch (`process_share`), as
`jax.make_array_from_process_local_data` expects, and only `is_primary()` writes files.

Why one module of ~370 lines: it is one concern (where a run's arrays live: processes, the mesh,
placement of batches and parameters) and the one place users look for it; three sections
(processes, the mesh, placement) of small functions, half of the length being their docstrings
and examples.
"""
from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


# -- processes ------------------------------------------------------------------------------------

def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> bool:
    """Joins a multi-process run through `jax.distributed.initialize`.

    Call it in every process before anything else touches a device. Each setting comes from its
    argument, else from the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID). With none of them set, nothing happens (a single process) unless `auto`.
    On CPU the processes talk through gloo collectives.

    Args:
      coordinator_address: "host:port" of process 0.
      num_processes: the number of processes.
      process_id: this process's index, 0 to num_processes - 1.
      auto: let JAX detect the missing settings in a TPU slice, SLURM or Open MPI job.

    Returns:
      Whether the run is multi-process (True also when JAX's distributed runtime was already
      initialized).

    Raises:
      ValueError: if only some settings are given and not `auto`, or an environment variable
        that should be an integer is not one.

    Example:
      >>> gf.distributed.initialize()  # no settings in the environment: one process
      False
      >>> gf.distributed.initialize("10.0.0.1:1234", num_processes=2,
      ...                           process_id=0)  # doctest: +SKIP
      True
    """
    if jax.distributed.is_initialized():
        return True
    given = {"coordinator_address": coordinator_address or os.environ.get(ENV[0]) or None,
             "num_processes": _env_int(num_processes, ENV[1]),
             "process_id": _env_int(process_id, ENV[2])}
    if not auto and all(v is None for v in given.values()):
        return False
    missing = [name for name, v in given.items() if v is None]
    if missing and not auto:
        raise ValueError(f"multi-process run needs {', '.join(missing)} too (arguments or "
                         f"{', '.join(ENV)}), or auto=True on a TPU slice / SLURM / Open MPI")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})
    return True


def _env_int(value, name):
    if value is not None:
        return int(value)
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None


def is_primary() -> bool:
    """Whether this is process 0, the one that writes histories, figures and reports.

    Returns:
      True in process 0 (and in a single-process run), False elsewhere.

    Example:
      >>> if gf.distributed.is_primary():  # doctest: +SKIP
      ...     hist.save("plain_history.npz")
    """
    return jax.process_index() == 0


# -- the mesh -------------------------------------------------------------------------------------

def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh with the single axis `data`, to pass as `mesh=` to `gf.probe` / `gf.train`.

    Args:
      devices: None (every device of every process), a count N (the first N; with P processes,
        the first N/P of each process's devices), or a non-empty sequence of jax devices.
        Devices are ordered process by process.

    Returns:
      A `jax.sharding.Mesh` of shape (n_devices,) with axis name "data".

    Raises:
      ValueError: for a count outside 1..device_count, one that is not a multiple of the
        number of processes, or anything that is not a list of jax devices.

    Example:
      >>> mesh = gf.distributed.data_mesh()  # every device
      >>> mesh.axis_names
      ('data',)
      >>> hist = gf.train(model, batches, steps=100, optimizer=tx, mesh=mesh)  # doctest: +SKIP
    """
    return Mesh(np.array(_select(devices)), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def _select(devices) -> list:
    if devices is None:
        return _process_major(jax.devices())
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        n, total, procs = int(devices), jax.device_count(), jax.process_count()
        if not 1 <= n <= total:
            raise ValueError(f"devices={n} must be between 1 and the {total} available")
        if n % procs:
            raise ValueError(f"devices={n} must be a multiple of the {procs} processes (each "
                             "process contributes the same number of devices)")
        per = n // procs
        return [d for p in range(procs) for d in _by_process(p)[:per]]
    try:
        chosen = list(devices)
    except TypeError:
        chosen = None
    if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
        raise ValueError(f"devices={devices!r} must be None (all), a count >= 1 or a "
                         "non-empty list of jax devices")
    return _process_major(chosen)


def _by_process(p: int) -> list:
    return sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)


def _process_major(devices) -> list:
    """Each process's devices side by side, so its share of the batch is one block of rows."""
    return sorted(devices, key=lambda d: (d.process_index, d.id))


def resolve(devices=None, mesh: Mesh | None = None) -> Mesh | None:
    """The mesh `gf.probe` / `gf.train` shard over, from their `devices` / `mesh` arguments.

    Args:
      devices: as in `data_mesh`.
      mesh: a `jax.sharding.Mesh` with a `data` axis, used as it is.

    Returns:
      The mesh, or None for one device in one process (then nothing is re-placed or
      re-jitted: the single-device path is unchanged). A one-device list still gives a mesh.

    Raises:
      ValueError: if both are given, `mesh` has no `data` axis, or `devices` is invalid.
    """
    if mesh is not None:
        if devices is not None:
            raise ValueError("give devices= or mesh=, not both")
        if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.axis_names:
            raise ValueError(f"mesh must be a jax.sharding.Mesh with a {DATA_AXIS!r} axis "
                             "(see gradflow.distributed.data_mesh)")
        return mesh
    chosen = _select(devices)
    if len(chosen) == 1 and jax.process_count() == 1 and not isinstance(devices, (list, tuple)):
        return None
    return Mesh(np.array(chosen), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that puts a whole copy of an array on every device of a mesh.

    Args:
      mesh: the mesh.

    Returns:
      `NamedSharding(mesh, PartitionSpec())`.
    """
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding that splits the leading (batch) axis along `data`.

    Args:
      mesh: a mesh with a `data` axis; any other mesh axis is replicated over.

    Returns:
      `NamedSharding(mesh, PartitionSpec("data"))`.
    """
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


# -- placement ------------------------------------------------------------------------------------

def check_divisible(rows: int, mesh: Mesh) -> None:
    """Checks that this process's batch rows split evenly over its devices in the mesh.

    Args:
      rows: the number of examples in this process's share of the batch.
      mesh: a mesh with a `data` axis.

    Raises:
      ValueError: if they do not, saying which batch size would.
    """
    local = _local_slots(mesh)
    if rows % local:
        who = ("a batch" if jax.process_count() == 1
               else f"process {jax.process_index()}'s share of the batch")
        raise ValueError(f"{who} of {rows} examples does not divide across {local} devices: "
                         f"use a batch size that is a multiple of {local}, or fewer devices")


def _local_slots(mesh: Mesh) -> int:
    """How many of the mesh's batch blocks (positions along `data`) this process's devices hold."""
    local = set(mesh.local_devices)
    blocks = np.moveaxis(mesh.devices, mesh.axis_names.index(DATA_AXIS), 0)
    return sum(any(d in local for d in np.ravel(b)) for b in blocks)


def place_batch(x, y, mesh: Mesh):
    """Places a batch on the mesh as global arrays sharded along `data`.

    Args:
      x: inputs with a leading batch axis: this process's share of the global batch (a single
        process's share is the whole batch), or a global jax array (then resharded).
      y: targets, likewise.
      mesh: a mesh with a `data` axis.

    Returns:
      `(x, y)` as global jax arrays, rows split along `data`.

    Raises:
      ValueError: for a 0-d array, or rows that do not divide across this process's devices.
    """
    sharding = batch_sharding(mesh)
    out = []
    for a in (x, y):
        a = a if isinstance(a, jax.Array) else np.asarray(a)
        if a.ndim == 0:
            raise ValueError("batch arrays need a leading batch axis")
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            out.append(jax.device_put(a, sharding))
            continue
        check_divisible(a.shape[0], mesh)
        out.append(jax.device_put(a, sharding) if jax.process_count() == 1
                   else jax.make_array_from_process_local_data(sharding, np.asarray(a)))
    return tuple(out)


def place_global(a, mesh: Mesh, sharding=None):
    """Places an array that every process holds in full (held-out data, initial parameters).

    Args:
      a: the whole array, identical in every process.
      mesh: a mesh with a `data` axis.
      sharding: the target sharding; default `batch_sharding(mesh)` (rows along `data`).

    Returns:
      A global jax array; each device takes only its own slice of `a`.
    """
    a = np.asarray(a)
    sharding = batch_sharding(mesh) if sharding is None else sharding
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def replicate(tree, mesh: Mesh):
    """Replicates every leaf of a pytree on every device of the mesh.

    Args:
      tree: a pytree of arrays, identical in every process.
      mesh: the mesh.

    Returns:
      The same tree with every leaf a replicated jax array.
    """
    rep = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, rep)
    return jax.tree.map(lambda a: jax.device_put(a, rep) if isinstance(a, jax.Array)
                        and not a.is_fully_addressable else place_global(a, mesh, rep), tree)


def process_share(batch, mesh: Mesh):
    """This process's rows of a global batch that every process holds in full.

    Args:
      batch: `(x, y)`, the whole global batch (numpy arrays or array-likes).
      mesh: the mesh the batch will be sharded over.

    Returns:
      `(x, y)` as numpy arrays: the rows this process's devices hold under `batch_sharding`, in
      order, as `place_batch` (and `gf.train` in a multi-process run) expects them.

    Raises:
      ValueError: if the batch does not divide across the mesh's `data` axis.

    Example:
      >>> mesh = gf.distributed.data_mesh()
      >>> x, y = np.zeros((8, 4)), np.arange(8)
      >>> gf.distributed.process_share((x, y), mesh)[0].shape  # one process: every row
      (8, 4)
    """
    x, y = batch
    n, blocks = len(x), mesh.shape[DATA_AXIS]
    if n % blocks:
        raise ValueError(f"a batch of {n} examples does not divide across {blocks} devices: "
                         f"use a batch size that is a multiple of {blocks}, or fewer devices")
    index = batch_sharding(mesh).addressable_devices_indices_map((n,))
    starts = sorted({s[0].indices(n)[:2] for s in index.values()})
    rows = np.concatenate([np.arange(a, b) for a, b in starts])
    return np.asarray(x)[rows], np.asarray(y)[rows]


def process_shares(batches, mesh: Mesh):
    """`process_share` of every batch of an iterable, lazily.

    Args:
      batches: an iterable of global batches `(x, y)`.
      mesh: the mesh the batches will be sharded over.

    Yields:
      Each batch's `process_share`; the batches themselves in a single-process run.
    """
    if jax.process_count() == 1:
        yield from batches
        return
    for batch in batches:
        yield process_share(batch, mesh)


@functools.lru_cache(maxsize=64)
def sharded(step, mesh: Mesh, n_replicated: int):
    """A compiled step jitted with data-parallel shardings (cached per step, mesh and count).

    Args:
      step: a function `step(*replicated_args, x, y)`.
      mesh: a mesh with a `data` axis.
      n_replicated: how many leading arguments (parameters, state) are replicated.

    Returns:
      `jax.jit(step)` with those arguments and every output replicated, and x, y sharded
      along `data`.
    """
    rep, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep,) * n_replicated + (data, data), out_shardings=rep)


@functools.lru_cache(maxsize=64)
def gathered(fn, mesh: Mesh):
    """`fn` jitted so that every process can read its outputs whole (cached per fn and mesh).

    Args:
      fn: a function `fn(graphdef, *arrays)`; `graphdef` is a static argument.
      mesh: the mesh.

    Returns:
      `jax.jit(fn)` with every output replicated on the mesh.
    """
    return jax.jit(fn, static_argnums=0, out_shardings=replicated(mesh))
