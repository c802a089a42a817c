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

A stack registered with `gf.instrument.register_scanned_stack` (the zoo's `Stack` with
`scan=True`) counts one row per layer and iteration, named as the probe names them
(`stages/0/rest/blocks/3/unit1/layer`): the same rows and totals as the unrolled model.
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
from ..instrument.registry import ScannedStack, kind_of


class _Log:
    """The calls seen while tracing: (name, kind, kernel, bias, input shape, output shape) each,
    and the names of the hooked modules by id (a name is relative to the traced root)."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.names: dict[int, str] = {}


_LOG: contextvars.ContextVar[_Log | None] = contextvars.ContextVar("gradflow_flops",
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
        that is not a registered scanned stack (build it unrolled, or register it with
        `gf.instrument.register_scanned_stack`).

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
    log = _Log()

    def run(state, x):
        copy = nnx.merge(graphdef, state, copy=True)
        _install(copy, log)
        return copy(x)

    token = _LOG.set(log)
    try:
        jax.eval_shape(run, state, jax.ShapeDtypeStruct((1, *input_shape), dtype))
    finally:
        _LOG.reset(token)
    if any(c[0] is None for c in log.calls):
        # a layer called inside a transform (lax.scan, nnx.scan, nnx.vmap) is a re-created copy,
        # traced once for all its iterations: it cannot be counted per call
        raise ValueError("costs counts layers called directly or in a registered scanned stack; "
                         "this model runs some inside another scan or vmap (build it unrolled, "
                         "e.g. gf.models.mlp(..., stack='unrolled'), or register the stack with "
                         "gf.instrument.register_scanned_stack)")
    seen: dict[str, int] = {}
    layers = []
    for name, kind, kernel, bias, x_shape, y_shape in log.calls:
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        positions = math.prod(y_shape[:-1])  # output positions per example (1 for dense)
        layers.append(LayerCost(name, kind, kernel, x_shape, y_shape,
                                math.prod(kernel) + bias, math.prod(kernel) * positions))
    total = sum(v.get_value().size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    return Costs(layers, int(total))


def _install(root: nnx.Module, log: _Log) -> None:
    """Hooks the conv / dense layers and the scanning registered stacks of `root` (a throwaway
    copy), naming them by their path from `root`; what lies inside a scanning stack's block is
    left to that stack's hook."""
    modules = [(tuple(p), m) for p, m in nnx.iter_modules(root)]
    stacks = [p for p, m in modules if isinstance(kind_of(m), ScannedStack)]
    for path, m in modules:
        if any(path[:len(s)] == s and path != s for s in stacks):
            continue
        if path in stacks:
            log.names[id(m)] = path_name(path)
            swap_call(m, "costed", _stack_hook)
        elif isinstance(m, (nnx.Conv, nnx.Linear)):
            log.names[id(m)] = path_name(path)
            swap_call(m, "costed", _hook)


def _hook(self, original, x, *args, **kwargs):
    y = original(self, x, *args, **kwargs)
    log = _LOG.get()
    if log is not None:
        kernel = tuple(self.kernel.get_value().shape)
        bias = self.bias.get_value().size if self.bias is not None else 0
        log.calls.append((log.names.get(id(self)), _kind(self, kernel), kernel, int(bias),
                          tuple(x.shape[1:]), tuple(y.shape[1:])))
    return y


def _stack_hook(self, original, x, *args, **kwargs):
    """A registered stack that scans: its block is traced once, on slice 0 of the stacked
    arrays (every iteration has the same shapes), and its calls are counted once per iteration
    under that iteration's name; the stack's own call gives the output."""
    log = _LOG.get()
    spec = kind_of(self)
    if log is None or not isinstance(spec, ScannedStack):
        return original(self, x, *args, **kwargs)
    block, n = spec.block(self), spec.length(self)
    graphdef, state = nnx.split(block)
    one = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))
    inner = _Log()
    _install(one, inner)
    token = _LOG.set(inner)
    try:
        one(x, *args, **kwargs)
    finally:
        _LOG.reset(token)
    stack = log.names.get(id(self))
    if spec.names is None:  # the block's own path, then the iteration
        block_path = next(tuple(p) for p, m in nnx.iter_modules(self) if m is block)
        prefix = lambda i: (*block_path, i)
    else:
        prefix = lambda i: tuple(spec.names(i))
    for i in range(n):
        head = None if stack is None else "/".join(filter(None, [stack, path_name(prefix(i))]))
        for name, *rest in inner.calls:
            full = None if head is None or name is None else "/".join(filter(None, [head, name]))
            log.calls.append((full, *rest))
    return original(self, x, *args, **kwargs)


def _kind(layer, kernel: tuple) -> str:
    if isinstance(layer, nnx.Linear):
        return "dense"
    window = "x".join(map(str, kernel[:-2]))
    groups = getattr(layer, "feature_group_count", 1)
    if groups > 1:
        return f"{'depthwise' if groups == layer.in_features else 'grouped'} {window}"
    return f"conv {window}"
