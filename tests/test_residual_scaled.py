"""Arch "residual_scaled": skip connections alone, each branch times a fixed scalar equal to
1/sqrt(blocks). Builds (unrolled and scanned), rows, mean-field theory at init, and a
depth-50 run where the unscaled residual net diverges and this one trains."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow.analysis import theory as T
from gradflow.data.synthetic import Dataset
from gradflow.experiments.side_by_side import Config, train_arch

SEEDS = 3


def _mlp(depth, stack="unrolled", width=8, init="lecun", seed=0, in_features=12):
    return gf.models.mlp("residual_scaled", depth, width=width, in_features=in_features,
                         num_classes=10, init=init, use_bias=False, stack=stack,
                         rngs=nnx.Rngs(seed))


def test_is_a_default_arch_and_counts_blocks_like_residual():
    assert "residual_scaled" in gf.models.ARCHS and "residual_scaled" in gf.models.RESIDUAL
    assert "residual_scaled_separable" in gf.models.ARCH_CHOICES
    assert gf.models.hidden_blocks("residual_scaled", 50) == 24
    with pytest.raises(ValueError, match="even"):
        gf.models.hidden_blocks("residual_scaled", 21)


@pytest.mark.parametrize("stack", ["unrolled", "scan"])
def test_branch_scales_start_at_one_over_sqrt_blocks_and_are_no_rows(stack):
    model = _mlp(10, stack)  # 4 blocks
    scales = [np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(nnx.state(model, gf.models.BranchScale))]
    np.testing.assert_allclose(np.concatenate([s.reshape(-1) for s in scales]), [0.5] * 4)
    x, y = jnp.ones((4, 12)), jnp.arange(4)
    snap = gf.probe(model, (x, y))
    assert len(snap.layers) == 10 and not any("branch_scale" in n for n in snap.layers)
    assert np.all(np.isfinite(snap["grad_norm"])) and np.all(snap["grad_norm"] > 0)
    # the scalar is fixed: not a parameter, so no optimizer moves it
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert params and not any(p[-1] == "branch_scale" for p, _ in params)


def test_scanned_and_unrolled_cnns_agree_on_rows_and_the_scale():
    """The rows are fixed when the probe is traced: built and probed abstractly
    (jax.eval_shape); the scanned net's scale comes out of one jitted build."""
    def build(stack):
        return gf.models.cnn("residual_scaled", 12, width=4, stages=2, stack=stack,
                             rngs=nnx.Rngs(0))

    x, y = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3)), jnp.array([0, 1])
    rows = {}

    for s in ("unrolled", "scan"):
        def probe(stack=s):
            rows[stack] = gf.probe(build(stack), (x, y)).layers

        jax.eval_shape(probe)
    assert rows["scan"] == rows["unrolled"]
    assert len(rows["scan"]) == 13  # 12 weight layers and one projection shortcut
    scale = jax.jit(lambda: build("scan").stages[1].first.branch_scale.get_value())()
    assert float(scale) == pytest.approx(1 / math.sqrt(5))


@nnx.jit  # one program for every seed and init, not one eager op at a time
def _moments(model, x):
    h, out = model.stem(x), []
    for block in model.stages[0].rest.blocks:
        out.append(jnp.mean(h * h))
        h = block(h)
    return jnp.stack(out + [jnp.mean(h * h)])


def _stream_second_moments(model, x):
    """E[h^2] entering each block and after the last, computed directly (no instrumentation)."""
    return np.asarray(_moments(model, x), np.float64)


