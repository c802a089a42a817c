"""What the experiments share: progress on stderr, class subsets of a dataset, training a given
model with every layer recorded, and inference-mode evaluation."""
from __future__ import annotations

import functools
import time

import numpy as np

from .. import data
from ..analysis import divergence
from ..analysis.diagnose import diagnose
from ..report.progress import Lines, Progress
from ..report.text import fmt
from ..train import train
from .evaluation import binary_evaluate, evaluate
from .side_by_side import ArchResult, count_params, make_optimizer
from .verdict import error_ratio, final_train

EVAL_CHUNK = 512  # examples per inference call in the experiments


@functools.lru_cache(maxsize=None)
def shared_optimizer(name: str, lr: float):
    """One optax transformation per (name, lr), shared by every run of the experiments.

    The compiled train steps are cached per optimizer object, so runs of the same structure
    share one compilation.

    Args:
      name: "sgd", "momentum" or "adam" (`side_by_side.make_optimizer`).
      lr: the learning rate.

    Returns:
      The optax transformation, the same object for the same (name, lr).
    """
    return make_optimizer(name, lr)


class Log(Lines):
    """Progress lines on stderr (`line(text)`; nothing when disabled)."""

    def progress(self, names, steps: int) -> Progress:
        """Progress of several jobs run one after the other, on this stream.

        Args:
          names: one name per job, in order.
          steps: the training steps of each.

        Returns:
          A `report.progress.Progress` (`start(i)`, `step`, `finish(note)`).
        """
        return Progress(names, steps, enabled=self.enabled, stream=self.stream)


def subset(x, y, classes, *, relabel: bool = True, limit: int | None = None, seed: int = 0):
    """The examples of some classes, in a random order.

    Args:
      x, y: examples and integer labels.
      classes: the labels to keep.
      relabel: renumber the labels 0, 1, ... in the order of `classes`.
      limit: keep at most this many (drawn at random); None keeps all.
      seed: the seed of the order and the draw.

    Returns:
      (x, y) of the kept examples, labels as int32.

    Example:
      >>> xs, ys = subset(np.arange(6), np.array([0, 1, 2, 0, 1, 2]), (2, 0))
      >>> sorted(zip(xs.tolist(), ys.tolist()))
      [(0, 1), (2, 0), (3, 1), (5, 0)]
    """
    keep = np.flatnonzero(np.isin(y, classes))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B5]))
    keep = rng.permutation(keep)[:limit]
    ys = y[keep]
    if relabel:
        index = {int(c): i for i, c in enumerate(classes)}
        ys = np.asarray([index[int(v)] for v in ys])
    return x[keep], ys.astype(np.int32)


def fit(model, name: str, x, y, *, steps: int, batch_size: int, optimizer: str, lr: float,
        log_every: int, seed: int, loss=None, progress=None,
        train_options: dict | None = None) -> ArchResult:
    """Trains `model` in place on (x, y) with `gf.train` (batches drawn from `seed`).

    Args:
      model: an NNX model.
      name: the result's name.
      x, y: the training examples and labels.
      steps, batch_size, log_every: as for `gf.train`.
      optimizer, lr: as for `shared_optimizer`.
      seed: the seed of the batch order.
      loss: `gf.train`'s loss (None: cross-entropy).
      progress: `gf.train`'s progress callback.
      train_options: further keyword arguments of `gf.train`, e.g. {"noise_every": 10}.

    Returns:
      An ArchResult named `name` (not evaluated: the experiment evaluates as it needs). A
      non-finite record marks it diverged, its History kept up to the last finite record
      (`divergence.cut`, as the run does).

    Raises:
      ValueError: if `batch_size` is larger than the training set.
    """
    if batch_size > len(x):
        raise ValueError(f"batch_size={batch_size} is larger than the {len(x)} training examples "
                         f"of {name}")
    t0 = time.perf_counter()
    hist = train(model, data.batches(x, y, batch_size, seed), steps=steps,
                 optimizer=shared_optimizer(optimizer, lr), log_every=log_every, loss=loss,
                 progress=progress, **(train_options or {}))
    hist, where = divergence.cut(hist)
    hist.meta.update(arch=name, steps=steps, batch_size=batch_size, optimizer=optimizer, lr=lr,
                     seed=seed)
    return ArchResult(name, params=count_params(model), history=hist,
                      diverged_at=where.step if where else None,
                      train_s=time.perf_counter() - t0)


