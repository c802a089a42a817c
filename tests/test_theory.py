"""Mean-field predictions against measurements at init (gradflow.theory)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow.analysis import theory as T

DEPTH, SEEDS = 24, 3


def probes(arch, init, act, width):
    x = jax.random.normal(jax.random.PRNGKey(7), (256, width))
    y = jnp.arange(256) % 10
    for seed in range(SEEDS):
        m = gf.models.mlp(arch, DEPTH, width=width, in_features=width, num_classes=10, init=init,
                          activation=act, use_bias=False, rngs=nnx.Rngs(seed))
        yield gf.probe(m, (x, y))


def measured_slope(arch, init, act, width):
    return float(np.mean([T.slope_toward_input(s["error_norm"][1:-1])
                          for s in probes(arch, init, act, width)]))


def tolerance(width, layers=DEPTH - 2):
    """Finite-width fluctuations: each layer's log10 norm ratio has std ~ sqrt(2/n)/(2 ln 10)
    (a chi-square with n degrees of freedom); a least-squares slope through a random walk of m
    such steps has std ~ sigma*sqrt(6/(5m)); 4 standard errors over the seeds, plus an O(1/n)
    finite-width bias."""
    sigma = math.sqrt(2 / width) / (2 * math.log(10))
    return 4 * sigma * math.sqrt(6 / (5 * layers)) / math.sqrt(SEEDS) + 1 / width


@pytest.mark.parametrize("arch,init,act", [
    ("plain", "lecun", "relu"), ("plain", "he", "relu"), ("plain", "he", "tanh"),
    ("plain", "lecun", "tanh"), ("bn", "he", "relu"), ("residual", "lecun", "relu"),
    ("residual", "he", "relu"), ("residual", "lecun", "tanh"), ("residual_bn", "he", "relu")])
def test_error_slope_matches_theory_at_large_width(arch, init, act):
    predicted = T.error_slope(init=init, activation=act, arch=arch, depth=DEPTH)
    assert abs(measured_slope(arch, init, act, 256) - predicted) < tolerance(256)


def test_closed_forms():
    assert T.error_slope(init="lecun") == pytest.approx(math.log10(0.5) / 2)
    assert T.error_slope(init="he") == pytest.approx(0, abs=1e-12)
    assert T.error_slope(init="he", arch="bn") == pytest.approx(
        math.log10(math.pi / (math.pi - 1)) / 2)
    p = T.mlp_profile(30, init="lecun")
    np.testing.assert_allclose(p["grad_sq"][1:-1], p["grad_sq"][1], rtol=1e-9)  # flat


def test_broken_assumption_shows_disagreement():
    """The plain-network recursion assumes no normalization: on a BN network it is far off."""
    predicted = T.error_slope(init="he", activation="relu", arch="plain", depth=DEPTH)
    assert abs(measured_slope("bn", "he", "relu", 256) - predicted) > 4 * tolerance(256)


@pytest.mark.parametrize("arch,metric", [("residual", "error_norm"), ("residual_bn", "error_norm"),
                                         ("residual_bn", "grad_norm")])
def test_residual_profile_shape_matches_layer_by_layer(arch, metric):
    """Not just the slope: every hidden layer's log10 norm (relative to the last hidden layer)
    within 4 standard errors of the seed mean (the seeds' own spread, per layer) plus 0.03
    decades of finite-width bias. Residual rows alternate (branch input and branch output), so
    this checks the within-block structure the population dynamics predicts."""
    per_seed = []
    for s in probes(arch, "he", "relu", 256):
        logs = np.log10(np.asarray(s[metric], dtype=np.float64))[1:-1]
        per_seed.append(logs - logs[-1])
    pred = np.log10(T.predicted_profile(metric, DEPTH, arch=arch, init="he",
                                        activation="relu"))[1:-1]
    diff = np.mean(per_seed, axis=0) - (pred - pred[-1])
    tol = 4 * np.std(per_seed, axis=0, ddof=1) / math.sqrt(SEEDS) + 0.03
    assert np.all(np.abs(diff) < tol), np.round(diff, 3)


def test_residual_net_breaks_the_plain_theory():
    """A broken assumption: the plain-chain recursion (no skip path) predicts vanishing for a
    lecun ReLU net; the residual net's identity path keeps the signal, and the check notices."""
    predicted = T.error_slope(init="lecun", activation="relu", arch="plain", depth=DEPTH)
    assert abs(measured_slope("residual", "lecun", "relu", 256) - predicted) > 4 * tolerance(256)


def test_residual_theory_declines_what_it_does_not_model():
    assert T.predicted_profile("grad_norm", DEPTH, arch="residual", init="he",
                               activation="relu") is None
    assert T.predicted_profile("error_norm", 23, arch="residual", init="he",
                               activation="relu") is None
    with pytest.raises(ValueError, match="bias_var"):
        T.mlp_profile(DEPTH, arch="residual", bias_var=0.1)
