"""Mean-field recursions at initialization: per-layer forward variance, error signal and weight
gradient of plain, BN and residual networks in the infinite-width limit.

Assumptions (Poole et al. 2016; Schoenholz et al. 2017): infinite width, i.i.d. weights with
Var(W) = sigma_w^2 / fan_in and biases with Var(b) = sigma_b^2, pre-activations Gaussian, the
backward pass using weights independent of the forward pass (gradient independence). Under them,
for a fully connected net with activation phi:

    forward:   q_l = sigma_w^2 * E[phi(sqrt(q_{l-1}) z)^2] + sigma_b^2          (z ~ N(0, 1))
    backward:  E||dL/dz_l||^2 = chi_l * E||dL/dz_{l+1}||^2,
               chi_l = sigma_w^2 * E[phi'(sqrt(q_l) z)^2]
    weights:   E||dL/dW_l||^2  ~  E||dL/dz_l||^2 * E[x_{l-1}^2]                  (x = phi(z))

so for bias-free ReLU chi = sigma_w^2 / 2 and the weight-gradient norms are flat across layers
(forward and backward shrinkage cancel). With batch normalization before a ReLU, the error signal
instead grows toward the input by pi / (pi - 1) per layer at init (Yang et al. 2019, large batch).
Convolutions follow the same recursions with fan_in = k*k*channels (the "delta-orthogonal"
caveats aside), so the same profile applies to the zoo's plain CNNs.

Residual networks (`residual_profile`): the zoo's blocks are He et al.'s v1,
h' = phi(h + u) with u = W2 phi(W1 h) (or BN(W2 phi(BN(W1 h))) with BN). The activation after
the add makes the stream non-Gaussian, so instead of a closed form the same mean-field
assumptions are solved by population dynamics (a fixed sample of units carried through the
blocks): the branch output u is Gaussian and independent of the unit's own stream value, with
variance sigma_w^4 E[phi(y1)^2] without BN and exactly 1 with BN. Backward, the identity path keeps
each unit's own chain of gates phi'(z) (correlated from block to block, which matters), and the
branch adds a mixed-in share: sigma_w^4 E[phi'^2] without BN, and
E[phi'(n)^2] / (Var phi(n) * Var_batch(h)) with BN (n ~ N(0, 1); BN divides by the batch variance,
not the second moment; for ReLU 1 / ((1 - 1/pi) * 2 * Var(h)), where Yang et al.'s pi / (pi - 1)
reappears). Without BN this is the exploding forward signal of unnormalized residual networks; with
BN the stream's variance grows by about one per block, so block b's branch weighs ~1/b and the
error grows polynomially, not exponentially, toward the input (De & Smith 2020).

A branch scale alpha (arch "residual_scaled": alpha = 1/sqrt(blocks) at init) multiplies the
branch's variance by alpha^2 forward and its error share by alpha^2 backward. Without the ReLU
after the add the stream would follow q_{b+1} = q_b (1 + alpha^2 g) with g = sigma_w^4 / 2 the
ReLU branch's gain; with alpha^2 = 1/n over n blocks that is at most e^g: bounded at any depth,
forward and backward alike.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..models.blocks import initial_branch_scale
from ..models.options import check_choice

# sigma_w^2 for square layers (fan_in = fan_out); glorot's 2/(fan_in+fan_out) gives 1 there.
SIGMA_W2 = {"lecun": 1.0, "he": 2.0, "glorot": 1.0, "orthogonal": 1.0}
BN_RELU_GROWTH = math.pi / (math.pi - 1)  # Yang et al. 2019: per-layer growth of ||dL/dz||^2

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(96)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()

_PHI = {
    "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float)),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "linear": (lambda x: x, np.ones_like),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
}
ACTIVATIONS = tuple(_PHI)  # the activations the recursions know


def gaussian_mean(f, q: float) -> float:
    """E[f(sqrt(q) z)] for z ~ N(0, 1), by 96-point Gauss-Hermite quadrature.

    Args:
      f: a vectorized function of a numpy array.
      q: the variance of the Gaussian argument.

    Returns:
      The expectation, a float.

    Example:
      >>> round(gf.theory.gaussian_mean(lambda v: v ** 2, 2.0), 6)
      2.0
    """
    return float(np.sum(_WEIGHTS * f(np.sqrt(q) * _NODES)))


def sigma_w2(init: str) -> float:
    """The weight variance times fan_in, sigma_w^2, that an initializer gives square layers.

    Args:
      init: an initializer name in `SIGMA_W2` ("lecun", "he", "glorot", "orthogonal").

    Returns:
      sigma_w^2, e.g. 2.0 for "he".

    Raises:
      ValueError: for another name.
    """
    check_choice("init", init, tuple(SIGMA_W2))
    return SIGMA_W2[init]


RESIDUAL_ARCHS = ("residual", "residual_scaled", "residual_bn")
PARTICLES = 20_000  # population size for residual_profile: ~1% sampling error on each factor


def mlp_profile(depth: int, *, init: str = "lecun", activation: str = "relu",
                bias_var: float = 0.0, input_var: float = 1.0, arch: str = "plain") -> dict:
    """Predicted per-layer profiles for the zoo's `depth`-layer MLP at init.

    Layer 1 is the stem, layer `depth` the output layer; hidden layers are square.

    Args:
      depth: the number of weight layers.
      init: an initializer name in `SIGMA_W2` ("lecun", "he", "glorot", "orthogonal").
      activation: "relu", "tanh", "linear" or "sigmoid".
      bias_var: sigma_b^2, the bias variance (0 for residual archs).
      input_var: the second moment of the input's entries.
      arch: "plain", "bn" (ReLU only), or a residual arch (see `residual_profile`).

    Returns:
      A dict of (depth,) numpy arrays: `error_sq` (E||dL/dz_l||^2 relative to the output layer)
      and `grad_sq` (E||dL/dW_l||^2, same normalization); for plain and bn also `q`
      (pre-activation variance) and `chi` (backward factor from layer l+1 to l). Residual archs
      return `residual_profile`'s dict.

    Raises:
      ValueError: for an unknown choice, "bn" with another activation than ReLU, or a bias
        variance with a residual arch.

    Example:
      >>> gf.theory.mlp_profile(4, init="lecun")["error_sq"]
      array([0.125, 0.25 , 0.5  , 1.   ])
    """
    check_choice("arch", arch, ("plain", "bn") + RESIDUAL_ARCHS)
    if arch in RESIDUAL_ARCHS:
        if bias_var:
            raise ValueError("the residual profile assumes zero biases at init (bias_var=0)")
        scale = initial_branch_scale((depth - 2) // 2) if arch == "residual_scaled" else 1.0
        return residual_profile(depth, init=init, activation=activation, input_var=input_var,
                                bn=arch == "residual_bn", branch_scale=scale)
    check_choice("activation", activation, tuple(_PHI))
    if arch == "bn" and activation != "relu":
        raise ValueError("the BN profile is the closed form for ReLU (Yang et al. 2019)")
    phi, dphi = _PHI[activation]
    s2 = sigma_w2(init)
    q = np.empty(depth)
    x2_in = np.empty(depth)  # E[x_{l-1}^2], the second moment of each layer's input
    x2 = input_var
    for l in range(depth):
        x2_in[l] = x2
        q[l] = s2 * x2 + bias_var if arch == "plain" else 1.0  # BN: unit pre-activation variance
        x2 = gaussian_mean(lambda v: phi(v) ** 2, q[l])
    chi = np.array([s2 * gaussian_mean(lambda v: dphi(v) ** 2, q[l]) for l in range(depth)])
    if arch == "bn":
        chi[:] = BN_RELU_GROWTH
    chi[-1] = 1.0  # nothing above the output layer
    error_sq = np.ones(depth)
    for l in range(depth - 2, -1, -1):
        error_sq[l] = error_sq[l + 1] * chi[l]
    grad_sq = error_sq * x2_in
    return {"q": q, "chi": chi, "error_sq": error_sq, "grad_sq": grad_sq / grad_sq[-1]}


def residual_profile(depth: int, *, init: str = "lecun", activation: str = "relu",
                     input_var: float = 1.0, bn: bool = False, branch_scale: float = 1.0,
                     particles: int = PARTICLES, seed: int = 0) -> dict:
    """Predicted per-layer profiles for the zoo's `depth`-layer residual MLP at init.

    The net is a stem, (depth-2)/2 v1 blocks and the output layer; the profile is solved by
    population dynamics under the mean-field assumptions in the module docstring.
    Deterministic for a given `seed`, and cached (depth 10,000 takes ~7 s).

    Args:
      depth: the number of weight layers, even and >= 2.
      init: an initializer name in `SIGMA_W2`.
      activation: "relu", "tanh", "linear" or "sigmoid".
      input_var: the second moment of the input's entries.
      bn: True for residual_bn (BatchNorm after each weight layer in the blocks).
      branch_scale: alpha, the factor on every block's branch (1: residual and residual_bn;
        `gf.models.initial_branch_scale` for residual_scaled).
      particles: the population size (sampling error ~1/sqrt(particles) on each factor).
      seed: the seed of the population.

    Returns:
      A dict of numpy arrays: `error_sq` and `grad_sq`, shape (depth,), E||dL/dz_l||^2 and
      E||dL/dW_l||^2 relative to the output layer; `q`, shape ((depth-2)/2 + 1,), the
      stream's second moment entering each block and after the last.

    Raises:
      ValueError: for an odd depth or depth < 2, or an unknown activation or init.

    Example:
      >>> p = gf.theory.residual_profile(10, init="he", bn=True)
      >>> p["error_sq"].shape, p["q"].shape
      ((10,), (5,))
    """
    check_choice("activation", activation, tuple(_PHI))
    if depth < 2 or depth % 2:
        raise ValueError(f"depth={depth}: residual nets have an even depth >= 2")
    out = _residual_profile(depth, init, activation, float(input_var), bool(bn),
                            float(branch_scale), particles, seed)
    return {k: v.copy() for k, v in out.items()}


@functools.lru_cache(maxsize=32)
def _residual_profile(depth, init, activation, input_var, bn, scale, particles, seed) -> dict:
    phi, dphi = _PHI[activation]
    s2 = sigma_w2(init)
    rng = np.random.default_rng(seed)
    n_blocks = (depth - 2) // 2
    pre = rng.standard_normal(particles) * (1.0 if bn else math.sqrt(s2 * input_var))
    h, gate0 = phi(pre), dphi(pre) ** 2
    # BN-normalized branch input n ~ N(0, 1): E[phi'(n)^2] and Var(phi(n)) (batch-centred).
    dphi2_n = gaussian_mean(lambda v: dphi(v) ** 2, 1.0)
    var_a_n = gaussian_mean(lambda v: phi(v) ** 2, 1.0) - gaussian_mean(phi, 1.0) ** 2
    gates, q, var_h, a2 = [], np.empty(n_blocks + 1), np.empty(n_blocks), np.empty(n_blocks)
    for b in range(n_blocks):
        q[b], var_h[b] = np.mean(h * h), np.var(h)
        if bn:
            u_var, a2[b] = 1.0, var_a_n
        else:
            a2[b] = gaussian_mean(lambda v: phi(v) ** 2, s2 * q[b])
            u_var = s2 * a2[b]
        z = h + rng.standard_normal(particles) * (scale * math.sqrt(u_var))
        gates.append(dphi(z) ** 2)
        h = phi(z)
    q[n_blocks] = np.mean(h * h)
    error_sq, x2_in = np.ones(depth), np.empty(depth)
    x2_in[0], x2_in[-1] = input_var, q[n_blocks]
    w = np.full(particles, s2)  # each unit's E||dL/dh||^2 at the head's input: sigma_w^2 * 1
    for b in range(n_blocks - 1, -1, -1):
        w = w * gates[b]  # the add's gate, unit by unit (identity path)
        e_z = float(np.mean(w)) * scale ** 2  # at the branch's last (unscaled) output
        if bn:
            e2 = e_z / (s2 * var_a_n)
            e1 = e2 * s2 * dphi2_n / (s2 * var_h[b])
        else:
            e2 = e_z
            e1 = e2 * s2 * gaussian_mean(lambda v: dphi(v) ** 2, s2 * q[b])
        error_sq[1 + 2 * b], error_sq[2 + 2 * b] = e1, e2
        x2_in[1 + 2 * b] = var_h[b] if bn else q[b]
        x2_in[2 + 2 * b] = a2[b]
        w = w + s2 * e1  # the branch's share, spread over all units by W1^T
    error_sq[0] = float(np.mean(w * gate0)) / (s2 * input_var if bn else 1.0)
    grad_sq = error_sq * x2_in
    return {"q": q, "error_sq": error_sq, "grad_sq": grad_sq / grad_sq[-1]}
