"""`same_code.code_key`: equal for functions and optax transformations that compute the same
thing, different where anything they compute with differs, identity where it cannot tell; and
gradflow's compiled steps reused across optimizer objects built alike."""
import jax.numpy as jnp
import optax
from flax import nnx

import gradflow as gf
from gradflow.instrument.same_code import code_key
from gradflow.instrument.steps import layout_for, train_steps
from gradflow.losses import LOSSES
from gradflow.probe import split_model

SCALE = 2.0
TABLE = [1.0]


def _scaled(x):
    return SCALE * x


def _from_table(x):
    return TABLE[0] * x


def _factorial(n):
    return 1 if n <= 1 else n * _factorial(n - 1)


def test_optax_transformations_built_alike_have_equal_keys():
    assert code_key(optax.sgd(0.1, momentum=0.9)) == code_key(optax.sgd(0.1, momentum=0.9))
    assert hash(code_key(optax.adam(1e-3))) == hash(code_key(optax.adam(1e-3)))
    sched = lambda: optax.adamw(optax.cosine_decay_schedule(1e-3, 100), weight_decay=1e-4)
    assert code_key(sched()) == code_key(sched())


def test_anything_they_compute_with_differs_the_key():
    assert code_key(optax.sgd(0.1)) != code_key(optax.sgd(0.2))
    assert code_key(optax.sgd(0.1)) != code_key(optax.sgd(0.1, momentum=0.9))
    assert code_key(optax.adam(1e-3)) != code_key(optax.adamw(1e-3))
    assert (code_key(optax.adamw(optax.cosine_decay_schedule(1e-3, 100)))
            != code_key(optax.adamw(optax.cosine_decay_schedule(1e-3, 200))))


def test_globals_are_keyed_by_their_values_now(monkeypatch):
    # a step is traced with the values its functions read when it is built; a later value is
    # a later key, hence a new step
    before = code_key(_scaled), code_key(_from_table)
    monkeypatch.setitem(_scaled.__globals__, "SCALE", 3.0)
    TABLE.append(5.0)
    try:
        assert code_key(_scaled) != before[0] and code_key(_from_table) != before[1]
    finally:
        TABLE.pop()
    assert code_key(_from_table) == before[1]


def test_what_it_cannot_pin_down_is_keyed_by_identity():
    lr = jnp.asarray(0.1)
    schedule = lambda step: lr  # a device array in the closure
    assert code_key(schedule) is schedule
    assert code_key(optax.sgd(schedule)) is not code_key(optax.sgd(schedule))


def test_recursive_functions_are_keyed():
    key = code_key(_factorial)
    assert key is not _factorial and key == code_key(_factorial)


def test_train_steps_are_shared_by_optimizers_built_alike():
    model = gf.models.mlp("plain", 3, width=4, in_features=3, num_classes=2, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    layout = layout_for(graphdef, params, rest, jnp.ones((4, 3)))
    steps = lambda tx: train_steps(graphdef, layout, *LOSSES["cross_entropy"], tx)
    first = steps(optax.sgd(0.1, momentum=0.9))
    assert steps(optax.sgd(0.1, momentum=0.9)) is first
    assert steps(optax.sgd(0.2, momentum=0.9)) is not first
