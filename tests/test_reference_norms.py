"""Per-layer gradient and error norms of every zoo architecture (unrolled and scanned), the
separable CNN and the seed paper's ResNet, against the independent reference of
tests/reference.py (an unrolled copy with zero perturbations on each layer's output)."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow import models as M
from gradflow.losses import cross_entropy
from reference import (TINY_X_IMG as X_IMG, TINY_X_VEC as X_VEC, TINY_Y as Y, reference_probe,
                       tiny_zoo_model as make, unrolled_copy)

# Scanned CNNs of the plain and residual_bn archs cover the scanned path's probes; the other
# archs' scanned CNNs repeat them at a few seconds' compile each (slow tier).
_CASES = [pytest.param(kind, arch, stack, marks=pytest.mark.slow)
          if (stack, kind) == ("scan", "cnn") and arch not in ("plain", "residual_bn")
          else (kind, arch, stack)
          for stack in ("unrolled", "scan") for arch in M.ARCHS for kind in ("cnn", "mlp")]


@pytest.mark.parametrize("kind,arch,stack", _CASES)
def test_grad_and_error_norms_match_reference(kind, arch, stack):
    model = make(kind, arch, stack)
    x = X_IMG if kind == "cnn" else X_VEC
    snap = gf.probe(model, (x, Y))
    ref_model = model if stack == "unrolled" else unrolled_copy(
        model, partial(make, kind, arch, "unrolled", seed=1))
    ref_grad, ref_err = reference_probe(ref_model, x, Y, cross_entropy)
    assert len(snap.layers) == len(ref_grad)
    np.testing.assert_allclose(snap["grad_norm"], ref_grad, rtol=2e-4, atol=1e-8)
    np.testing.assert_allclose(snap["error_norm"], ref_err, rtol=2e-4, atol=1e-8)


def test_separable_and_seed_models_match_reference():
    for model, x, y, loss in [
        (M.cnn("residual_bn", 4, width=4, conv="separable", rngs=nnx.Rngs(0)), X_IMG, Y % 10,
         "cross_entropy"),
        (M.seed_resnet(rngs=nnx.Rngs(0)), 255 * jax.nn.sigmoid(jax.random.normal(
            jax.random.PRNGKey(3), (4, 32, 32, 3))), jnp.array([0, 1, 1, 0]),
         "binary_cross_entropy")]:
        snap = gf.probe(model, (x, y), loss=loss)
        ref_grad, ref_err = reference_probe(model, x, y, gf.losses.LOSSES[loss][0])
        np.testing.assert_allclose(snap["grad_norm"], ref_grad, rtol=2e-4, atol=1e-8)
        np.testing.assert_allclose(snap["error_norm"], ref_err, rtol=2e-4, atol=1e-8)
