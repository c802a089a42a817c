"""Training checkpoints (orbax-checkpoint) and the periodic flush of a History in training.

A checkpoint of one architecture holds everything `gf.train` needs to continue bit for bit: the
parameters, the optimizer state, the model's other state (BatchNorm statistics, RNG keys and
counters), the step reached — which is also the data position, since the batch order is a
function of the seed and resuming skips that many batches — the records so far, and, in runs
that measure curvature, where the next measurement starts (`TrainState.curvature_start`).

`ArchSaver` gives `gf.train` its `resume` and `on_record` hooks for one architecture of a run:
the History so far goes to `<arch>_history.npz` at the first record and then at most every
FLUSH_S seconds (atomically: a temporary file renamed into place, so the file on disk always
loads), a checkpoint to `checkpoints/<arch>/` at most every CHECKPOINT_S seconds and at once
where training stops early (SIGINT/SIGTERM).

A checkpoint that cannot be written (full disk, read-only directory) raises `WriteError` naming
the checkpoint directory: orbax writes into a temporary folder renamed into place at the end,
so the half-written one is removed and the previous checkpoint stays whole for `--resume`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ._io import WriteError
from .history import FLUSH_S, History
from .train import TrainState

CHECKPOINT_S = 30.0  # seconds between two periodic checkpoints (at the next record)
CHECKPOINTS = "checkpoints"
_FORMAT = "gradflow-checkpoint-1"


def _ocp():
    import orbax.checkpoint as ocp  # imported on first use: ~1 s, only runs that checkpoint pay
    return ocp


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key)


def _host(leaf) -> np.ndarray:
    return np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)


def _numbered(tree) -> dict:
    """A pytree's leaves as host arrays keyed "00000", "00001", ... in flattening order."""
    return {f"{i:05d}": _host(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}


def _abstract(leaves) -> dict:
    """Shapes and dtypes of `leaves`, keyed as `_numbered` keys them."""
    return {f"{i:05d}": jax.ShapeDtypeStruct(np.shape(a), a.dtype) for i, a in enumerate(leaves)}


def _stack(records: list, at, layers) -> dict:
    """Per-record dicts of host arrays -> {"steps", "metric": {name: (n, layers)}, "scalar":
    {name: (n,)}}, stacked as a History stacks them."""
    hist = History.from_records(layers, at, records)
    return {"steps": hist.steps, "metric": {k: hist[k] for k in hist.metrics},
            "scalar": {k: hist[k] for k in hist.scalars}}


def _unstack(stacked: dict) -> tuple[list, list]:
    steps = [int(s) for s in np.asarray(stacked["steps"])]
    arrays = {**stacked.get("metric", {}), **stacked.get("scalar", {})}
    return steps, [{k: np.asarray(v[i]) for k, v in arrays.items()} for i in range(len(steps))]


class Checkpoint:
    """The latest training checkpoint of one architecture in `directory`.

    An orbax `CheckpointManager` that keeps one step, written synchronously and atomically by
    orbax; it is opened on first use.

    Args:
      directory: the checkpoint directory; created if missing.

    Example::

      ckpt = Checkpoint("runs/x/checkpoints/plain")
      ckpt.save(state, {"arch": "plain"})
      state = ckpt.restore(fresh)  # fresh: the TrainState of a newly built model and optimizer
    """

    def __init__(self, directory):
        self.shown = Path(directory)  # as given, for messages
        self.directory = self.shown.absolute()
        self._manager = None

    def _mgr(self):
        if self._manager is None:
            ocp = _ocp()
            self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=1, enable_async_checkpointing=False, create=True))
        return self._manager

    def exists(self) -> bool:
        """Whether `directory` holds a checkpoint.

        Returns:
          True if the directory exists and orbax finds a saved step in it.
        """
        return self.directory.is_dir() and self._mgr().latest_step() is not None

    def save(self, state: TrainState, meta: dict | None = None) -> None:
        """Writes `state` as the checkpoint, replacing the previous one.

        Args:
          state: the TrainState to save; its device arrays are copied to the host and its
            records must not be empty.
          meta: free-form JSON-serializable metadata stored in the header; default empty.

        Raises:
          WriteError: naming the directory, if the checkpoint cannot be written; nothing of it
            is left and the previous checkpoint is kept.
        """
        ocp = _ocp()
        leaves, treedef = jax.tree.flatten((state.params, state.rest, state.opt_state))
        arrays = _numbered(leaves)
        header = {"format": _FORMAT, "step": int(state.step), "treedef": str(treedef),
                  "shapes": [list(a.shape) for a in arrays.values()],
                  "layers": list(state.layers), "meta": meta or {}}
        items = {"state": ocp.args.StandardSave(arrays),
                 "records": ocp.args.StandardSave(_stack(jax.device_get(list(state.records)),
                                                         state.at, state.layers))}
        if state.curvature_start is not None:
            start = _numbered(state.curvature_start)
            header["curvature_shapes"] = [list(a.shape) for a in start.values()]
            items["curvature"] = ocp.args.StandardSave(start)
        before = set(threading.enumerate())
        try:
            with _orbax_quiet():
                self._mgr().save(int(state.step), args=ocp.args.Composite(
                    header=ocp.args.JsonSave(header), **items), force=True)
                self._mgr().wait_until_finished()
        except Exception as e:
            with _orbax_quiet(pass_on=False):
                self._abandon(before)
            err = _os_error(e)
            if err is None:
                raise
            raise WriteError(self.shown, err) from None

    def restore(self, fresh: TrainState) -> TrainState:
        """Reads the saved state, laid out as `fresh`.

        Args:
          fresh: the TrainState of a freshly built model and optimizer; its tree structure and
            shapes must match the saved ones.

        Returns:
          The saved TrainState, records and layer names included. Its `curvature_start` is
          the saved one where `fresh` has one of the same shapes, else None (a checkpoint of
          a run without curvature: the next measurement starts from a random vector).

        Raises:
          ValueError: if there is no checkpoint, or it was written for another model or optimizer.
        """
        ocp = _ocp()
        mgr = self._mgr()
        step = mgr.latest_step()
        if step is None:
            raise ValueError(f"{self.directory}: no checkpoint")
        header = mgr.restore(step, args=ocp.args.Composite(header=ocp.args.JsonRestore()))["header"]
        leaves, treedef = jax.tree.flatten((fresh.params, fresh.rest, fresh.opt_state))
        host = [_host(leaf) for leaf in leaves]
        if (header.get("format") != _FORMAT or header["treedef"] != str(treedef)
                or header["shapes"] != [list(a.shape) for a in host]):
            raise ValueError(f"{self.directory}: the checkpoint was written for another model "
                             "or optimizer")
        start, start_def = jax.tree.flatten(fresh.curvature_start)
        keep_start = (fresh.curvature_start is not None  # and saved with the same shapes
                      and header.get("curvature_shapes") == [list(np.shape(a)) for a in start])
        items = {"state": ocp.args.StandardRestore(_abstract(host)),
                 "records": ocp.args.StandardRestore()}
        if keep_start:
            items["curvature"] = ocp.args.StandardRestore(_abstract(start))
        got = mgr.restore(step, args=ocp.args.Composite(**items))
        restored = []
        for i, leaf in enumerate(leaves):
            value = np.asarray(got["state"][f"{i:05d}"])
            restored.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
                            if _is_key(leaf) else jnp.asarray(value))
        params, rest, opt_state = jax.tree.unflatten(treedef, restored)
        at, records = _unstack(got["records"])
        curvature_start = (jax.tree.unflatten(start_def, [jnp.asarray(got["curvature"][k])
                                                          for k in sorted(got["curvature"])])
                           if keep_start else None)
        return TrainState(int(header["step"]), params, rest, opt_state, at, records,
                          tuple(header["layers"]), curvature_start)

    def _abandon(self, before: set) -> None:
        """After a failed save: waits for the writer threads it started, closes the manager and
        removes orbax's temporary folders (the committed checkpoint is left as it was)."""
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            alive = [t for t in set(threading.enumerate()) - before
                     if t is not threading.current_thread() and not t.daemon and t.is_alive()]
            if not alive:
                break
            for t in alive:
                try:  # orbax's threads re-raise their own failure from join()
                    t.join(max(0.0, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - already reported by the save's exception
                    pass
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the manager is dropped either way
            self._manager = None
        for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self):
        """Closes the orbax manager, if open; the next use reopens it."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def delete(self):
        """Closes the manager and removes `directory` with everything in it."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _os_error(e: Exception) -> OSError | None:
    """The system error behind a failed orbax save: `e` itself, or the one tensorstore names
    (`[os_error_code='28']`); None for any other failure."""
    if isinstance(e, OSError):
        return e
    code = re.search(r"os_error_code='?(\d+)", str(e))
    return OSError(int(code[1]), os.strerror(int(code[1]))) if code else None


class _DropErrors(logging.Filter):
    def filter(self, record):
        return record.levelno < logging.ERROR


@contextlib.contextmanager
def _orbax_quiet(pass_on: bool = True):
    """Orbax logs each failed writer thread's traceback and tensorstore's late callbacks report
    theirs as unraisable exceptions on stderr; a failure is raised (and reported in one line)
    instead. What a block that succeeds prints is passed on if `pass_on`."""
    logger, drop, caught, unraisable = logging.getLogger("absl"), _DropErrors(), io.StringIO(), []
    logger.addFilter(drop)
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with contextlib.redirect_stderr(caught):
            yield
        if pass_on:
            sys.stderr.write(caught.getvalue())
            for u in unraisable:
                hook(u)
    finally:
        sys.unraisablehook = hook
        logger.removeFilter(drop)


class ArchSaver:
    """The `resume` and `on_record` hooks of `gf.train` for one architecture of a run.

    Args:
      run_dir: the run's directory; the History goes to `<arch>_history.npz` there, the
        checkpoint to `checkpoints/<arch>/`.
      arch: the architecture's name.
      clock: a dict shared by the archs of a run that keeps the time of the last checkpoint
        (key "checkpoint", `time.monotonic()`); default a new one.

    Example::

      saver = ArchSaver(run_dir, "plain")
      hist = gf.train(model, batches, steps=1000, optimizer=tx, **saver.hooks({"arch": "plain"}))
      saver.finish()
    """

    def __init__(self, run_dir, arch: str, clock: dict | None = None):
        self.run_dir, self.arch = Path(run_dir), arch
        self.checkpoint = Checkpoint(self.run_dir / CHECKPOINTS / arch)
        self.clock = clock if clock is not None else {}
        self.clock.setdefault("checkpoint", time.monotonic())
        self.last_flush = -float("inf")
        self.meta: dict = {}
        self.resumed_from: int | None = None
        self._host: list = []  # records already copied to the host

    @property
    def history_path(self) -> Path:
        """Where the History is flushed: `<run_dir>/<arch>_history.npz`."""
        return self.run_dir / f"{self.arch}_history.npz"

    def hooks(self, meta: dict) -> dict:
        """Keyword arguments for `gf.train`.

        Args:
          meta: metadata that goes into every flushed History.

        Returns:
          `{"on_record": ..., "resume": ...}`; `resume` is None when there is no checkpoint.
        """
        self.meta = dict(meta)
        return {"on_record": self.on_record,
                "resume": self.resume if self.checkpoint.exists() else None}

    def resume(self, fresh: TrainState) -> TrainState:
        """The `resume` hook: the checkpointed state, laid out as `fresh`.

        Args:
          fresh: the TrainState `gf.train` starts from.

        Returns:
          The restored TrainState; its step is kept in `resumed_from`.
        """
        state = self.checkpoint.restore(fresh)
        self.resumed_from = state.step
        self._host = list(state.records)
        return state

    def on_record(self, state: TrainState, final: bool = False) -> None:
        """The `on_record` hook: flushes the History and checkpoints when they are due.

        The History is flushed at the first record and then at most every FLUSH_S seconds, a
        checkpoint written at most every CHECKPOINT_S seconds (on the shared clock); both at
        once when `final`.

        Args:
          state: the TrainState after the recorded step.
          final: True where training stops early.
        """
        now = time.monotonic()
        if final or now - self.last_flush >= FLUSH_S:
            self.flush(state)
            self.last_flush = now
        if final or now - self.clock["checkpoint"] >= CHECKPOINT_S:
            self.checkpoint.save(state, {"arch": self.arch})
            self.clock["checkpoint"] = time.monotonic()

    def flush(self, state: TrainState) -> Path:
        """Writes the History so far to `history_path`, atomically.

        Its meta is the `hooks` meta plus "partial" (True) and "flushed_at_step".

        Args:
          state: the TrainState whose records to write; records already on the host are
            not fetched again.

        Returns:
          The path written.
        """
        self._host += jax.device_get(list(state.records[len(self._host):]))
        hist = History.from_records(state.layers, state.at, self._host,
                                    {**self.meta, "partial": True, "flushed_at_step": state.step})
        return hist.save(self.history_path)

    def finish(self) -> None:
        """The arch is done: its checkpoint is no longer needed."""
        self.checkpoint.delete()
