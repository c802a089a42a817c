"""The side-by-side experiment behind `python -m gradflow.run`, usable from Python.

    cfg = Config(depth=50, archs=("plain", "residual_bn"))
    ds = data.synthetic(cfg.seed)
    results = [train_arch(arch, cfg, ds) for arch in cfg.archs]
    summary = verdict.summarize(results, cfg, ds)      # summary.json's content

Every architecture is built at the same width, init and seed and trained on the same batches in
the same order; what differs between them is the architecture alone.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field

import jax
import numpy as np
import optax
from flax import nnx

from .. import data, distributed, models
from .._io import json_ready
from ..analysis import divergence
from ..history import History
from ..models.options import ARCHS, SEPARABLE, base_arch
from ..train import train
from .evaluation import evaluate

OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.05, "momentum": 0.01, "adam": 1e-3}
MODELS = ("cnn", "mlp")
BN_CALIBRATION = 1024  # training images used to re-estimate BatchNorm statistics for evaluation
FINAL_WINDOW = 0.1  # final train loss/accuracy: mean over the records in the last 10% of steps


@dataclass
class Config:
    """The settings of a side-by-side run (`python -m gradflow.run`'s options).

    Attributes:
      depth: weight layers on the longest path (stem, hidden layers, head).
      width: channels (cnn) or units (mlp) of every hidden layer.
      archs: the architectures, names in `gradflow.models.ARCH_CHOICES`.
      model: "cnn" or "mlp".
      steps, batch_size, log_every: training steps, examples per step, record every N steps.
      lr: the learning rate; None takes the optimizer's default from DEFAULT_LR.
      optimizer: "sgd", "momentum" or "adam" (`make_optimizer`).
      init, activation: kernel initializer and activation names (`gradflow.models`).
      dataset, data_dir: the data, as `gradflow.data.load` takes them.
      seed: the seed of the data, the initialization and the batch order.
      devices: data-parallel devices (None: every visible one), as in `gf.train`.
      train_options: further keyword arguments of `gf.train` for every architecture, e.g.
        {"noise_every": 10} (`python -m gradflow.run --noise`); recorded in summary.json.
      extra: free-form settings, left out of summary.json and sweep.json.

    Example:
      >>> cfg = Config(depth=20, archs=("plain", "residual_bn"), optimizer="adam")
      >>> cfg.lr, cfg.steps, cfg.model
      (0.001, 150, 'cnn')
    """
    depth: int = 50
    width: int = 16
    archs: tuple = ARCHS
    model: str = "cnn"
    steps: int = 150
    batch_size: int = 32
    lr: float | None = None
    optimizer: str = "momentum"
    init: str = "lecun"
    activation: str = "relu"
    dataset: str = "synthetic"
    data_dir: str | None = None
    seed: int = 0
    log_every: int = 5
    devices: int | None = None
    train_options: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.archs = tuple(self.archs)
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]


@functools.lru_cache(maxsize=64)
def make_optimizer(name: str, lr: float):
    """sgd, sgd with momentum 0.9 (the default), or adam, as an optax transformation.

    The same object for the same (name, lr): the compiled train steps are cached per optimizer,
    so runs in one process (a resumed run, the tests) reuse their compilation.

    Args:
      name: "sgd", "momentum" or "adam".
      lr: the learning rate.

    Returns:
      An `optax.GradientTransformation`.

    Raises:
      ValueError: if `name` is not one of OPTIMIZERS.

    Example:
      >>> make_optimizer("momentum", 0.01) is make_optimizer("momentum", 0.01)
      True
    """
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    if name == "adam":
        return optax.adam(lr)
    raise ValueError(f"optimizer={name!r} is not one of {', '.join(map(repr, OPTIMIZERS))}")


def build_model(arch: str, cfg: Config, image_shape, num_classes: int, *, stack: str = "auto",
                rngs: nnx.Rngs | None = None):
    """The network for `arch` under `cfg`, as every run and sweep builds it.

    Args:
      arch: a name in `gradflow.models.ARCH_CHOICES`; a `_separable` suffix makes the hidden
        convs depthwise-separable.
      cfg: the settings (model, depth, width, init, activation, seed).
      image_shape: one example's shape, e.g. (16, 16, 3).
      num_classes: the number of outputs.
      stack: how the hidden blocks run: "auto", "unrolled" or "scan" (`gradflow.models.cnn`).
      rngs: the `nnx.Rngs` to initialize from; default `nnx.Rngs(cfg.seed)`.

    Returns:
      A `gradflow.models.Network` returning logits.

    Example:
      >>> cfg = Config(depth=6, width=8)
      >>> nets = {a: nnx.eval_shape(lambda: build_model(a, cfg, (16, 16, 3), 10))
      ...         for a in ("plain", "plain_separable")}  # shapes only: fast
      >>> {a: count_params(m) for a, m in nets.items()}
      {'plain': 2650, 'plain_separable': 890}
    """
    common = dict(width=cfg.width, num_classes=num_classes, init=cfg.init,
                  activation=cfg.activation, stack=stack,
                  rngs=nnx.Rngs(cfg.seed) if rngs is None else rngs)
    if cfg.model == "mlp":
        return models.mlp(base_arch(arch), cfg.depth, in_features=math.prod(image_shape), **common)
    return models.cnn(base_arch(arch), cfg.depth, in_channels=image_shape[-1],
                      conv="separable" if arch.endswith(SEPARABLE) else "standard", **common)


def count_params(model) -> int:
    """The number of trainable parameters (`nnx.Param` entries) of `model`.

    Args:
      model: an NNX model (or its `nnx.eval_shape` abstract version).

    Returns:
      The count.
    """
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


@dataclass
class ArchResult:
    """One architecture's outcome in a side-by-side run.

    Attributes:
      arch: the architecture's name.
      params: trainable parameters (None if it failed before it was built).
      history: its History; for a diverged arch the records before the first non-finite one.
      diverged_at: the step by which loss or gradients became non-finite, else None.
      nonfinite_layer: the first layer back-propagation reached with a non-finite value.
      nonfinite_forward_layer: the first layer whose activations were non-finite.
      interrupted_at: steps done when a stop request ended its training, else None.
      held_out_loss, held_out_accuracy: on the held-out split (None unless it finished).
      train_s, time_s: seconds for training, and for everything including evaluation.
      error: why it failed (an exception's first line); None otherwise.
    """
    arch: str
    params: int | None = None
    history: History | None = None
    diverged_at: int | None = None
    nonfinite_layer: str | None = None
    nonfinite_forward_layer: str | None = None
    interrupted_at: int | None = None
    held_out_loss: float | None = None
    held_out_accuracy: float | None = None
    train_s: float = 0.0
    time_s: float = 0.0
    error: str | None = None

    @property
    def status(self) -> str:
        """"failed", "interrupted", "diverged" or "ok"."""
        if self.history is None:
            return "failed"
        if self.interrupted_at is not None:
            return "interrupted"
        return "diverged" if self.diverged_at is not None else "ok"

    def to_json(self) -> dict:
        """The numbers as run.json stores them.

        Returns:
          Every field but the History, JSON-ready.
        """
        return json_ready({k: v for k, v in dataclasses.asdict(self).items() if k != "history"})

    @classmethod
    def from_json(cls, numbers: dict, history: History | None) -> "ArchResult":
        """The inverse of `to_json`.

        Args:
          numbers: a `to_json` dict (unknown keys are ignored).
          history: the History saved beside it, or None (a failed architecture).

        Returns:
          The ArchResult.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in numbers.items() if k in names}, history=history)


