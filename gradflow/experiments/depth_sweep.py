"""Depth sweep: how the error-signal attenuation between the first and the last layer grows with
depth, per architecture, over several initializations, next to the mean-field prediction.

    from gradflow import data
    from gradflow.experiments import depth_sweep, side_by_side
    cfg = side_by_side.Config(archs=("plain", "residual_bn"))
    ds = data.synthetic(cfg.seed)
    res = depth_sweep.depth_sweep(cfg, [8, 16, 32, 64, 128], steps=0, ds=ds)  # at init only
    res.save("sweep.json"); gf.plot.depth_sweep(res)

Its table, HTML report and files: `gradflow.report.sweep_report`.

Each (architecture, depth, seed) cell builds the network the way `gradflow.run` does (seed =
cfg.seed + k: the initialization, and with training the batch order; the data stay those of
cfg.seed). With `steps == 0` it probes one batch at init (`gf.probe`); with `steps > 0` it trains
like the run (`side_by_side.train_arch`) and the attenuation at init is the training run's first
record, measured on its first batch before any update.

The attenuation is error_norm[0] / error_norm[-1] = ||dL/dz|| of layer 1 (the stem) over that of
the output layer: far below 1 the error signal vanishes toward the input, far above 1 it explodes.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from .. import data, models
from ..analysis.theory import theory_attenuation
from ..models.options import base_arch
from .side_by_side import Config, build_model, train_arch
from .sweep_records import Cell, Sweep
from .verdict import final_train

SEED_COUNT = 3  # initializations per depth: cfg.seed, cfg.seed + 1, ...
# Examples in the probe batch at init (fewer when cfg.batch_size is smaller). CNNs: 8, because
# the scanned deep probes run in time proportional to the batch (depth 128: ~0.5 s at 8, ~3.5 s
# at 32) and a CNN's BatchNorm still averages over 8 x H x W positions per channel; the
# attenuation agrees with batch 32 within the seed-to-seed spread (measured). MLPs are fast, and
# their BatchNorm averages over the batch alone: the training batch size up to 32.
PROBE_BATCH = {"cnn": 8, "mlp": 32}
# Stacking of the hidden CNN blocks for the probes at init. Compilation dominates a sweep: an
# unrolled CNN compiles super-linearly in depth (residual_bn, depth 128: ~50 s), a scanned one
# in about a second at any depth but runs its conv weight-gradients slowly on XLA:CPU (depth
# 128, batch 32: ~3.5 s per probe). Unrolled up to this depth, scanned above: on the default
# sweep (depths 8..128, 4 archs, 3 seeds) 16 measured ~3 s faster than 32 end to end. The
# attenuation is the same quantity either way; only the random draws of the init differ.
# Training (steps > 0) keeps the run's own choice, stack="auto".
UNROLL_MAX_DEPTH = 16


# -- building and measuring ------------------------------------------------------------------

def probe_stack(model: str, depth: int) -> str:
    """The `stack` the sweep's probes at init use (see UNROLL_MAX_DEPTH).

    Args:
      model: "cnn" or "mlp".
      depth: the network's depth.

    Returns:
      "unrolled" or "scan".

    Example:
      >>> probe_stack("cnn", 16), probe_stack("cnn", 32), probe_stack("mlp", 8)
      ('unrolled', 'scan', 'scan')
    """
    if model != "cnn":
        return "scan"  # as "auto" does for MLPs: fast to compile and to run
    return "unrolled" if depth <= UNROLL_MAX_DEPTH else "scan"


def build(arch: str, cfg: Config, image_shape, num_classes: int, stack: str = "auto"):
    """`side_by_side.build_model`'s network, initialized from cfg.seed.

    A scanned network is initialized by one compiled program per structure, reused for every
    seed: built eagerly, its initializers compile once per new stacked shape, seconds per depth
    (values agree with the eager build to float32 rounding).

    Args:
      arch, cfg, image_shape, num_classes: as for `build_model`.
      stack: "auto" (exactly `build_model`), "unrolled" or "scan".

    Returns:
      The network.
    """
    if stack == "auto":
        return build_model(arch, cfg, image_shape, num_classes)
    import jax
    from flax import nnx
    if stack != "scan":
        return build_model(arch, cfg, image_shape, num_classes, stack=stack, rngs=nnx.Rngs(cfg.seed))
    key = (arch, dataclasses.replace(cfg, seed=0, extra={}).__repr__(), tuple(image_shape),
           num_classes)
    if key not in _INIT:
        def init(rng):
            return nnx.state(build_model(arch, cfg, image_shape, num_classes, stack=stack,
                                         rngs=nnx.Rngs(rng)))
        rng = jax.random.key(0)
        graphdef = nnx.graphdef(nnx.eval_shape(
            lambda: build_model(arch, cfg, image_shape, num_classes, stack=stack,
                                         rngs=nnx.Rngs(rng))))
        # Runs once per seed: compile for speed, not for run time.
        compiled = jax.jit(init).lower(rng).compile(
            compiler_options={"xla_backend_optimization_level": 0})
        _INIT[key] = graphdef, compiled
    graphdef, compiled = _INIT[key]
    return nnx.merge(graphdef, compiled(jax.random.key(cfg.seed)))


_INIT: dict = {}


def first_batch(ds, batch_size: int, seed: int):
    """The first batch training with `seed` would see (`data.batches`).

    Args:
      ds: the Dataset.
      batch_size: examples in the batch.
      seed: the seed of the batch order.

    Returns:
      (x, y).
    """
    return next(data.batches(ds.x_train, ds.y_train, batch_size, seed))


def attenuation(model, batch, devices=None) -> dict:
    """error_norm[0] / error_norm[-1] of `model` on one batch at its current parameters.

    Args:
      model: an NNX model.
      batch: (x, y), the whole batch in every process.
      devices: `gf.probe`'s devices.

    Returns:
      {"attenuation" (None unless a finite positive number), "error_first", "error_last",
      "layers", "initial_loss"}.
    """
    from .. import distributed
    from ..probe import probe

    mesh = distributed.resolve(devices)
    if mesh is not None:
        batch = distributed.process_share(batch, mesh)
    snap = probe(model, batch, mesh=mesh)
    e = np.asarray(snap["error_norm"], dtype=np.float64)
    return {"attenuation": _ratio(e[0], e[-1]), "error_first": float(e[0]),
            "error_last": float(e[-1]), "layers": len(e), "initial_loss": float(snap["loss"])}


def _ratio(a, b) -> float | None:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = float(a / b)
    return r if math.isfinite(r) and r > 0 else None


# -- the sweep -------------------------------------------------------------------------------

def probe_batch_size(cfg: Config) -> int:
    """The probe batch at init for cfg's model.

    Args:
      cfg: the settings.

    Returns:
      min(cfg.batch_size, PROBE_BATCH[cfg.model]).
    """
    return min(cfg.batch_size, PROBE_BATCH[cfg.model])


def depth_sweep(cfg: Config, depths, *, seeds=None, steps: int | None = None, ds=None,
                progress=None, probe_batch: int | None = None, on_step=None) -> Sweep:
    """Measures every arch of `cfg` at every depth, for each seed.

    Args:
      cfg: the settings (archs, model, width, init, ...); its depth is not used.
      depths: the depths, sorted and deduplicated here.
      seeds: the initialization seeds; default SEED_COUNT seeds from cfg.seed.
      steps: 0 probes one batch at init; more trains each cell like `gradflow.run` and records
        its final training loss; default cfg.steps.
      ds: the data; default `data.load(cfg.dataset, cfg.data_dir, seed=cfg.seed)`.
      progress: `progress(done, total, cell)`, called after each cell.
      probe_batch: with steps == 0, examples in the probe batch; default
        `probe_batch_size(cfg)`.
      on_step: with training, `on_step(step, steps, arch, depth, seed)` after each step.

    Returns:
      A Sweep; a cell that fails records its error and the sweep goes on.

    Raises:
      ValueError: if no depth or seed is given, `steps` < 0, or a depth is impossible for an
        arch.

    Example:
      >>> cfg = Config(archs=("plain", "residual_bn"))
      >>> res = depth_sweep(cfg, [8, 16, 32, 64], steps=0)  # doctest: +SKIP
      >>> res.depths, len(res.cells)  # 2 archs x 4 depths x 3 seeds  # doctest: +SKIP
      ((8, 16, 32, 64), 24)
    """
    t0 = time.perf_counter()
    depths = sorted({int(d) for d in depths})
    seeds = tuple(range(cfg.seed, cfg.seed + SEED_COUNT)) if seeds is None else tuple(seeds)
    steps = cfg.steps if steps is None else int(steps)
    if not depths or not seeds:
        raise ValueError("depth_sweep needs at least one depth and one seed")
    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    for arch in cfg.archs:
        for d in depths:
            models.hidden_blocks(base_arch(arch), d)  # ValueError: depth impossible for arch
    if ds is None:
        ds = data.load(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    batch = probe_batch_size(cfg) if probe_batch is None else int(probe_batch)
    config = {k: v for k, v in vars(cfg).items() if k not in ("extra", "depth", "seed")}
    config.update(archs=",".join(cfg.archs), seed=cfg.seed, dataset=ds.name,
                  image_shape=list(ds.image_shape))
    if steps == 0:
        config.update(probe_stack={d: probe_stack(cfg.model, d) for d in depths})
        config.pop("steps", None)
        config.pop("log_every", None)
    res = Sweep(config=config, archs=tuple(cfg.archs), depths=tuple(depths), seeds=seeds,
                steps=steps, probe_batch=batch if steps == 0 else None,
                num_classes=ds.num_classes)
    for arch in cfg.archs:
        res.theory[arch] = [theory_attenuation(arch, d, model=cfg.model, init=cfg.init,
                                               activation=cfg.activation,
                                               image_shape=ds.image_shape) for d in depths]
    total = len(cfg.archs) * len(depths) * len(seeds)
    for arch in cfg.archs:
        for d in depths:
            for s in seeds:
                cell = _cell(arch, dataclasses.replace(cfg, depth=d, seed=s, steps=max(steps, 1)),
                             ds, steps, batch, on_step)
                res.cells.append(cell)
                if progress is not None:
                    progress(len(res.cells), total, cell)
    res.elapsed_s = time.perf_counter() - t0
    return res


def _cell(arch: str, cfg: Config, ds, steps: int, batch: int, on_step=None) -> Cell:
    t0 = time.perf_counter()
    cell = Cell(arch, cfg.depth, cfg.seed)
    try:
        if steps == 0:
            model = build(arch, cfg, ds.image_shape, ds.num_classes,
                          probe_stack(cfg.model, cfg.depth))
            m = attenuation(model, first_batch(ds, batch, cfg.seed), cfg.devices)
        else:
            r = train_arch(arch, cfg, ds, None if on_step is None else (
                lambda step: on_step(step, steps, arch, cfg.depth, cfg.seed)))
            h = r.history
            e = np.asarray(h["error_norm"], dtype=np.float64)
            m = {"layers": int(e.shape[1]), "error_first": float(e[0, 0]),
                 "error_last": float(e[0, -1]), "initial_loss": float(h["loss"][0]),
                 "attenuation": _ratio(e[0, 0], e[0, -1])}
            if r.diverged_at is None:
                cell.attenuation_end = _ratio(e[-1, 0], e[-1, -1])
                cell.final_train_loss = final_train(h)[0]
                cell.held_out_accuracy = r.held_out_accuracy
            else:
                cell.status, cell.note = "diverged", f"loss non-finite at step {r.diverged_at}"
        for k, v in m.items():
            setattr(cell, k, v)
        if cell.attenuation is None and cell.status == "ok":
            cell.status = "underflow"
            cell.note = "error signal at layer 1 below float32 range"
    except Exception as e:  # one cell failing (e.g. out of memory) must not lose the others
        cell.status, cell.note = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
    cell.time_s = round(time.perf_counter() - t0, 3)
    return cell
