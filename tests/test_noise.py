"""Gradient noise quantities against an explicit per-example reference in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradflow as gf
from gradflow.instrument.steps import layout_for
from gradflow.probe import split_model
from gradflow.quantities.histograms import EDGES, HIST_BINS
from gradflow.quantities.rows import row_segments
from gradflow.quantities.steps import noise_step
from reference import noise_reference

CE = gf.losses.cross_entropy
X = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
Y = jnp.array([0, 1, 1, 0, 1, 0, 0, 1])


def _mlp(stack):
    return gf.models.mlp("residual", 4, width=4, in_features=3, num_classes=2,
                         rngs=nnx.Rngs(0), stack=stack)


def _rows(model, params):
    """Each row's parameters as index lists into the flat float64 parameter vector, found from
    the module paths (independently of gradflow.quantities.rows)."""
    graphdef, p, rest = split_model(model)
    layout = layout_for(graphdef, p, rest, X, model)
    leaves = nnx.to_flat_state(params)
    offsets, start = {}, 0
    for path, v in leaves:
        offsets[tuple(path)] = (start, np.shape(v.get_value()))
        start += int(np.prod(np.shape(v.get_value())))
    rows = []
    for r in layout.rows:
        idx = []
        for path, (s, shape) in offsets.items():
            if path[:-1] != r.kernel_path[:-1]:
                continue
            flat = np.arange(s, s + int(np.prod(shape))).reshape(shape)
            idx.extend((flat if r.index is None else flat[r.index]).ravel())
        rows.append(np.asarray(idx))
    return rows


def _flat(tree):
    return np.concatenate([np.asarray(v.get_value(), np.float64).ravel()
                           for _, v in nnx.to_flat_state(tree)])


def _example_grads(model, loss_scale=1.0):
    graphdef, params, rest = split_model(model)
    rows = []
    for n in range(len(X)):
        def loss(p):
            return loss_scale * CE(nnx.merge(graphdef, p, rest)(X[n:n + 1]), Y[n:n + 1])
        rows.append(_flat(jax.grad(loss)(params)))
    return np.stack(rows), params


def _measured(model, loss=CE, chunk=4):
    graphdef, params, rest = split_model(model)
    layout = layout_for(graphdef, params, rest, X, model)
    out = noise_step(graphdef, row_segments(params, layout), loss, chunk)(params, rest, X, Y)
    return jax.device_get(out)


@pytest.mark.parametrize("stack", ["unrolled", "scan"])
def test_whole_network_and_per_layer_values_equal_the_per_example_reference(stack):
    model = _mlp(stack)
    G, params = _example_grads(model)
    got = _measured(model)
    want = noise_reference(G)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=2e-3, err_msg=k)
    for r, idx in enumerate(_rows(model, params)):
        want = noise_reference(G[:, idx])
        for k, v in want.items():
            np.testing.assert_allclose(got[f"layer_{k}"][r], v, rtol=2e-3, err_msg=f"{k} row {r}")
    assert float(got["noise_mean_reduced"]) == 1.0


def test_chunking_does_not_change_the_values():
    model = _mlp("unrolled")
    a, b = _measured(model, chunk=8), _measured(model, chunk=2)
    for k in ("norm_test", "inner_test", "ortho_test", "mean_gsnr", "layer_norm_test"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5)
    np.testing.assert_array_equal(a["example_grad_hist"], b["example_grad_hist"])


def test_vanishing_gradients_keep_their_tests_and_gsnr_follows_its_absolute_epsilon():
    model = _mlp("unrolled")
    scale = 1e-25  # per-example gradients ~1e-25: their float32 squares underflow to 0
    tiny = _measured(model, loss=lambda o, y: scale * CE(o, y))
    ref = _measured(model)
    for k in ("norm_test", "inner_test", "ortho_test", "layer_norm_test", "layer_inner_test",
              "layer_ortho_test"):
        np.testing.assert_allclose(tiny[k], ref[k], rtol=1e-4, err_msg=k)
    # g² ~ 1e-50 against ε = 1e-5: by definition their GSNR (~1e-47) is 0 in float32
    assert 0 <= tiny["mean_gsnr"] < 1e-30
    small = 1e-3  # g² ~ 1e-8, below ε: the GSNR shrinks with the gradients, as defined
    G, _ = _example_grads(model, loss_scale=small)
    got = _measured(model, loss=lambda o, y: small * CE(o, y))
    np.testing.assert_allclose(got["mean_gsnr"], noise_reference(G)["mean_gsnr"], rtol=2e-3)
    assert got["mean_gsnr"] < 0.1 * ref["mean_gsnr"]


def test_per_example_histograms_count_every_element_of_every_example():
    model = _mlp("unrolled")
    G, params = _example_grads(model)
    got = _measured(model)["example_grad_hist"]
    assert got.shape == (len(_rows(model, params)), HIST_BINS)
    for r, idx in enumerate(_rows(model, params)):
        mags = np.abs(G[:, idx].astype(np.float32)).ravel()
        want = np.bincount(np.searchsorted(EDGES, mags, side="right"), minlength=HIST_BINS)
        np.testing.assert_array_equal(got[r], want)


def test_a_sum_reduced_loss_is_flagged_and_gives_no_numbers():
    model = _mlp("unrolled")
    out = _measured(model, loss=lambda o, y: len(y) * CE(o, y))
    assert float(out["noise_mean_reduced"]) == 0.0
    assert np.isnan(out["norm_test"]) and np.isnan(out["layer_mean_gsnr"]).all()
    assert (out["example_grad_hist"] == -1).all()


def test_batchnorm_examples_use_the_batch_statistics_held_fixed():
    """Reference: the eval-mode model with running statistics set to the batch's, per-example
    losses from one batched forward, per-example gradients by jax.jacrev."""
    model = gf.models.mlp("bn", 3, width=4, in_features=3, num_classes=2, rngs=nnx.Rngs(0),
                          stack="unrolled")
    got = _measured(model)
    ref = nnx.clone(model)
    for _, m in nnx.iter_modules(ref):
        if isinstance(m, nnx.BatchNorm):
            m.momentum = 0.0
    ref(X)
    ref.eval()
    graphdef, params, rest = split_model(ref)

    def losses(p):
        logits = nnx.merge(graphdef, p, rest)(X)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), Y[:, None], 1)[:, 0]

    jac = jax.jacrev(losses)(params)
    G = np.concatenate([np.asarray(v.get_value(), np.float64).reshape(len(X), -1)
                        for _, v in nnx.to_flat_state(jac)], axis=1)
    for k, v in noise_reference(G).items():
        np.testing.assert_allclose(got[k], v, rtol=2e-3, err_msg=k)


def test_log_bins_put_every_edge_and_its_float32_neighbours_where_a_binary_search_does():
    from gradflow.quantities.histograms import log_bin_counts
    values = [0.0, np.inf, -np.inf, np.nan, 1e-40, 1e-30, 3e38]
    for e in EDGES:
        e = np.float32(e)
        values += [e, np.nextafter(e, np.float32(0)), np.nextafter(e, np.float32(np.inf)), -e]
    rng = np.random.default_rng(0)
    values = np.concatenate([np.asarray(values, np.float32),
                             np.exp(rng.normal(size=20000) * 20).astype(np.float32)])
    mag = np.abs(values)
    want = np.where(np.isfinite(mag), np.searchsorted(EDGES, mag, side="right"), HIST_BINS - 1)
    got = jax.jit(log_bin_counts)(jnp.asarray(values))
    np.testing.assert_array_equal(got, np.bincount(want, minlength=HIST_BINS))


def test_zero_variance_elements_get_the_exact_gsnr_and_tests_without_cancellation():
    """Every example's gradient equal (as for the head bias of a class absent from the batch,
    with vanished features): variance 0, so each element's GSNR is g²/ε and the norm test 0;
    sums of gₙ² minus B g² in float32 get neither exactly."""
    from gradflow.quantities.noise import noise
    B = 32
    same = nnx.State({"w": jnp.full((8, 5), 0.1, jnp.float32)})  # each chunk of 8 examples
    mean = nnx.State({"w": jnp.full(5, 0.1, jnp.float32)})
    out = jax.jit(lambda: noise(lambda ex: (jnp.zeros(8), same), mean, (((("w",), None),),),
                                jnp.zeros((B, 1)), chunk=8))()
    np.testing.assert_allclose(out["mean_gsnr"], 0.1 ** 2 / 1e-5, rtol=1e-6)
    assert float(out["norm_test"]) == 0.0 and float(out["inner_test"]) == 0.0
