"""`gf.flops.costs`: parameters and multiply-adds of every conv and dense layer of a model.

Convention: a layer's cost is its multiply-accumulate count (MACs) per example, the products
of its kernel with its input: kernel.size x output positions, i.e.
  standard k x k conv:  k^2 * C_in * C_out * H_out * W_out
  depthwise k x k conv: k^2 * C_in * H_out * W_out   (feature_group_count = C_in, one filter each)
  pointwise 1 x 1 conv: C_in * C_out * H_out * W_out
  dense:                n_in * n_out
Bias additions, normalization, activations and pooling are not counted (they cost O(outputs), a
few percent of a conv's O(k^2 C) per output). FLOPs, when quoted, are 2 x MACs.
Parameters per layer are Keras' (kernel + bias); the model total counts every nnx.Param.
"""
from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from ..instrument.recorder import path_name
from ..instrument.intercept import swap_call

_LOG: contextvars.ContextVar[list | None] = contextvars.ContextVar("gradflow_flops",
                                                                  default=None)


@dataclass(frozen=True)
class LayerCost:
    """One call of a conv or dense layer (a layer called twice gives two rows, `name#2`).

    Attributes:
      name: the layer's path in the model, e.g. "blocks/0/unit1/layer".
      kind: "conv 3x3", "depthwise 3x3", "grouped 3x3", "conv 1x1", "dense", ...
      kernel_shape: the kernel's shape.
      input_shape: the input's shape, without the batch axis.
      output_shape: the output's shape, without the batch axis.
      params: kernel and bias elements.
      macs: multiply-accumulates per example (kernel size x output positions).
    """
    name: str
    kind: str  # "conv 3x3", "depthwise 3x3", "conv 1x1", "grouped 3x3", "dense"
    kernel_shape: tuple
    input_shape: tuple  # without the batch axis
    output_shape: tuple
    params: int  # kernel + bias
    macs: int  # multiply-adds per example


class Costs:
    """Per-layer costs in call order, their totals, and the model's parameter count.

    `str()` renders a table with totals.

    Attributes:
      layers: LayerCosts in call order.
      model_params: every `nnx.Param` element of the model (normalization included).
    """

    def __init__(self, layers: list[LayerCost], model_params: int):
        self.layers, self.model_params = layers, model_params

    @property
    def macs(self) -> int:
        """Multiply-accumulates per example, summed over the layers."""
        return sum(r.macs for r in self.layers)

    @property
    def layer_params(self) -> int:
        """Parameters of the conv and dense layers (kernels and biases)."""
        return sum(r.params for r in self.layers)

    def by_kind(self) -> dict[str, tuple[int, int]]:
        """Totals per kind of layer.

        Returns:
          `{kind: (params, macs)}`, summed over the layers of that kind.
        """
        out: dict[str, tuple[int, int]] = {}
        for r in self.layers:
            p, m = out.get(r.kind, (0, 0))
            out[r.kind] = (p + r.params, m + r.macs)
        return out

    def to_dict(self) -> dict:
        """The costs as plain Python data, for JSON.

        Returns:
          `{"model_params", "layer_params", "macs", "layers"}`, `layers` a list of one dict per
          LayerCost (shapes as lists).
        """
        return {"model_params": self.model_params, "layer_params": self.layer_params,
                "macs": self.macs, "layers": [
                    {"name": r.name, "kind": r.kind, "kernel_shape": list(r.kernel_shape),
                     "input_shape": list(r.input_shape), "output_shape": list(r.output_shape),
                     "params": r.params, "macs": r.macs} for r in self.layers]}

    def __str__(self) -> str:
        head = ("layer", "kind", "output", "params", "MACs")
        rows = [(r.name, r.kind, "x".join(map(str, r.output_shape)), f"{r.params:,}",
                 f"{r.macs:,}") for r in self.layers]
        w = [max(len(x[i]) for x in rows + [head]) for i in range(5)]
        fmt = lambda x: "  ".join([x[0].ljust(w[0]), x[1].ljust(w[1]), x[2].ljust(w[2]),
                                   x[3].rjust(w[3]), x[4].rjust(w[4])])
        line = "-" * len(fmt(head))
        other = self.model_params - self.layer_params
        return "\n".join([line, fmt(head), line, *map(fmt, rows), line,
                          f"conv/dense layers: {self.layer_params:,} parameters, {self.macs:,} "
                          f"MACs per example ({2 * self.macs / 1e6:.2f} MFLOPs)",
                          f"model: {self.model_params:,} parameters"
                          + (f" ({other:,} in normalization and other layers)" if other else ""),
                          line])

    def __repr__(self):
        return str(self)


