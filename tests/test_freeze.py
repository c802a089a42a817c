"""Freezing BatchNorm (Keras trainable=False): statistics used and not updated, scale and
offset not trained, everything else trained."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradflow as gf
from gradflow.models.freeze import batchnorm_arrays

X = jax.random.normal(jax.random.PRNGKey(0), (16, 8, 8, 3))
Y = jnp.arange(16) % 10


def test_frozen_bn_is_untouched_by_fine_tuning_and_the_rest_trains():
    model = gf.models.cnn("residual_bn", 6, width=4, rngs=nnx.Rngs(0))
    gf.train(model, [(X, Y)] * 3, steps=3, optimizer=optax.sgd(0.1))  # "pretraining"
    assert gf.freeze_batchnorm(model) == 5  # stem + 2 blocks x 2
    before_bn = batchnorm_arrays(model)
    kernel0 = np.asarray(model.stem.layer.kernel.get_value())
    h = gf.train(model, [(X * 2, (Y + 1) % 10)] * 4, steps=4, optimizer=optax.adam(1e-2))
    after_bn = batchnorm_arrays(model)
    for k in before_bn:
        np.testing.assert_array_equal(before_bn[k], after_bn[k])
    assert not np.allclose(kernel0, model.stem.layer.kernel.get_value())
    assert np.all(np.isfinite(h["loss"]))
    # probing a frozen model uses the running statistics: same as the model's own eval output
    snap = gf.probe(model, (X, Y))
    logits = model(X)
    np.testing.assert_allclose(snap["loss"], gf.losses.cross_entropy(logits, Y), rtol=1e-5)


def test_unfreeze_restores_training_mode():
    model = gf.models.mlp("bn", 4, width=8, in_features=5, num_classes=3, rngs=nnx.Rngs(0))
    gf.freeze_batchnorm(model)
    gf.unfreeze_batchnorm(model)
    before = batchnorm_arrays(model)
    x, y = jax.random.normal(jax.random.PRNGKey(1), (8, 5)), jnp.arange(8) % 3
    gf.train(model, [(x, y)], steps=1, optimizer=optax.sgd(0.5))
    after = batchnorm_arrays(model)
    changed = {k[1] for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {"mean", "var", "scale", "bias"}
