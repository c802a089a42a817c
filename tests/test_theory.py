"""Mean-field predictions against measurements at init (gradflow.theory)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow import theory as T

DEPTH, SEEDS = 24, 3


def measured_slope(arch, init, act, width):
    x = jax.random.normal(jax.random.PRNGKey(7), (256, width))
    y = jnp.arange(256) % 10
    slopes = []
    for seed in range(SEEDS):
        m = gf.models.mlp(arch, DEPTH, width=width, in_features=width, num_classes=10, init=init,
                          activation=act, use_bias=False, rngs=nnx.Rngs(seed))
        slopes.append(T.slope_toward_input(gf.probe(m, (x, y))["error_norm"][1:-1]))
    return float(np.mean(slopes))


def tolerance(width, layers=DEPTH - 2):
    """Finite-width fluctuations: each layer's log10 norm ratio has std ~ sqrt(2/n)/(2 ln 10)
    (a chi-square with n degrees of freedom); a least-squares slope through a random walk of m
    such steps has std ~ sigma*sqrt(6/(5m)); 4 standard errors over the seeds, plus an O(1/n)
    finite-width bias."""
    sigma = math.sqrt(2 / width) / (2 * math.log(10))
    return 4 * sigma * math.sqrt(6 / (5 * layers)) / math.sqrt(SEEDS) + 1 / width


@pytest.mark.parametrize("arch,init,act", [
    ("plain", "lecun", "relu"), ("plain", "he", "relu"), ("plain", "he", "tanh"),
    ("plain", "lecun", "tanh"), ("bn", "he", "relu")])
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
