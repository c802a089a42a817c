"""`gf.train`: the host loop. Recorded steps run the instrumented step, the others the bare one;
measurements stay on the device until the end, so the loop never waits on them."""
from __future__ import annotations

import itertools

import jax
import numpy as np
from flax import nnx

from . import losses
from .history import History
from .instrument import TRAIN_METRICS
from .models.options import check_positive_int
from .probe import as_batch, split_model
from .steps import layout_for, train_steps


def recorded_steps(steps: int, log_every: int) -> list[int]:
    """Steps 0, log_every, 2*log_every, ... and the last step."""
    out = list(range(0, steps, log_every))
    if steps and out[-1] != steps - 1:
        out.append(steps - 1)
    return out


def train(model, batches, *, steps: int, optimizer, log_every: int = 1, loss=None,
          progress=None, stop_on_nonfinite: bool = True) -> History:
    """Trains `model` in place with the optax `optimizer` on `steps` batches (x, y) from the
    iterable `batches`, measuring every layer at the steps given by `recorded_steps`.

    A record at step s describes the gradients at the parameters before update s. `progress`,
    if given, is called as progress(step) after each step. With `stop_on_nonfinite`, a recorded
    step whose loss is not finite ends training: that record is kept (it shows which layers went
    non-finite), its update is not applied, and `meta["diverged_at_step"]` is set.
    """
    check_positive_int("steps", steps)
    check_positive_int("log_every", log_every)
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError("optimizer must be an optax GradientTransformation, e.g. optax.sgd(0.1)")
    loss_fn, acc_fn = losses.resolve(loss)
    graphdef, params, rest = split_model(model)
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise ValueError("batches is empty")
    x, y = as_batch(first)
    layout = layout_for(graphdef, params, rest, x, model)
    instrumented, bare = train_steps(graphdef, layout, loss_fn, acc_fn, optimizer)
    opt_state = optimizer.init(params)
    record_at = set(recorded_steps(steps, log_every))
    records, at, done, diverged = [], [], 0, None
    for step, batch in enumerate(itertools.chain([first], it)):
        if step == steps:
            break
        x, y = as_batch(batch)
        step_fn = instrumented if step in record_at else bare
        new_params, new_rest, new_opt, out = step_fn(params, rest, opt_state, x, y)
        if step in record_at:
            records.append(out)
            at.append(step)
            if stop_on_nonfinite and not np.isfinite(float(out["loss"])):
                diverged = step
                break
        params, rest, opt_state = new_params, new_rest, new_opt
        done = step + 1
        if progress is not None:
            progress(step)
    if done < steps and diverged is None:
        raise ValueError(f"batches ran out after {done} of steps={steps}")
    nnx.update(model, params, rest)
    meta = {"probed": layout.probed, "metrics": list(TRAIN_METRICS)}
    if diverged is not None:
        meta["diverged_at_step"] = diverged
    return History.from_records(layout.names, at, jax.device_get(records), meta)
