"""Mean-field predictions at initialization, to overlay on measurements and to test against.

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
"""
from __future__ import annotations

import math

import numpy as np

from .models.options import check_choice

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


def gaussian_mean(f, q: float) -> float:
    """E[f(sqrt(q) z)] for z ~ N(0, 1), by Gauss-Hermite quadrature."""
    return float(np.sum(_WEIGHTS * f(np.sqrt(q) * _NODES)))


def sigma_w2(init: str) -> float:
    check_choice("init", init, tuple(SIGMA_W2))
    return SIGMA_W2[init]


def mlp_profile(depth: int, *, init: str = "lecun", activation: str = "relu",
                bias_var: float = 0.0, input_var: float = 1.0, arch: str = "plain") -> dict:
    """Predicted per-layer profiles for the zoo's `depth`-layer MLP at init (layer 1 = stem,
    layer `depth` = output layer), hidden layers square.

    Returns numpy arrays over layers: `q` (pre-activation variance), `chi` (backward factor from
    layer l+1 to l), `error_sq` (E||dL/dz_l||^2 relative to the output layer) and `grad_sq`
    (E||dL/dW_l||^2, same normalization). `arch` is "plain" or "bn" (ReLU only for "bn").
    """
    check_choice("arch", arch, ("plain", "bn"))
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


def slope_toward_input(norms) -> float:
    """Least-squares change of log10(norm) per layer, measured from the output side toward the
    input: negative when the signal vanishes toward the input, positive when it explodes."""
    logs = np.log10(np.asarray(norms, dtype=np.float64))
    if logs.size < 2 or not np.all(np.isfinite(logs)):
        return float("nan")
    return float(-np.polyfit(np.arange(logs.size), logs, 1)[0])


def error_slope(*, init: str = "lecun", activation: str = "relu", arch: str = "plain",
                depth: int = 50, bias_var: float = 0.0) -> float:
    """Predicted `slope_toward_input` of ||dL/dz|| over the hidden layers of a depth-`depth` MLP."""
    p = mlp_profile(depth, init=init, activation=activation, arch=arch, bias_var=bias_var)
    return slope_toward_input(np.sqrt(p["error_sq"][1:-1]))


def predicted_profile(metric: str, n_layers: int, *, arch: str, init: str,
                      activation: str) -> np.ndarray | None:
    """Predicted `error_norm` or `grad_norm` per layer at init, relative to the output layer
    (= 1), for a plain or BN(-ReLU) network of `n_layers` weight layers; None where no closed
    form applies (residual archs, other metrics or activations)."""
    if metric not in ("error_norm", "grad_norm") or arch not in ("plain", "bn"):
        return None
    if activation not in _PHI or init not in SIGMA_W2 or (arch == "bn" and activation != "relu"):
        return None
    p = mlp_profile(n_layers, init=init, activation=activation, arch=arch)
    return np.sqrt(p["error_sq"] if metric == "error_norm" else p["grad_sq"])
