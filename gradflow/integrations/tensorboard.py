"""`TensorBoardWriter`: a History's (or Snapshot's) records as TensorBoard event files.

The writer is tensorboardX: it is maintained, writes the same event files as TensorFlow's
summary API, and needs neither TensorFlow nor PyTorch (the `tensorboard` package is only needed
to view the files, or read them back). Install both with
`pip install 'gradflow-diagnostics[tensorboard]'`, then `tensorboard --logdir DIR`.
"""
from __future__ import annotations

from pathlib import Path

from ._base import HEATMAPS, Logger, histogram_stats, require


class TensorBoardWriter(Logger):
    """Writes gradflow's measurements into a TensorBoard log directory.

    Every record becomes, at its training step: one scalar per layer and per-layer metric,
    tagged `<metric>/<layer>` (e.g. `grad_norm/stem/layer`, in the Scalars tab grouped by
    metric), the whole-network scalars under their names (`loss`, `accuracy`, `mean_gsnr`,
    `hess_max_ev`, ...), and the gradient histograms a History holds (`grad_hist`,
    `example_grad_hist`) as `<histogram>/<layer>` in the Histograms tab, on a log10 |g| axis
    (records that did not measure them are skipped). NaN values (not measured at that step) are
    not written. The heatmaps (`heatmap/grad_norm`, `heatmap/error_norm`: layers × steps, as
    `gf.plot.heatmap` draws them) are rendered at `close`, or when `write_heatmaps` is called,
    not at every `write`: one costs about a second.

    Args:
      logdir: the log directory (created if needed); one per run or architecture.
      heatmaps: the per-layer metrics drawn as heatmaps; default grad_norm and error_norm.
      **writer_kwargs: further arguments of `tensorboardX.SummaryWriter` (e.g. `flush_secs`).

    Raises:
      ImportError: (one line) if tensorboardX is not installed.

    Example:
      >>> with gf.integrations.TensorBoardWriter("tb/run1") as tb:  # doctest: +SKIP
      ...     hist = gf.train(model, batches, steps=500, optimizer=tx, log_every=10,
      ...                     loggers=(tb,))
      >>> tb = gf.integrations.TensorBoardWriter("tb/run2")  # doctest: +SKIP
      >>> tb.write(history)  # a growing History: only new records are written  # doctest: +SKIP
      >>> tb.close()  # doctest: +SKIP
    """

    def __init__(self, logdir, *, heatmaps=HEATMAPS, **writer_kwargs):
        tbx = require("tensorboardX", "TensorBoardWriter", "tensorboard")
        super().__init__(heatmaps)
        self.logdir = Path(logdir)
        self.writer = tbx.SummaryWriter(str(self.logdir), **writer_kwargs)

    def write(self, source, step: int | None = None) -> int:
        """Writes the records of `source` not written yet (see `Logger.write`) and flushes them
        to the event file, so TensorBoard shows them at its next reload.

        Args:
          source: a History (only its records after the last step written) or a Snapshot.
          step: a Snapshot's training step (default its `meta["step"]`, else the next step).

        Returns:
          The number of records written.
        """
        n = super().write(source, step)
        if n:
            self.writer.flush()
        return n

    def _log(self, step, scalars, histograms):
        for tag, v in scalars.items():
            self.writer.add_scalar(tag, v, step)
        for tag, counts in histograms.items():
            self.writer.add_histogram_raw(tag, global_step=step, **histogram_stats(counts))

    def _image(self, tag, rgb, step):
        self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def flush(self) -> None:
        """Writes what is queued to the event file now."""
        self.writer.flush()

    def _finish(self):
        self.writer.close()
