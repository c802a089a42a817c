"""A depth sweep's records: one Cell per (architecture, depth, seed), the Sweep that holds them
with its settings and the theory, summary rows, and sweep.json.

The sweep itself (building and measuring the cells) is `gradflow.experiments.depth_sweep`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import json_ready, write_json


@dataclass
class Cell:
    """One (arch, depth, seed) measurement.

    Attributes:
      arch, depth, seed: the cell.
      attenuation: error_norm[0] / error_norm[-1] at init; None unless finite and positive.
      error_first, error_last: error_norm[0] and error_norm[-1] at init.
      layers, initial_loss: the measured rows and the loss at init.
      attenuation_end, final_train_loss, held_out_accuracy: after training (steps > 0); the
        loss is the mean over the records in the last 10% of the steps.
      status: "ok", "underflow" (no finite positive ratio: the signal is below even the error
        tap's rescaled float32 range), "diverged" (training's loss became non-finite; the
        attenuation at init is still measured) or "failed" (an exception).
      note: what happened, where the status is not "ok".
      time_s: the cell's seconds.
    """
    arch: str
    depth: int
    seed: int
    attenuation: float | None = None
    error_first: float | None = None
    error_last: float | None = None
    layers: int | None = None
    initial_loss: float | None = None
    attenuation_end: float | None = None
    final_train_loss: float | None = None
    held_out_accuracy: float | None = None
    status: str = "ok"
    note: str = ""
    time_s: float = 0.0


@dataclass
class Sweep:
    """A depth sweep's settings, cells and mean-field predictions (`depth_sweep` makes it).

    Attributes:
      config: the settings, as sweep.json stores them.
      archs, depths, seeds: what was swept.
      steps: training steps per cell; 0: measured at init only.
      probe_batch: examples in the probe batch at init (None with training).
      cells: one Cell per arch, depth and seed, in that order.
      theory: arch -> the mean-field attenuation per depth (None where no theory applies).
      num_classes: the data's classes.
      elapsed_s: the sweep's seconds.
      run: how it was run (command, start, device).
    """
    config: dict
    archs: tuple
    depths: tuple
    seeds: tuple
    steps: int
    probe_batch: int | None
    cells: list = field(default_factory=list)
    theory: dict = field(default_factory=dict)  # arch -> [attenuation per depth or None]
    num_classes: int | None = None
    elapsed_s: float = 0.0
    run: dict = field(default_factory=dict)  # how it was run (command, start, device)

    @property
    def definitions(self) -> dict:
        """What each reported quantity means (DEFINITIONS)."""
        return DEFINITIONS

    def values(self, arch: str, depth: int, key: str = "attenuation") -> list[float]:
        """The finite values of one Cell field over the seeds of one (arch, depth).

        Args:
          arch, depth: the cells.
          key: a Cell field.

        Returns:
          The values, None and non-finite ones left out.
        """
        out = [getattr(c, key) for c in self.cells if c.arch == arch and c.depth == depth]
        return [v for v in out if v is not None and math.isfinite(v)]

    def stats(self, arch: str, key: str = "attenuation") -> dict:
        """Statistics of one Cell field over the seeds, per depth.

        Args:
          arch: the architecture.
          key: a Cell field.

        Returns:
          {"median", "min", "max", "n"}: arrays with one entry per depth (NaN where no value).
        """
        out = {k: [] for k in ("median", "min", "max", "n")}
        for d in self.depths:
            v = self.values(arch, d, key)
            out["n"].append(len(v))
            for k, f in (("median", np.median), ("min", np.min), ("max", np.max)):
                out[k].append(float(f(v)) if v else float("nan"))
        return {k: np.asarray(v) for k, v in out.items()}

    def rows(self) -> list[dict]:
        """The summary, one row per (arch, depth).

        Returns:
          Dicts of arch, depth, seeds (finite attenuations), the attenuation's median, min and
          max, and the theory; with training also the median final loss and the diverged count.
        """
        rows = []
        for arch in self.archs:
            for i, d in enumerate(self.depths):
                a = self.values(arch, d)
                row = {"arch": arch, "depth": d, "seeds": len(a),
                       "median": _med(a), "min": min(a, default=None),
                       "max": max(a, default=None), "theory": self.theory.get(arch, [None] * len(
                           self.depths))[i]}
                if self.steps:
                    loss = self.values(arch, d, "final_train_loss")
                    row["final_train_loss_median"] = _med(loss)
                    row["diverged"] = sum(c.status == "diverged" for c in self.cells
                                          if c.arch == arch and c.depth == d)
                rows.append(row)
        return rows

    def to_dict(self) -> dict:
        """sweep.json's content.

        Returns:
          A JSON-ready dict (NaN and infinities as null) with the settings, definitions,
          summary rows, theory and every cell.
        """
        return json_ready({
            "kind": "depth_sweep",
            "config": self.config,
            "archs": list(self.archs), "depths": list(self.depths), "seeds": list(self.seeds),
            "steps": self.steps, "probe_batch": self.probe_batch,
            "num_classes": self.num_classes,
            "definitions": DEFINITIONS,
            "summary": self.rows(),
            "theory": {a: list(v) for a, v in self.theory.items()},
            "cells": [dataclasses.asdict(c) for c in self.cells],
            "elapsed_s": round(self.elapsed_s, 2),
            "run": self.run,
        })

    def save(self, path) -> Path:
        """Writes `to_dict()` as JSON, atomically.

        Args:
          path: the destination (sweep.json).

        Returns:
          The destination as a Path.
        """
        return write_json(path, self.to_dict())


DEFINITIONS = {
    "attenuation": "error_norm (||dL/dz||) of layer 1 (the stem) divided by that of the output "
                   "layer, at init, on one training batch; < 1: the error signal vanishes toward "
                   "the input, > 1: it explodes",
    "theory": "mean-field prediction at init (gradflow.theory, infinite width): "
              "sqrt(error_sq[0] / error_sq[-1]); for CNNs times 1/sqrt(H*W), the global average "
              "pooling before the head spreading the error over H*W positions; null where it "
              "does not apply (gradflow.theory.predicted_profile)",
    "final_train_loss": "mean training loss over the recorded batches in the last 10% of the "
                        "steps",
    "seeds": "seed of the initialization (and, with training, of the batch order); the data are "
             "generated or shuffled from config.seed for every cell",
}


def _med(v):
    return float(np.median(v)) if len(v) else None
