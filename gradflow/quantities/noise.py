"""Gradient noise from per-example gradients: the mean gradient signal-to-noise ratio and the
norm, inner-product and orthogonality tests, for the whole network and per layer.

Definitions follow Cockpit (Schneider, Dangel & Hennig, 2021) for a mean-reduced loss
L = (1/B) Σₙ ℓₙ with per-example gradients gₙ = ∇ℓₙ and g = (1/B) Σₙ gₙ:

- `norm_test` (Byrd et al., 2012): sqrt(Σₙ‖gₙ − g‖² / (B − 1) / B / ‖g‖²). The norm test with
  constant θ passes while norm_test ≤ θ; the batch size it asks for is B·(norm_test / θ)².
- `inner_test` (Bollapragada et al., 2018): sqrt(Var(⟨gₙ, g⟩) / B / ‖g‖⁴), with the sample
  variance over the batch.
- `ortho_test` (Bollapragada et al., 2018): sqrt(Σₙ‖gₙ − (⟨gₙ, g⟩/‖g‖²) g‖² / (B − 1) / B / ‖g‖²).
- `mean_gsnr`: the mean over parameters j of g_j² / ((1/B)Σₙ gₙ,ⱼ² − g_j² + ε), ε = 1e-5.

A layer's values restrict the same formulas to its parameters (`rows.row_segments`).

Every sum is taken on gradients scaled by a power of two per layer (exact), so layers whose
gradients are far below float32's squared range (vanishing gradients) still get their values;
all four quantities are invariant to that scale (ε is scaled with it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..instrument.norms import flat_arrays
from ..conv_layout import canonical_convs
from .histograms import HIST_BINS, row_histograms

EPSILON = 1e-5  # Cockpit's MeanGSNR stabiliser
NOISE_SCALARS = ("mean_gsnr", "norm_test", "inner_test", "ortho_test")
NOISE_METRICS = tuple(f"layer_{k}" for k in NOISE_SCALARS)
NOISE_FLAG = "noise_mean_reduced"  # 1.0 where the loss was mean-reduced, 0.0 where not


def whole_segments(flat: dict, segments) -> tuple:
    """The rows' segments plus one of every parameter no row owns (normalization layers' scale
    and offset, branch scales, slices of stacks without a row), for whole-network sums.

    Args:
      flat: {path: array} of the parameters.
      segments: `rows.row_segments`.

    Returns:
      `segments` + (rest,), rest possibly empty.
    """
    owned: dict = {}
    for seg in segments:
        for p, i in seg:
            owned.setdefault(p, set()).add(i)
    rest = []
    for p, a in flat.items():
        taken = owned.get(p, set())
        if None in taken:
            continue
        if not taken:
            rest.append((p, None))
        else:  # a stacked leaf whose rows cover only some slices
            rest.extend((p, i) for i in range(a.shape[0]) if i not in taken)
    return tuple(segments) + (tuple(rest),)


def _slice(a, index, batched=False):
    if index is None:
        return a
    return a[:, index] if batched else a[index]


def _exponent(flat_g: dict, seg) -> tuple[jax.Array, jax.Array]:
    """(e, nonzero): 2^(e-1) ≤ max |g| < 2^e over the segment (e = 0 where g is all zero or
    the segment empty), and whether g is nonzero there."""
    if not seg:
        return jnp.int32(0), jnp.bool_(False)
    m = jnp.max(jnp.stack([jnp.max(jnp.abs(_slice(flat_g[p], i))) for p, i in seg]))
    _, e = jnp.frexp(m.astype(jnp.float32))
    return jnp.where(m > 0, e, 0).astype(jnp.int32), m > 0


def chunk_size(batch: int, n_params: int, budget_bytes: int = 256 << 20) -> int:
    """The largest divisor of `batch` whose per-example gradients fit `budget_bytes` (float32).

    Args:
      batch: the batch size B.
      n_params: parameters in the model.
      budget_bytes: memory for one chunk of per-example gradients.

    Returns:
      The chunk size, at least 1.

    Example:
      >>> chunk_size(32, 1_000_000, 64 << 20)  # 16 examples of 4 MB fit 64 MiB
      16
    """
    fit = max(1, budget_bytes // max(1, 4 * n_params))
    return max(d for d in range(1, batch + 1) if batch % d == 0 and d <= fit)


def noise_chunk(params, batch: int, chunk: int | None = None) -> int:
    """The chunk of per-example gradients for a batch, checking the batch can have noise.

    Args:
      params: the model's parameters (their count sizes the default chunk).
      batch: the batch size B.
      chunk: the chunk asked for (rounded down to a divisor of B); None: as many examples as
        fit 256 MiB of per-example gradients (`chunk_size`).

    Returns:
      The chunk size, a divisor of `batch`.

    Raises:
      ValueError: for a batch of one example (the quantities are variances over the batch).
    """
    if batch < 2:
        raise ValueError("noise quantities need batches of at least 2 examples: they are "
                         "variances over the batch")
    if chunk is not None:
        return chunk_size(batch, 1, 4 * chunk)
    return chunk_size(batch, sum(a.size for a in flat_arrays(params).values()))


def noise(example_grads, params_g, segments, examples, *, chunk: int, epsilon: float = EPSILON):
    """The four noise quantities, whole-network and per row, and per-example histograms.

    Args:
      example_grads: `f(chunk_of_examples) -> (losses (c,), grads)`: the per-example losses and
        gradients (a pytree like the parameters, leading axis c) of `c` examples.
      params_g: g, the mean gradient (an `nnx.State` or pytree like the parameters).
      segments: `rows.row_segments` of the parameters.
      examples: a pytree of arrays with a leading batch axis B (the examples, e.g. `(x, y)`).
      chunk: examples per vmapped chunk; must divide B.
      epsilon: the GSNR stabiliser, in units of squared gradient.

    Returns:
      {"mean_gsnr", "norm_test", "inner_test", "ortho_test": 0-d; "layer_<name>": (n_rows,)
      each; "example_grad_hist": (n_rows, HIST_BINS) counts of |gₙ,ⱼ| over the batch;
      "example_loss_mean": 0-d, the mean per-example loss}.
    """
    flat_g = flat_arrays(params_g)
    segs = whole_segments(flat_g, segments)
    n_rows, batch = len(segments), jax.tree.leaves(examples)[0].shape[0]
    exps, nonzero = (jnp.stack(v) for v in zip(*(_exponent(flat_g, seg) for seg in segs)))
    scales = jnp.ldexp(jnp.float32(1), -exps)
    g_s = [[_slice(flat_g[p], i).astype(jnp.float32) * scales[k] for p, i in seg]
           for k, seg in enumerate(segs)]
    gg = jnp.stack([sum((jnp.sum(a * a) for a in parts), jnp.float32(0)) for parts in g_s])
    # segment k's scaled unit to the global unit (the largest segment's scale)
    top = jnp.max(jnp.where(nonzero, exps, jnp.iinfo(jnp.int32).min))
    to_global = jnp.where(nonzero, jnp.ldexp(jnp.float32(1), 2 * (exps - top)), 0)

    def body(acc, ex):  # sums over examples of deviations dₙ = gₙ − g (no cancellation)
        losses, grads = example_grads(ex)
        flat = flat_arrays(grads)
        sq, dots, e2 = [], [], []
        for k, seg in enumerate(segs):
            s_k, d_k, e_k = jnp.zeros(chunk), jnp.zeros(chunk), []
            for (p, i), gs in zip(seg, g_s[k]):
                dev = _slice(flat[p], i, batched=True).astype(jnp.float32) * scales[k] - gs
                axes, dev2 = tuple(range(1, dev.ndim)), dev * dev
                s_k, d_k = s_k + jnp.sum(dev2, axes), d_k + jnp.sum(dev * gs, axes)
                e_k.append(jnp.sum(dev2, 0))
            sq.append(s_k), dots.append(d_k), e2.append(e_k)
        sq, dots = jnp.stack(sq), jnp.stack(dots)  # (n_segments, c): ‖dₙ‖², ⟨dₙ, g⟩
        total_dot = jnp.sum(dots * to_global[:, None], 0)
        hist = row_histograms(flat, segments, batched=True)
        s1, p2, e2_acc, h, lsum, t1, t2 = acc
        return (s1 + jnp.sum(sq, 1), p2 + jnp.sum(dots * dots, 1),
                jax.tree.map(jnp.add, e2_acc, e2), h + hist, lsum + jnp.sum(losses),
                t1 + jnp.sum(sq * to_global[:, None]), t2 + jnp.sum(total_dot * total_dot)), None

    zeros = jnp.zeros(len(segs), jnp.float32)
    e2_0 = [[jnp.zeros_like(a) for a in parts] for parts in g_s]
    init = (zeros, zeros, e2_0, jnp.zeros((n_rows, HIST_BINS), jnp.int32), jnp.float32(0),
            jnp.float32(0), jnp.float32(0))
    chunks = jax.tree.map(lambda a: a.reshape(batch // chunk, chunk, *a.shape[1:]), examples)
    # One chunk runs straight-line, several in a `lax.scan`, its convolutions in the layout
    # XLA:CPU's fast kernels take (`canonical_convs`: without it a vmapped gradient of the
    # depth-50 CNN ran over 10x slower inside the loop than outside it); unrolled chunks would
    # keep their buffers live together (the width-1024 MLP's 8 chunks of 4: 2.8 GiB against
    # 1.2 GiB), which the chunking is there to prevent.
    if batch == chunk:
        acc, _ = body(init, jax.tree.map(lambda a: a[0], chunks))
    else:
        acc, _ = jax.lax.scan(canonical_convs(body), init, chunks)
    s1, p2, e2, hist, lsum, t1, t2 = acc

    tests = _tests(batch, gg, s1, p2)
    total = _tests(batch, jnp.sum(gg * to_global), t1, t2)
    gsnr_sum, sizes = [], []
    for k in range(len(segs)):
        ratios = [g * g / (e / batch + epsilon * scales[k] ** 2)  # (1/B)Σₙ(gₙ − g)² + ε
                  for g, e in zip(g_s[k], e2[k])]
        gsnr_sum.append(sum((jnp.sum(r) for r in ratios), jnp.float32(0)))
        sizes.append(sum(int(np.prod(g.shape)) for g in g_s[k]))
    gsnr_sum, sizes = jnp.stack(gsnr_sum), np.asarray(sizes, np.float32)
    out = {"mean_gsnr": jnp.sum(gsnr_sum) / max(1.0, float(sizes.sum())),
           "layer_mean_gsnr": gsnr_sum[:n_rows] / np.maximum(sizes[:n_rows], 1),
           "example_grad_hist": hist, "example_loss_mean": lsum / batch}
    for name in ("norm_test", "inner_test", "ortho_test"):
        out[name], out[f"layer_{name}"] = total[name], tests[name][:n_rows]
    return out


def _tests(batch: int, gg, s1, p2) -> dict:
    """The three tests from ‖g‖², Σₙ‖gₙ − g‖² and Σₙ⟨gₙ − g, g⟩² (any common scale).

    With dₙ = gₙ − g: Σₙ‖gₙ − g‖² is the norm test's sum; Var⟨gₙ, g⟩ is Σₙ⟨dₙ, g⟩² / (B − 1);
    and gₙ's part orthogonal to g is dₙ's, so its squared norms sum to
    Σₙ‖dₙ‖² − Σₙ⟨dₙ, g⟩² / ‖g‖². Sums of deviations keep small variances exact where
    Σₙ‖gₙ‖² − B‖g‖² would cancel.
    """
    var_l1 = s1 / (batch - 1)
    var_proj = p2 / (batch - 1)
    var_orth = jnp.maximum(s1 - p2 / gg, 0) / (batch - 1)
    return {"norm_test": jnp.sqrt(var_l1 / batch / gg),
            "inner_test": jnp.sqrt(var_proj / batch / (gg * gg)),
            "ortho_test": jnp.sqrt(var_orth / batch / gg)}
