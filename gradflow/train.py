"""`gf.train`: the host loop. Recorded steps run the instrumented step, the others the bare one.
Unrecorded steps never wait on the device; at a recorded step the loop fetches the loss and the
per-layer gradient and error norms (a few hundred floats) to stop at the first non-finite one."""
from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from . import distributed, history as _history, losses
from .history import FLUSH_S, History, finite_record
from .instrument import TRAIN_METRICS
from .instrument.steps import layout_for, train_steps
from .models.options import check_positive_int
from .probe import as_batch, split_model
from .quantities.training import Extras, merge_into


def recorded_steps(steps: int, log_every: int) -> list[int]:
    """The steps `gf.train` records: 0, log_every, 2*log_every, ... and the last step.

    Args:
      steps: the number of training steps.
      log_every: the interval between records, in steps.

    Returns:
      The recorded steps in ascending order (empty if `steps` is 0).

    Example:
      >>> gf.recorded_steps(10, 4)
      [0, 4, 8, 9]
    """
    out = list(range(0, steps, log_every))
    if steps and out[-1] != steps - 1:
        out.append(steps - 1)
    return out


class TrainState(NamedTuple):
    """Everything `train` needs to continue after `step` steps (its checkpointing hooks' state).

    Attributes:
      step: the number of steps taken; also the data position (that many batches were consumed).
      params: the trained parameters (`nnx.Param` state).
      rest: the rest of the model's state (BatchNorm statistics, RNG counters).
      opt_state: the optax optimizer state.
      at: the steps of the records so far.
      records: the records so far, one dict of arrays per record.
      layers: the layer names, in network order.
      curvature_start: where the next curvature measurement starts (the last measurement's
        Ritz vector, a pytree like `params`), or None without `curvature_every`.
    """
    step: int
    params: Any
    rest: Any
    opt_state: Any
    at: list
    records: list
    layers: tuple = ()
    curvature_start: Any = None


