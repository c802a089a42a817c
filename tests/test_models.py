"""The zoo: shapes, parameter counts, depth semantics, argument checks, every combination."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow import models as M


def n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_seed_resnet_matches_keras():
    model = M.seed_resnet(rngs=nnx.Rngs(0))
    # Keras model.summary() of the seed's listing: 896+9248+128 | 18496+36928+2112 |
    # 73856+147584+8320 | 129
    assert n_params(model) == 297_697
    x = jnp.full((2, 32, 32, 3), 255.0)

    shapes = []

    @nnx.jit  # one compiled program, not one per eager op; the shapes are noted when traced
    def run(model, x):
        h = x / 255
        for block in model.blocks:
            h = block(h)
            shapes.append(h.shape)
        return model(x)

    p = run(model, x)
    assert shapes == [(2, 16, 16, 32), (2, 8, 8, 64), (2, 8, 8, 128)]
    assert p.shape == (2, 1) and bool(jnp.all((p > 0) & (p < 1)))
    one_by_one = [np.broadcast_to(m.strides, 2).tolist() for _, m in nnx.iter_modules(model)
                  if isinstance(m, nnx.Conv) and tuple(m.kernel_size) == (1, 1)]
    assert sorted(one_by_one) == [[1, 1], [2, 2], [2, 2]]  # two strided (pooling), one plain


def test_seed_without_shortcuts_has_no_projections():
    model = M.seed_resnet(shortcuts=False, rngs=nnx.Rngs(0))
    assert n_params(model) == 297_697 - 128 - 2112 - 8320


def count_depth(snapshot_layers, model):
    """Weight layers on the longest path: rows minus shortcut projections and depthwise halves."""
    return sum(1 for n in snapshot_layers if "shortcut" not in n and not n.endswith("depthwise"))


@pytest.mark.parametrize("arch,depth,stages,conv", [
    ("plain", 5, 1, "standard"), ("bn", 7, 3, "standard"), ("residual", 8, 2, "standard"),
    pytest.param("residual_bn", 10, 3, "separable", marks=pytest.mark.slow),
    ("plain", 2, 1, "standard")])
def test_depth_counts_weight_layers_on_longest_path(arch, depth, stages, conv):
    """The rows are fixed when the probe is traced: built and probed abstractly
    (jax.eval_shape: nothing initialized, compiled or run)."""
    x, y, rows = jnp.ones((2, 8, 8, 3)), jnp.zeros(2, jnp.int32), []

    def probe():
        model = M.cnn(arch, depth, width=4, stages=stages, conv=conv, rngs=nnx.Rngs(0))
        rows.append((gf.probe(model, (x, y)).layers, model))

    jax.eval_shape(probe)
    assert count_depth(*rows[0]) == depth


def test_pyramid_stages_double_width_and_halve_resolution():
    """Shapes only: built and run abstractly (jax.eval_shape: nothing initialized or run)."""
    feats, built = [], []

    def run():
        model = M.cnn("residual_bn", 14, width=4, stages=3, rngs=nnx.Rngs(0))
        h = model.stem(jnp.ones((1, 16, 16, 3)))
        for stage in model.stages:
            h = stage(h)
            feats.append(h.shape)
        built.append(model)

    jax.eval_shape(run)
    model = built[0]
    assert feats == [(1, 16, 16, 4), (1, 8, 8, 8), (1, 4, 4, 16)]
    assert model.stages[1].first.shortcut is not None  # strided 1x1 projection
    assert np.broadcast_to(model.stages[1].first.shortcut.layer.strides, 2).tolist() == [2, 2]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(arch="deep"), "arch"), (dict(depth=0), "depth"), (dict(depth=-3), "depth"),
    (dict(width=0), "width"), (dict(init="zeros"), "init"), (dict(activation="swish2"), "activation"),
    (dict(conv="dilated"), "conv"), (dict(arch="residual", depth=7), "even"),
    (dict(depth=1), "minimum"), (dict(depth=10_001), "maximum"), (dict(stack="loop"), "stack"),
    (dict(depth=2.5), "depth"), (dict(stages=0), "stages")])
def test_bad_arguments_raise_value_error_naming_them(kwargs, needle):
    args = dict(arch="plain", depth=4) | kwargs
    with pytest.raises(ValueError, match=needle):
        M.cnn(args.pop("arch"), args.pop("depth"), rngs=nnx.Rngs(0), **args)


def test_bad_init_message_lists_accepted_values():
    with pytest.raises(ValueError) as e:
        M.mlp("plain", 4, width=4, in_features=3, num_classes=2, init="zeros", rngs=nnx.Rngs(0))
    assert "'lecun'" in str(e.value) and "'orthogonal'" in str(e.value)


@pytest.mark.parametrize("arch,conv", [
    pytest.param(a, c, marks=[pytest.mark.slow] if c == "separable" else [])
    for a, c in itertools.product(M.ARCHS, M.CONVS)])
def test_every_arch_conv_init_activation_builds_and_steps(arch, conv):
    x, y = jnp.ones((2, 6, 6, 3)), jnp.array([0, 1])
    for init, act in itertools.product(M.INITS, ("relu", "tanh", "sigmoid")):
        model = M.cnn(arch, 4, width=4, conv=conv, init=init, activation=act, rngs=nnx.Rngs(0))
        snap = gf.probe(model, (x, y))
        assert np.all(np.isfinite(snap["grad_norm"])) and np.all(snap["grad_norm"] > 0)
        assert np.all(np.isfinite(snap["error_norm"]))


@pytest.mark.parametrize("arch", M.ARCHS)
def test_mlp_archs_step(arch):
    import optax
    model = M.mlp(arch, 6, width=8, in_features=12, num_classes=3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3, 4))
    y = jnp.arange(8) % 3
    h = gf.train(model, [(x, y)] * 2, steps=2, optimizer=optax.sgd(0.1))
    assert h["grad_norm"].shape == (2, 6) and np.all(np.isfinite(h["loss"]))


@pytest.mark.slow
def test_depth_10000_builds_scanned():
    model = M.mlp("residual", 10_000, width=4, in_features=4, num_classes=2, stack="scan",
                  rngs=nnx.Rngs(0))
    kernel = model.stages[0].rest.block.unit1.layer.kernel
    assert kernel.shape == (4999, 4, 4)
    cnn = M.cnn("plain", 10_000, width=2, stack="scan", rngs=nnx.Rngs(0))
    assert cnn.stages[0].rest.block.layer.kernel.shape == (9998, 3, 3, 2, 2)


def test_scan_and_unrolled_have_same_layer_names():
    """The rows are fixed when the probe is traced, so build and probe abstractly
    (jax.eval_shape: no weights initialized, nothing compiled or run)."""
    x, y = jnp.ones((2, 6, 6, 3)), jnp.array([0, 1])
    names = []

    def probe(stack):
        model = M.cnn("residual_bn", 10, width=4, stages=2, stack=stack, rngs=nnx.Rngs(0))
        names.append(gf.probe(model, (x, y)).layers)

    for s in ("unrolled", "scan"):
        jax.eval_shape(lambda: probe(s))
    assert names[0] == names[1] and len(names[0]) == 11  # 10 + one projection shortcut
