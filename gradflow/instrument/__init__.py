"""Per-layer instrumentation: probes, the Recorder, and the measurement functions."""
from .measure import (LAYER_METRICS, TRAIN_METRICS, Layout, apply, discover, flat_arrays, row_norms, value_grads_and_stats)
from .probes import WEIGHT_LAYERS, install_probes, run_probed, use_batch_statistics
from .recorder import Recorder, Row
from .tap import activation_stats, error_tap

__all__ = ["LAYER_METRICS", "TRAIN_METRICS", "Layout", "apply", "discover", "flat_arrays",
           "row_norms", "value_grads_and_stats", "WEIGHT_LAYERS", "install_probes", "run_probed",
           "use_batch_statistics",
           "Recorder", "Row", "activation_stats", "error_tap"]
