"""`WandbLogger`: a History's (or Snapshot's) records in a Weights & Biases run.

Install with `pip install 'gradflow-diagnostics[wandb]'`. Without a W&B account, or with
`WANDB_MODE=offline`, the run is written to disk only (`wandb/offline-run-*` under `dir`) and
can be uploaded later with `wandb sync`.
"""
from __future__ import annotations

from ._base import HEATMAPS, LOG10_EDGES, Logger, require


class WandbLogger(Logger):
    """Logs gradflow's measurements to a Weights & Biases run.

    The keys are those of `TensorBoardWriter`: `<metric>/<layer>` per layer (W&B groups them in
    one panel section per metric), the whole-network scalars under their names, the gradient
    histograms `<histogram>/<layer>` as `wandb.Histogram` on a log10 |g| axis, and at `close`
    the heatmaps `heatmap/<metric>` as `wandb.Image`. Each record is one `run.log` call at its
    training step (W&B's `step`).

    Args:
      run: a run from `wandb.init`; default a new one, made with `wandb_init_kwargs` and
        finished by `close` (a run given here is left open).
      heatmaps: the per-layer metrics drawn as heatmaps; default grad_norm and error_norm.
      **wandb_init_kwargs: arguments of `wandb.init` (project, name, dir, mode, config, ...).

    Raises:
      ImportError: (one line) if wandb is not installed.

    Example:
      >>> with gf.integrations.WandbLogger(project="gradflow", mode="offline") as wb:  # doctest: +SKIP
      ...     hist = gf.train(model, batches, steps=500, optimizer=tx, log_every=10,
      ...                     loggers=(wb,))
    """

    def __init__(self, run=None, *, heatmaps=HEATMAPS, **wandb_init_kwargs):
        self._wandb = require("wandb", "WandbLogger", "wandb")
        super().__init__(heatmaps)
        self._owned = run is None
        self.run = self._wandb.init(**wandb_init_kwargs) if run is None else run

    def _log(self, step, scalars, histograms):
        data = dict(scalars)
        data |= {tag: self._wandb.Histogram(np_histogram=(counts, LOG10_EDGES))
                 for tag, counts in histograms.items()}
        self.run.log(data, step=step)

    def _image(self, tag, rgb, step):
        self.run.log({tag: self._wandb.Image(rgb, caption=tag)}, step=step)

    def _finish(self):
        if self._owned:
            self.run.finish()