def accuracy(model, x, y) -> tuple[float, float]:
    """Cross-entropy and accuracy of a classifier in inference mode, BatchNorm on its running
    statistics (as Keras predicts).

    Args:
      model: an NNX model returning logits (not modified).
      x, y: inputs and integer labels.

    Returns:
      (mean cross-entropy, accuracy), as `evaluation.evaluate` without recalibration.
    """
    return evaluate(model, x, y, chunk=EVAL_CHUNK)


def binary_accuracy(model, x, y) -> tuple[float, float]:
    """Binary cross-entropy and accuracy of a model returning probabilities of shape (n, 1).

    Args:
      model: the NNX model (not modified).
      x, y: inputs and 0/1 labels.

    Returns:
      (mean binary cross-entropy, accuracy), as `evaluation.binary_evaluate`.
    """
    return binary_evaluate(model, x, y, chunk=EVAL_CHUNK)


def numbers(res: ArchResult) -> dict:
    """The numbers an experiment reports for one trained model.

    Args:
      res: a `fit` or `train_arch` result (evaluated or not).

    Returns:
      A JSON-ready dict: name, parameters, layers, final training and held-out loss and
      accuracy, error ratios at init and at the end, divergence step, training time and the
      `gf.diagnose` findings at the end.
    """
    h = res.history
    ok = res.diverged_at is None
    loss, acc = final_train(h) if ok else (None, None)
    return {"name": res.arch, "params": res.params, "layers": len(h.layers),
            "final_train_loss": loss, "final_train_accuracy": acc,
            "held_out_loss": res.held_out_loss, "held_out_accuracy": res.held_out_accuracy,
            "error_ratio_init": error_ratio(h, 0), "error_ratio_end": error_ratio(h, -1) if ok
            else None, "diverged_at": res.diverged_at, "train_s": round(res.train_s, 2),
            "diagnosis_end": [str(f) for f in diagnose(h)]}


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are not None.

    Args:
      values: numbers or None.

    Returns:
      (mean, std); std None for a single value, both None for none.

    Example:
      >>> [round(v, 4) for v in mean_std([0.5, None, 0.7])]
      [0.6, 0.1414]
    """
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def over_seeds(runs: list[dict]) -> dict:
    """One model's `numbers` over several seeds.

    Args:
      runs: `numbers` dicts of the same model, one per seed (each with its "seed").

    Returns:
      {"held_out_accuracy_mean", "held_out_accuracy_std", "held_out_accuracy" (per seed),
      "seeds", "error_ratio_init_median", "diverged"}.
    """
    m, sd = mean_std([r["held_out_accuracy"] for r in runs])
    ratio = [r["error_ratio_init"] for r in runs if r["error_ratio_init"]]
    return {"held_out_accuracy_mean": m, "held_out_accuracy_std": sd,
            "held_out_accuracy": [r["held_out_accuracy"] for r in runs],
            "seeds": [r.get("seed") for r in runs],
            "error_ratio_init_median": float(np.median(ratio)) if ratio else None,
            "diverged": sum(r["diverged_at"] is not None for r in runs)}


def seed_rows(per: dict) -> tuple[tuple, list[tuple]]:
    """The over-seeds table: held-out accuracy mean ± std and per seed, error ratio at init.

    Args:
      per: model name -> `over_seeds` dict.

    Returns:
      (head, rows) of text cells.
    """
    head = ("model", "held-out acc (mean ± std)", "per seed", "err ratio init (median)",
            "diverged")
    rows = [(name, f"{fmt(s['held_out_accuracy_mean'], '.1%')} ± "
             f"{fmt(s['held_out_accuracy_std'], '.1%')}",
             " / ".join(fmt(a, ".1%") for a in s["held_out_accuracy"]),
             fmt(s["error_ratio_init_median"], ".2g"), f"{s['diverged']}/{len(s['seeds'])}")
            for name, s in per.items()]
    return head, rows


def comparison_rows(items: list[dict]) -> tuple[tuple, list[tuple]]:
    """The experiments' comparison table as text cells.

    Args:
      items: `numbers` dicts, one per model.

    Returns:
      (head, rows): model, params, train loss and accuracy, held-out accuracy (or where it
      diverged), error ratio at init and at the end.
    """
    head = ("model", "params", "train loss", "train acc", "held-out acc", "err ratio init",
            "err ratio end")
    rows = [(a["name"], f"{a['params']:,}", fmt(a["final_train_loss"], ".3f"),
             fmt(a["final_train_accuracy"], ".1%"),
             fmt(a["held_out_accuracy"], ".1%") if a["diverged_at"] is None
             else f"diverged at step {a['diverged_at']}",
             fmt(a["error_ratio_init"], ".1e"), fmt(a["error_ratio_end"], ".1e"))
            for a in items]
    return head, rows