def train(model, batches, *, steps: int, optimizer, log_every: int = 1, loss=None,
          progress=None, stop_on_nonfinite: bool = True, devices=None, mesh=None,
          resume=None, on_record=None, stop=None, noise_every=None, noise_chunk=None,
          curvature_every=None, loggers=()) -> History:
    """Trains `model` in place and measures every layer at the steps `recorded_steps` gives.

    A record at step s describes the gradients at the parameters before update s. Unrecorded
    steps run an uninstrumented compiled step and never wait on the device.

    The compiled steps are cached per model structure, input shape, loss and optimizer, the
    loss and optimizer keyed by what they compute (`gradflow.instrument.same_code.code_key`):
    a later call with `optax.sgd(0.1)` built again reuses them (60 steps of the depth-50
    residual_bn CNN on 2 CPU cores: 7.0 s, against 18.5 s when they are compiled;
    `python benchmarks/train_cache.py`). An
    optimizer whose functions close over a device array (a learning rate given as a
    `jnp.array`) is keyed by the object itself.

    Args:
      model: a `flax.nnx.Module`; updated in place (parameters and BatchNorm statistics).
      batches: an iterable of `(x, y)` pairs with at least `steps` items; in a multi-process
        run, each is this process's share of the global batch.
      steps: the number of training steps (>= 1).
      optimizer: an optax `GradientTransformation`, e.g. `optax.sgd(0.1)`.
      log_every: the interval between records, in steps (>= 1); the last step is always
        recorded.
      loss: as in `gf.probe`: "cross_entropy" (the default), "mse", "binary_cross_entropy", or
        a callable `(outputs, y) -> scalar`.
      progress: if given, called as `progress(step)` after each step.
      stop_on_nonfinite: end training at a recorded step whose loss, or any layer's gradient or
        error norm, is not finite: that record is kept (it shows which layers went non-finite),
        its update is not applied, and `meta["diverged_at_step"]` is set.
      devices: data parallelism, as in `gf.probe`: None (every visible device), a count, or a
        list of jax devices. Each batch is split across them, parameters and optimizer state
        are replicated, and the model ends up holding replicated arrays.
      mesh: instead of `devices`, a `jax.sharding.Mesh` with a `data` axis.
      resume: checkpointing hook `resume(fresh: TrainState) -> TrainState` that replaces the
        fresh start by a saved state; the first `state.step` batches are then skipped.
      on_record: checkpointing hook `on_record(state: TrainState, final: bool)`, called after
        every recorded step (final=False) and where `stop` ends training early (final=True).
      stop: `stop() -> bool`, asked after every step; True ends training there cleanly, with
        `meta["stopped_at_step"]` set.

      noise_every: also take the gradient noise quantities (as `gf.probe(..., noise=True)`)
        at steps 0, k, 2k, ... (each such step is a record); records between them hold NaN
        for those values and -1 for `example_grad_hist` counts. None: never. Runs on one
        device.
      noise_chunk: examples per chunk of per-example gradients (default: as many as fit
        256 MiB).
      curvature_every: also take the curvature (as `gf.probe(..., curvature=True)`, warm-started:
        `gradflow.quantities.training.Extras`) at steps 0, k, 2k, ...; NaN between. None: never.
        Runs on one device.
      loggers: objects with a `write(history)` method, e.g. `gf.integrations.TensorBoardWriter`:
        each is given the History so far after a recorded step (at the first one, then at most
        every `gradflow.history.FLUSH_S` seconds) and the final History at the end; they are
        not closed here.

    Returns:
      A History: (n_records, n_layers) arrays of `gf.instrument.TRAIN_METRICS` (the probe's
      metrics and `update_ratio`), `loss`, `accuracy` and the normalization layers'
      `grad_norm:<path>` (as in `gf.probe`) per record, and `steps`.

    Raises:
      ValueError: for a non-positive `steps` or `log_every`, an `optimizer` without
        `init`/`update`, an empty `batches`, or one that runs out before `steps` (unless training
        diverged or was stopped).

    Example:
      >>> model = gf.models.mlp("plain", 4, width=32, in_features=8, num_classes=3,
      ...                       rngs=nnx.Rngs(0))
      >>> x, y = jnp.ones((16, 8)), jnp.arange(16) % 3
      >>> hist = gf.train(model, [(x, y)] * 20, steps=20, optimizer=optax.sgd(0.1),
      ...                 log_every=5)
      >>> hist.steps, hist["grad_norm"].shape
      (array([ 0,  5, 10, 15, 19]), (5, 4))
    """
    check_positive_int("steps", steps)
    check_positive_int("log_every", log_every)
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError("optimizer must be an optax GradientTransformation, e.g. optax.sgd(0.1)")
    loss_fn, acc_fn = losses.resolve(loss)
    mesh = distributed.resolve(devices, mesh)
    graphdef, params, rest = split_model(model)
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise ValueError("batches is empty")
    x, y = as_batch(first, mesh)
    layout = layout_for(graphdef, params, rest, x, model)
    losses.check_labels(loss, first[1], layout.output)
    instrumented, bare = train_steps(graphdef, layout, loss_fn, acc_fn, optimizer)
    for name, every in (("noise_every", noise_every), ("curvature_every", curvature_every)):
        if every is not None:
            check_positive_int(name, every)
            if mesh is not None:
                raise ValueError(f"{name} runs on one device: pass devices=1")
    extras = Extras(graphdef, params, layout, loss_fn, x.shape[0], noise_every=noise_every,
                    chunk=noise_chunk, curvature_every=curvature_every)
    opt_state = optimizer.init(params)
    begin, records, at = 0, [], []
    if resume is not None:
        saved = resume(TrainState(0, params, rest, opt_state, [], [], layout.names,
                                  extras.curvature_start))
        begin, params, rest, opt_state = saved.step, saved.params, saved.rest, saved.opt_state
        at, records = list(saved.at), list(saved.records)
        if saved.curvature_start is not None:  # else a random start, as in a new run
            extras.curvature_start = saved.curvature_start
    if mesh is not None:
        instrumented, bare = (distributed.sharded(f, mesh, 3) for f in (instrumented, bare))
        params, rest, opt_state = distributed.replicate((params, rest, opt_state), mesh)
    record_at = set(recorded_steps(steps, log_every)) | {s for s in range(steps)
                                                          if extras.due(s)}
    done, diverged, stopped = begin, None, False
    host, logged_at = [], None  # the records fetched for the loggers; when they last wrote
    for step, batch in enumerate(itertools.chain([first], it)):
        if step == steps:
            break
        if step < begin:  # resuming: these batches were consumed before the checkpoint
            continue
        if step and isinstance(batch[1], np.ndarray):  # host labels: checking costs no transfer
            losses.check_labels(loss, batch[1], layout.output)
        x, y = as_batch(batch, mesh)
        step_fn = instrumented if step in record_at else bare
        new_params, new_rest, new_opt, out = step_fn(params, rest, opt_state, x, y)
        if step in record_at:
            records.append(merge_into(out, extras.measure(step, params, rest, x, y)))
            at.append(step)
            if stop_on_nonfinite and not finite_record(out):
                diverged = step
                break
        params, rest, opt_state = new_params, new_rest, new_opt
        done = step + 1
        if progress is not None:
            progress(step)
        stopped = stop is not None and stop() and done < steps
        if on_record is not None and (stopped or step in record_at):
            on_record(TrainState(done, params, rest, opt_state, at, records, layout.names,
                                 extras.curvature_start), stopped)
        if loggers and step in record_at and (
                logged_at is None or _history._clock() - logged_at >= FLUSH_S):
            _write_loggers(loggers, layout.names, at, records, host, _meta(layout, extras))
            logged_at = _history._clock()
        if stopped:
            break
    if done < steps and diverged is None and not stopped:
        raise ValueError(f"batches ran out after {done} of steps={steps}")
    nnx.update(model, params, rest)
    meta = _meta(layout, extras)
    if diverged is not None:
        meta["diverged_at_step"] = diverged
    if stopped:
        meta["stopped_at_step"] = done
    host += jax.device_get(records[len(host):])
    hist = History.from_records(layout.names, at, host, meta)
    for logger in loggers:
        logger.write(hist)
    return hist


def _meta(layout, extras) -> dict:
    """The History's meta: the probed layers, the metrics and the quantities' intervals."""
    meta = {"probed": layout.probed, "metrics": list(TRAIN_METRICS)}
    for key in ("noise_every", "curvature_every"):
        if getattr(extras, key, None) is not None:
            meta[key] = getattr(extras, key)
    return meta


def _write_loggers(loggers, layers, at, records, host: list, meta: dict) -> None:
    """Gives each logger the History so far; `host` keeps the records already fetched."""
    host += jax.device_get(records[len(host):])
    hist = History.from_records(layers, at, list(host), meta)
    for logger in loggers:
        logger.write(hist)