def costs(model: nnx.Module, input_shape, *, dtype=jnp.float32) -> Costs:
    """Parameters and multiply-accumulates per example of every nnx.Conv / nnx.Linear call.

    The model is traced abstractly on a copy: nothing is computed, and an abstract model from
    `nnx.eval_shape(lambda: Model(...))` works as well as a real one.

    Args:
      model: a `flax.nnx.Module`.
      input_shape: the shape of one input, without the batch axis.
      dtype: the input's dtype; default float32.

    Returns:
      A Costs; print it for the table.

    Raises:
      ValueError: if `model` is not a `flax.nnx.Module`, or calls layers inside a scan or vmap
        (a scanned stack: build it unrolled).

    Example:
      >>> model = nnx.eval_shape(lambda: gf.models.seed_resnet(rngs=nnx.Rngs(0)))
      >>> c = gf.flops.costs(model, (32, 32, 3))
      >>> c.model_params, len(c.layers), c.macs
      (297697, 10, 39313536)
      >>> print(c)  # doctest: +SKIP
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    graphdef, state = nnx.split(model)
    calls: list = []
    names: dict[int, str] = {}

    def run(state, x):
        copy = nnx.merge(graphdef, state, copy=True)
        for path, m in nnx.iter_modules(copy):
            if isinstance(m, (nnx.Conv, nnx.Linear)):
                names[id(m)] = path_name(path)
                swap_call(m, "costed", _hook)
        return copy(x)

    token = _LOG.set(calls)
    try:
        jax.eval_shape(run, state, jax.ShapeDtypeStruct((1, *input_shape), dtype))
    finally:
        _LOG.reset(token)
    seen: dict[str, int] = {}
    layers = []
    if any(c[0] not in names for c in calls):
        # a layer called inside a transform (lax.scan, nnx.scan, nnx.vmap) is a re-created copy,
        # traced once for all its iterations: it cannot be counted per call
        raise ValueError("costs counts layers called directly; this model runs some inside a "
                         "scan or vmap (build it unrolled, e.g. gf.models.mlp(..., "
                         "stack='unrolled'))")
    for module_id, kind, kernel, bias, x_shape, y_shape in calls:
        name = names[module_id]
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        positions = math.prod(y_shape[:-1])  # output positions per example (1 for dense)
        layers.append(LayerCost(name, kind, kernel, x_shape, y_shape,
                                math.prod(kernel) + bias, math.prod(kernel) * positions))
    total = sum(v.get_value().size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    return Costs(layers, int(total))


def _hook(self, original, x, *args, **kwargs):
    y = original(self, x, *args, **kwargs)
    log = _LOG.get()
    if log is not None:
        kernel = tuple(self.kernel.get_value().shape)
        bias = self.bias.get_value().size if self.bias is not None else 0
        log.append((id(self), _kind(self, kernel), kernel, int(bias), tuple(x.shape[1:]),
                    tuple(y.shape[1:])))
    return y


def _kind(layer, kernel: tuple) -> str:
    if isinstance(layer, nnx.Linear):
        return "dense"
    window = "x".join(map(str, kernel[:-2]))
    groups = getattr(layer, "feature_group_count", 1)
    if groups > 1:
        return f"{'depthwise' if groups == layer.in_features else 'grouped'} {window}"
    return f"conv {window}"
