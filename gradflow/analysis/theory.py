"""Mean-field predictions for a given network, to overlay on measurements and to test against:
the per-layer profile of a metric (`predicted_profile`), the slope of the error signal in decades
per layer (`error_slope`, and `slope_toward_input` for a measured profile) and the attenuation a
depth sweep compares with (`theory_attenuation`).

The recursions behind them, and their assumptions, are in `gradflow.analysis.mean_field`; its
public functions are available here too (`gf.theory.mlp_profile`, `gf.theory.residual_profile`).
"""
from __future__ import annotations

import math

import numpy as np

from ..models.options import SEPARABLE
from .mean_field import (
    ACTIVATIONS,
    BN_RELU_GROWTH,
    PARTICLES,
    RESIDUAL_ARCHS,
    SIGMA_W2,
    gaussian_mean,
    mlp_profile,
    residual_profile,
    sigma_w2,
)

__all__ = [
    "BN_RELU_GROWTH",
    "PARTICLES",
    "RESIDUAL_ARCHS",
    "SIGMA_W2",
    "error_slope",
    "gaussian_mean",
    "mlp_profile",
    "predicted_profile",
    "residual_profile",
    "sigma_w2",
    "slope_toward_input",
    "theory_attenuation",
]


def slope_toward_input(norms) -> float:
    """Least-squares change of log10(norm) per layer, from the output side toward the input.

    Args:
      norms: per-layer norms in network order (input first), all positive.

    Returns:
      Decades per layer: negative when the signal vanishes toward the input, positive when it
      explodes; NaN for fewer than two layers or a non-finite log.

    Example:
      >>> round(gf.theory.slope_toward_input([1e-3, 1e-2, 1e-1, 1.0]), 6)
      -1.0
    """
    logs = np.log10(np.asarray(norms, dtype=np.float64))
    if logs.size < 2 or not np.all(np.isfinite(logs)):
        return float("nan")
    return float(-np.polyfit(np.arange(logs.size), logs, 1)[0])


def error_slope(*, init: str = "lecun", activation: str = "relu", arch: str = "plain",
                depth: int = 50, bias_var: float = 0.0) -> float:
    """Predicted `slope_toward_input` of ||dL/dz|| over the hidden layers of an MLP at init.

    Args:
      init: an initializer name in `SIGMA_W2`.
      activation: "relu", "tanh", "linear" or "sigmoid".
      arch: as in `mlp_profile`.
      depth: the number of weight layers.
      bias_var: sigma_b^2, the bias variance.

    Returns:
      Decades per layer toward the input (negative: vanishing).

    Example:
      >>> round(gf.theory.error_slope(init="lecun", activation="relu"), 3)
      -0.151
    """
    p = mlp_profile(depth, init=init, activation=activation, arch=arch, bias_var=bias_var)
    return slope_toward_input(np.sqrt(p["error_sq"][1:-1]))


def predicted_profile(metric: str, n_layers: int, *, arch: str, init: str,
                      activation: str) -> np.ndarray | None:
    """Predicted `error_norm` or `grad_norm` per layer at init, relative to the output layer.

    Args:
      metric: "error_norm" or "grad_norm".
      n_layers: the number of weight layers.
      arch: "plain", "bn" (ReLU only), "residual", "residual_scaled" or "residual_bn".
      init: an initializer name in `SIGMA_W2`.
      activation: "relu", "tanh", "linear" or "sigmoid".

    Returns:
      A (n_layers,) numpy array, input first, last entry 1; None where the theory does not
      apply (other metrics, activations or archs, odd residual depths, and `grad_norm` of
      the unnormalized residual archs).

    Example:
      >>> gf.theory.predicted_profile("error_norm", 5, arch="plain", init="lecun",
      ...                             activation="relu").round(3)
      array([0.25 , 0.354, 0.5  , 0.707, 1.   ])
    """
    if metric not in ("error_norm", "grad_norm") or arch not in ("plain", "bn") + RESIDUAL_ARCHS:
        return None
    if activation not in ACTIVATIONS or init not in SIGMA_W2 or (arch == "bn" and activation != "relu"):
        return None
    if arch in RESIDUAL_ARCHS and (n_layers < 2 or n_layers % 2):
        return None
    if metric == "grad_norm" and arch in ("residual", "residual_scaled"):
        # ||dW||^2 ~ ||dL/dz||^2 E[x^2] treats examples as independent; the unnormalized stream's
        # large shared positive mean makes cross-example terms matter (measured ReLU profiles
        # fall up to 0.8 decades below it at depth 24, 0.4 with scaled branches), so no
        # weight-gradient prediction is made.
        return None
    p = mlp_profile(n_layers, init=init, activation=activation, arch=arch)
    return np.sqrt(p["error_sq"] if metric == "error_norm" else p["grad_sq"])


def theory_attenuation(arch: str, depth: int, *, model: str, init: str, activation: str,
                       image_shape=None) -> float | None:
    """The mean-field attenuation error_norm[0] / error_norm[-1] at init.

    For CNNs the global average pooling before the head divides the error reaching the last
    conv by H*W at each of its H*W positions: a factor 1/sqrt(H*W) on the norm (the zoo's CNNs
    built by the run keep the input's H x W up to the pooling).

    Args:
      arch: a zoo arch, e.g. "plain" or "residual_bn" (separable archs give None).
      depth: the number of weight layers.
      model: "cnn" or "mlp".
      init: an initializer name in `SIGMA_W2`.
      activation: "relu", "tanh", "linear" or "sigmoid".
      image_shape: the input's (H, W, C); needed for "cnn".

    Returns:
      The predicted ratio, or None where the theory does not apply (separable convs, odd
      residual depths, other activations).

    Example:
      >>> round(gf.theory.theory_attenuation("plain", 10, model="mlp", init="lecun",
      ...                                    activation="relu"), 4)
      0.0442
    """
    if arch.endswith(SEPARABLE):
        return None
    pred = predicted_profile("error_norm", depth, arch=arch, init=init, activation=activation)
    if pred is None:
        return None
    r = float(pred[0] / pred[-1])
    if model == "cnn" and depth >= 2:
        r /= math.sqrt(image_shape[0] * image_shape[1])
    return r
