"""The traced measurement core: error tap, recorder, probes, measurements and compiled steps.

It knows nothing of gradflow's model zoo. Weight layers (`WEIGHT_LAYERS`: nnx.Linear,
nnx.LinearGeneral, nnx.Einsum, nnx.Conv, nnx.ConvTranspose, nnx.Embed) are measured wherever
they are; activation modules and scanned stacks plug in through `register_activation` and
`register_scanned_stack`, as the zoo's own do::

    import jax
    from flax import nnx
    import gradflow as gf

    @gf.instrument.register_activation
    class Swish(nnx.Module):
      def __call__(self, x):
        return x * jax.nn.sigmoid(x)

The per-layer metrics are `LAYER_METRICS` (probe) and `TRAIN_METRICS` (training records);
`error_tap` and `activation_stats` are the two traced primitives they are built from.
Everything else lives in the submodules (`measure`, `steps`, `registry`, `probes`, `recorder`,
`tap`, `intercept`) and is internal.
"""
from .measure import LAYER_METRICS, TRAIN_METRICS
from .registry import WEIGHT_LAYERS, register_activation, register_scanned_stack
from .tap import activation_stats, error_tap

__all__ = ["register_activation", "register_scanned_stack", "WEIGHT_LAYERS", "LAYER_METRICS",
           "TRAIN_METRICS", "error_tap", "activation_stats"]