def train_arch(arch: str, cfg: Config, ds, progress=None, *, saver=None,
               stop=None) -> ArchResult:
    """Builds, trains and evaluates one architecture.

    Args:
      arch: one of `gradflow.models.ARCH_CHOICES`.
      cfg: the run's settings.
      ds: the Dataset (`gradflow.data`).
      progress: `gf.train`'s progress callback.
      saver: a `checkpoint.ArchSaver`: flushes and checkpoints the training, and resumes it
        from its checkpoint.
      stop: `gf.train`'s stop hook; a stop sets `interrupted_at` and skips the evaluation.

    Returns:
      An ArchResult. A non-finite loss, gradient or parameter marks it diverged, its History
      kept up to the last finite record (`divergence.cut`).

    Example:
      >>> cfg = Config(depth=20, archs=("plain", "residual_bn"), steps=100)
      >>> ds = gf.data.synthetic(cfg.seed)  # doctest: +SKIP
      >>> res = train_arch("residual_bn", cfg, ds)  # doctest: +SKIP
      >>> res.history["error_norm"].shape  # 21 records x 20 layers  # doctest: +SKIP
      (21, 20)
    """
    t0 = time.perf_counter()
    model = build_model(arch, cfg, ds.image_shape, ds.num_classes)
    res = ArchResult(arch, params=count_params(model))
    mesh = distributed.resolve(cfg.devices)
    batches = data.batches(ds.x_train, ds.y_train, cfg.batch_size, cfg.seed)
    if mesh is not None:  # several processes: each feeds its own rows of every batch
        batches = distributed.process_shares(batches, mesh)
    meta = dict(arch=arch, depth=cfg.depth, width=cfg.width, model=cfg.model, init=cfg.init,
                activation=cfg.activation, optimizer=cfg.optimizer, lr=cfg.lr,
                batch_size=cfg.batch_size, seed=cfg.seed, dataset=ds.name,
                devices=1 if mesh is None else mesh.size)
    hooks = saver.hooks(meta) if saver is not None else {}
    hist = train(model, batches, steps=cfg.steps, optimizer=make_optimizer(cfg.optimizer, cfg.lr),
                 log_every=cfg.log_every, progress=progress, mesh=mesh, stop=stop, **hooks,
                 **cfg.train_options)
    res.train_s = time.perf_counter() - t0
    hist.meta.update(meta)
    if hist.meta.get("stopped_at_step") is not None:
        res.interrupted_at = hist.meta["stopped_at_step"]
    else:
        hist, where = divergence.cut(hist)
        if where is not None:
            res.diverged_at = where.step
            res.nonfinite_layer, res.nonfinite_forward_layer = where.backward_layer, where.forward_layer
        elif not all(bool(np.isfinite(np.asarray(p)).all())
                     for p in jax.tree.leaves(nnx.state(model, nnx.Param))):
            res.diverged_at = cfg.steps  # finite records, non-finite weights after the last one
            hist.meta["diverged_at_step"] = cfg.steps
        else:
            loss, acc = evaluate(model, ds.x_test, ds.y_test, ds.x_train[:BN_CALIBRATION],
                                 mesh=mesh)
            res.held_out_loss = loss if math.isfinite(loss) else None
            res.held_out_accuracy = acc
    res.history = hist
    res.time_s = time.perf_counter() - t0
    return res
