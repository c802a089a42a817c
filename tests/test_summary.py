"""gf.summary: the hierarchy with output shapes and parameter counts (Keras semantics)."""
import jax.numpy as jnp
from flax import nnx

import gradflow as gf


def rows_by_name(s):
    return {"/".join(map(str, r.path)): r for r in s.rows}


def test_seed_model_matches_keras_counts_and_shapes():
    s = gf.summary(gf.models.seed_resnet(rngs=nnx.Rngs(0)), (32, 32, 3))
    r = rows_by_name(s)
    assert s.total == 297_697 and r[""].params == 297_697
    # Keras: conv 896, 9248, shortcut 128 | 18496, 36928, 2112 | 73856, 147584, 8320 | dense 129
    assert [r[f"blocks/{i}"].params for i in range(3)] == [896 + 9248 + 128,
                                                         18496 + 36928 + 2112,
                                                         73856 + 147584 + 8320]
    assert r["blocks/0/projection"].params == 128 and r["head"].params == 129
    assert r["blocks/0"].output_shape == (None, 16, 16, 32)
    assert r["blocks/2"].output_shape == (None, 8, 8, 128)
    assert r["blocks/0/projection"].output_shape == (None, 16, 16, 32)  # 1x1, stride 2
    assert r[""].output_shape == (None, 1)
    text = str(s)
    assert "297,697" in text and "projection: Conv" in text
    # network order: the blocks before the head, children indented under parents
    names = [line.strip().split(":")[0] for line in text.splitlines()]
    assert names.index("blocks") < names.index("head")


def test_every_row_sums_its_children():
    model = gf.models.cnn("residual_bn", 10, width=4, stages=2, rngs=nnx.Rngs(0))
    s = gf.summary(model, (8, 8, 3))
    for row in s.rows:
        kids = [r for r in s.rows if r.path[:-1] == row.path and len(r.path) == len(row.path) + 1]
        if kids:
            assert row.params == sum(k.params for k in kids), row.path


def test_user_model_and_depth_limit():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)
            self.fc = nnx.Linear(8, 10, rngs=rngs)

        def __call__(self, x):
            return self.fc(jnp.mean(nnx.relu(self.conv(x)), axis=(1, 2)))

    s = gf.summary(Net(nnx.Rngs(0)), (16, 16, 3), max_depth=1)
    r = rows_by_name(s)
    assert r["conv"].output_shape == (None, 8, 8, 8) and r["conv"].params == 3 * 9 * 8 + 8
    assert r["fc"].params == 90 and s.total == 224 + 90
    assert [row.path for row in s.rows] == [(), ("conv",), ("fc",)]


def test_batchnorm_statistics_are_non_trainable_and_freezing_moves_scale_and_offset():
    """Keras semantics: BN holds 4C arrays, 2C of them (the running statistics) non-trainable;
    after freezing, scale and offset are non-trainable too and the total is unchanged."""
    model = gf.models.cnn("residual_bn", 10, width=4, stages=2, rngs=nnx.Rngs(0))
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    channels = sum(bn.mean.get_value().size for bn in bns)  # a scanned stack's BN: per block
    assert len(bns) > 5 and channels > 0
    kernels = sum(p.get_value().size for _, p in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    s = gf.summary(model, (8, 8, 3))
    assert (s.total, s.trainable, s.non_trainable) == (kernels + 2 * channels, kernels,
                                                       2 * channels)
    assert "non-trainable: " + f"{2 * channels:,}" in str(s)
    assert rows_by_name(s)[""].params == s.total
    gf.freeze_batchnorm(model)
    frozen = gf.summary(model, (8, 8, 3))
    assert frozen.total == s.total and frozen.non_trainable == 4 * channels
