"""`gf.train`: the host loop. Recorded steps run the instrumented step, the others the bare one.
Unrecorded steps never wait on the device; at a recorded step the loop fetches the loss and the
per-layer gradient and error norms (a few hundred floats) to stop at the first non-finite one."""
from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
from flax import nnx

from . import distributed, losses
from .history import History, finite_record
from .instrument import TRAIN_METRICS
from .models.options import check_positive_int
from .probe import as_batch, split_model
from .instrument.steps import layout_for, train_steps


def recorded_steps(steps: int, log_every: int) -> list[int]:
    """Steps 0, log_every, 2*log_every, ... and the last step."""
    out = list(range(0, steps, log_every))
    if steps and out[-1] != steps - 1:
        out.append(steps - 1)
    return out


class TrainState(NamedTuple):
    """Everything `train` needs to continue after `step` steps: parameters, the rest of the
    model's state (BatchNorm statistics, RNG counters), the optimizer state, and the records so
    far (their steps, per-record dicts of arrays, and the layer names). The data position is
    `step`: that many batches were consumed."""
    step: int
    params: Any
    rest: Any
    opt_state: Any
    at: list
    records: list
    layers: tuple = ()


def train(model, batches, *, steps: int, optimizer, log_every: int = 1, loss=None,
          progress=None, stop_on_nonfinite: bool = True, devices=None, mesh=None,
          resume=None, on_record=None, stop=None) -> History:
    """Trains `model` in place with the optax `optimizer` on `steps` batches (x, y) from the
    iterable `batches`, measuring every layer at the steps given by `recorded_steps`.

    A record at step s describes the gradients at the parameters before update s. `progress`,
    if given, is called as progress(step) after each step. With `stop_on_nonfinite`, a recorded
    step whose loss, or any layer's gradient or error norm, is not finite ends training: that
    record is kept (it shows which layers went non-finite), its update is not applied, and
    `meta["diverged_at_step"]` is set.

    Hooks for checkpointing (all optional; without them nothing is added to the loop):
    `resume(fresh: TrainState) -> TrainState` replaces the fresh start by a saved one (the first
    `step` batches are then skipped); `on_record(state, final)` gets the TrainState after every
    recorded step (final=False) and where training stops early (final=True); `stop()` is asked
    after every step, and True ends training cleanly there with `meta["stopped_at_step"]` set.

    Data parallel over `devices` (None: every visible device; a count; a list) or a `mesh`
    with a `data` axis, as in `gf.probe`: each batch is split across them, parameters and
    optimizer state are replicated, and the model ends up holding replicated arrays.
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
    instrumented, bare = train_steps(graphdef, layout, loss_fn, acc_fn, optimizer)
    opt_state = optimizer.init(params)
    begin, records, at = 0, [], []
    if resume is not None:
        saved = resume(TrainState(0, params, rest, opt_state, [], [], layout.names))
        begin, params, rest, opt_state = saved.step, saved.params, saved.rest, saved.opt_state
        at, records = list(saved.at), list(saved.records)
    if mesh is not None:
        instrumented, bare = (distributed.sharded(f, mesh, 3) for f in (instrumented, bare))
        params, rest, opt_state = distributed.replicate((params, rest, opt_state), mesh)
    record_at = set(recorded_steps(steps, log_every))
    done, diverged, stopped = begin, None, False
    for step, batch in enumerate(itertools.chain([first], it)):
        if step == steps:
            break
        if step < begin:  # resuming: these batches were consumed before the checkpoint
            continue
        x, y = as_batch(batch, mesh)
        step_fn = instrumented if step in record_at else bare
        new_params, new_rest, new_opt, out = step_fn(params, rest, opt_state, x, y)
        if step in record_at:
            records.append(out)
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
            on_record(TrainState(done, params, rest, opt_state, at, records, layout.names),
                      stopped)
        if stopped:
            break
    if done < steps and diverged is None and not stopped:
        raise ValueError(f"batches ran out after {done} of steps={steps}")
    nnx.update(model, params, rest)
    meta = {"probed": layout.probed, "metrics": list(TRAIN_METRICS)}
    if diverged is not None:
        meta["diverged_at_step"] = diverged
    if stopped:
        meta["stopped_at_step"] = done
    return History.from_records(layout.names, at, jax.device_get(records), meta)