@pytest.mark.parametrize("init", ["lecun", "he"])
def test_forward_variance_matches_the_branch_scaled_recursion(init):
    """Width 512, depth 24: the stream's second moment, block by block, within 10 % of the
    population-dynamics prediction (3 seeds; lecun within 5 %, he's larger growth drifts up to
    8 % low at finite width); the unscaled residual net's grows geometrically instead."""
    x = jax.random.normal(jax.random.PRNGKey(3), (256, 512))
    measured = np.mean([_stream_second_moments(_mlp(24, width=512, init=init, seed=s,
                                                    in_features=512), x)
                        for s in range(SEEDS)], axis=0)
    alpha = gf.models.initial_branch_scale(11)
    pred = T.residual_profile(24, init=init, branch_scale=alpha)["q"]
    np.testing.assert_allclose(measured / measured[0], pred / pred[0], rtol=0.1)
    assert pred[-1] / pred[0] < math.exp(T.sigma_w2(init) ** 2 / 2)  # bounded: e^gain
    unscaled = T.residual_profile(24, init=init)["q"]
    assert unscaled[-1] / unscaled[0] > 20 * pred[-1] / pred[0]


@pytest.mark.parametrize("init", ["lecun", "he"])
def test_error_profile_matches_theory_layer_by_layer(init):
    """As tests/test_theory.py checks the other residual archs: every hidden layer's log10
    error norm (relative to the last hidden layer) within 4 standard errors + 0.03 decades,
    and the attenuation layer 1 / output layer within 10 %."""
    depth, x = 24, jax.random.normal(jax.random.PRNGKey(7), (256, 256))
    y = jnp.arange(256) % 10
    snaps = [gf.probe(_mlp(depth, width=256, init=init, seed=s, in_features=256), (x, y))
             for s in range(SEEDS)]
    per_seed = [np.log10(np.asarray(s["error_norm"], np.float64))[1:-1] for s in snaps]
    per_seed = [p - p[-1] for p in per_seed]
    pred = np.log10(T.predicted_profile("error_norm", depth, arch="residual_scaled", init=init,
                                        activation="relu"))[1:-1]
    diff = np.mean(per_seed, axis=0) - (pred - pred[-1])
    tol = 4 * np.std(per_seed, axis=0, ddof=1) / math.sqrt(SEEDS) + 0.03
    assert np.all(np.abs(diff) < tol), np.round(diff, 3)
    ratio = np.mean([s["error_norm"][0] / s["error_norm"][-1] for s in snaps])
    assert ratio == pytest.approx(T.theory_attenuation("residual_scaled", depth, model="mlp",
                                                       init=init, activation="relu"), rel=0.1)
    assert T.predicted_profile("grad_norm", depth, arch="residual_scaled", init=init,
                               activation="relu") is None  # not modelled, as for residual


def _blobs(seed=0, n_train=2048, n_test=512, classes=4, dim=16):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim))

    def split(n):
        y = rng.integers(0, classes, n)
        x = centers[y] + 0.7 * rng.standard_normal((n, dim))
        return x.reshape(n, 4, 4, 1).astype(np.float32), y.astype(np.int32)

    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    return Dataset("blobs", xtr, ytr, xte, yte, classes)


def test_at_depth_50_skip_connections_alone_train_when_the_branch_starts_small():
    """The run's own path (train_arch) on a depth-50 MLP without normalization, Flax's lecun
    init, SGD with momentum: the unscaled residual net's forward signal explodes and it
    diverges; with the branch scaled by 1/sqrt(24) the error signal reaches layer 1 (ratio
    near 1, as predicted) and it learns."""
    cfg = Config(model="mlp", depth=50, width=32, steps=60, log_every=10)
    ds = _blobs()
    residual = train_arch("residual", cfg, ds)
    assert residual.status == "diverged"
    scaled = train_arch("residual_scaled", cfg, ds)
    assert scaled.status == "ok" and scaled.held_out_accuracy > 0.9  # chance: 0.25
    e = scaled.history["error_norm"]
    assert 0.5 < e[0, 0] / e[0, -1] < 2 and 0.3 < e[-1, 0] / e[-1, -1] < 3
    assert e[0, 0] / e[0, -1] == pytest.approx(T.theory_attenuation(
        "residual_scaled", 50, model="mlp", init="lecun", activation="relu"), rel=0.35)
