"""gf.flops.costs: per-layer parameters and multiply-adds against the closed forms and Keras'
parameter counts. Models are built abstractly (nnx.eval_shape: shapes only, no random init to
compile), which costs needs no more than a real model."""
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import gradflow as gf
from gradflow.analysis.flops import costs

abstract = nnx.eval_shape


class TwoConvs(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)  # SAME padding: 11x11 -> 6x6
        self.b = nnx.Conv(8, 5, (5, 5), padding="VALID", use_bias=False, rngs=rngs)  # -> 2x2
        self.fc = nnx.Linear(5, 7, rngs=rngs)

    def __call__(self, x):
        x = self.b(nnx.relu(self.a(x)))
        return self.fc(jnp.mean(x, axis=(1, 2)))


def test_standard_conv_and_dense_match_closed_forms():
    c = costs(abstract(lambda: TwoConvs(nnx.Rngs(0))), (11, 11, 3))
    a, b, fc = c.layers
    h = math.ceil(11 / 2)
    assert (a.name, a.kind, a.output_shape) == ("a", "conv 3x3", (h, h, 8))
    assert a.params == 3 * 3 * 3 * 8 + 8 and a.macs == 3 * 3 * 3 * 8 * h * h
    assert (b.kind, b.output_shape) == ("conv 5x5", (2, 2, 5))
    assert b.params == 5 * 5 * 8 * 5 and b.macs == 5 * 5 * 8 * 5 * 2 * 2
    assert (fc.kind, fc.params, fc.macs) == ("dense", 5 * 7 + 7, 5 * 7)
    assert c.macs == a.macs + b.macs + fc.macs and c.model_params == c.layer_params


@pytest.mark.parametrize("cin,cout,k,size", [(8, 16, 3, 10), (32, 32, 3, 6), (4, 12, 5, 7)])
def test_separable_conv_is_depthwise_plus_pointwise_as_keras_counts(cin, cout, k, size):
    layer = abstract(lambda: gf.models.SeparableConv(
        cin, cout, (k, k), kernel_init=nnx.initializers.lecun_normal(), rngs=nnx.Rngs(0)))
    dw, pw = costs(layer, (size, size, cin)).layers
    hw = size * size  # SAME padding, stride 1
    assert dw.kind == f"depthwise {k}x{k}" and pw.kind == "conv 1x1"
    assert dw.params == k * k * cin and dw.macs == k * k * cin * hw
    assert pw.params == cin * cout + cout and pw.macs == cin * cout * hw
    # Keras SeparableConv2D(cout, k): depthwise k*k*cin (no bias) + pointwise cin*cout + cout bias
    assert dw.params + pw.params == k * k * cin + cin * cout + cout
    std = costs(abstract(lambda: nnx.Conv(cin, cout, (k, k), rngs=nnx.Rngs(0))),
                (size, size, cin)).layers[0]
    assert std.params == k * k * cin * cout + cout  # Keras Conv2D
    ratio = (dw.macs + pw.macs) / std.macs
    assert ratio == pytest.approx(1 / cout + 1 / (k * k))


def test_seed_model_layers_match_keras_parameters():
    c = costs(abstract(lambda: gf.models.seed_resnet(rngs=nnx.Rngs(0))), (32, 32, 3))
    by = {r.name: r for r in c.layers}
    keras = {"blocks/0/unit1/layer": 896, "blocks/0/unit2/layer": 9248, "blocks/0/projection": 128,
             "blocks/1/unit1/layer": 18496, "blocks/1/unit2/layer": 36928,
             "blocks/1/projection": 2112, "blocks/2/unit1/layer": 73856,
             "blocks/2/unit2/layer": 147584, "blocks/2/projection": 8320, "head": 129}
    assert {n: r.params for n, r in by.items()} == keras
    assert c.model_params == 297_697
    # conv 3->32 at 32x32; 1x1 stride-2 projection 3->32 at 16x16; 64->128 at 8x8
    assert by["blocks/0/unit1/layer"].macs == 9 * 3 * 32 * 32 * 32
    assert by["blocks/0/projection"].macs == 3 * 32 * 16 * 16
    assert by["blocks/2/unit1/layer"].macs == 9 * 64 * 128 * 8 * 8


def test_zoo_model_totals_and_repeated_calls():
    model = abstract(lambda: gf.models.cnn("residual_bn", 6, width=4, conv="separable", stages=2,
                                           rngs=nnx.Rngs(0)))
    c = costs(model, (8, 8, 3))
    assert c.model_params == gf.summary(model, (8, 8, 3)).trainable  # BN scale/offset included
    assert c.layer_params < c.model_params
    kinds = c.by_kind()
    assert sum(p for p, _ in kinds.values()) == c.layer_params
    assert "depthwise 3x3" in kinds and "conv 1x1" in kinds

    class Twice(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 4, rngs=rngs)

        def __call__(self, x):
            return self.fc(self.fc(x))

    names = [r.name for r in costs(abstract(lambda: Twice(nnx.Rngs(0))), (4,)).layers]
    assert names == ["fc", "fc#2"]
    assert "MACs" in str(c) and c.to_dict()["macs"] == c.macs
    with pytest.raises(ValueError, match="nnx.Module"):
        costs(lambda x: x, (4,))


def test_scanned_stacks_count_every_block_and_other_scans_are_refused():
    """A registered scanned stack counts each block like the unrolled layer (the zoo's Stack:
    the same rows and totals as the unrolled model); a layer in an unregistered scan is traced
    once for all its iterations, so it is refused rather than silently undercounted."""
    def mlp(stack):
        return abstract(lambda: gf.models.mlp("plain", 6, width=8, in_features=12, num_classes=3,
                                              stack=stack, rngs=nnx.Rngs(0)))
    scanned, unrolled = costs(mlp("scan"), (12,)), costs(mlp("unrolled"), (12,))
    assert len(scanned.layers) == 6 and scanned.layers == unrolled.layers
    assert scanned.layers[1].name == "stages/0/rest/blocks/0/layer"
    assert (scanned.model_params, scanned.macs) == (unrolled.model_params, unrolled.macs)

    class LaxScan(nnx.Module):
        def __init__(self, rngs):
            self.block = nnx.vmap(lambda k: nnx.Linear(4, 4, rngs=nnx.Rngs(k)))(
                jax.random.split(rngs.params(), 3))

        def __call__(self, x):
            graphdef, state = nnx.split(self.block)
            return jax.lax.scan(lambda h, s: (nnx.merge(graphdef, s)(h), None), x, state)[0]

    with pytest.raises(ValueError, match="unrolled"):
        costs(abstract(lambda: LaxScan(nnx.Rngs(0))), (4,))


class Block(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.fc(x))


@gf.instrument.register_scanned_stack(block=lambda m: m.block, length=lambda m: 3)
class Repeat(nnx.Module):
    """A user's scanned stack, registered without `names`: rows `<stack>/block/<i>/...`."""

    def __init__(self, rngs):
        self.block = nnx.vmap(lambda k: Block(nnx.Rngs(k)))(jax.random.split(rngs.params(), 3))

    def __call__(self, x):
        graphdef, state = nnx.split(self.block)
        return jax.lax.scan(lambda h, s: (nnx.merge(graphdef, s)(h), None), x, state)[0]


class RepeatNet(nnx.Module):
    def __init__(self, rngs):
        self.stack = Repeat(rngs)
        self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(self.stack(x))


def test_a_users_registered_stack_is_counted_per_iteration_under_its_default_names():
    c = costs(abstract(lambda: RepeatNet(nnx.Rngs(0))), (4,))
    assert [r.name for r in c.layers] == ["stack/block/0/fc", "stack/block/1/fc",
                                          "stack/block/2/fc", "out"]
    assert c.macs == 3 * 16 + 8 and c.model_params == c.layer_params == 3 * 20 + 10
