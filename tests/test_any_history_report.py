"""gf.report: the run report for any History (a user's loop, gf.train, a dict of both, one
without error norms, one record), each figure an embedded PNG, what is missing named on the
page, one-line errors for bad input, and the page as Chromium renders it."""
import base64
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf

PNG = b"\x89PNG\r\n\x1a\n"
X = jax.random.normal(jax.random.key(0), (32, 6))
Y = jnp.arange(32) % 3
TRANSFORMER = ("embed", "blocks/3/attn/query", "blocks/3/attn/key", "head")


def _model():
    return gf.models.mlp("plain", 4, width=8, in_features=6, num_classes=3, rngs=nnx.Rngs(0))


def _loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@pytest.fixture(scope="module")
def user():
    """A History grown in a user's own loop: no accuracy, with update_ratio."""
    model = _model()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    grad_fn = gf.value_and_grad(_loss)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads, snap = grad_fn(model, x, y)
        return gf.update_ratio(snap, optimizer.update(model, grads))

    history = gf.History()
    for i in range(0, 12, 3):
        history.append(i, step(model, optimizer, X, Y))
    return history


@pytest.fixture(scope="module")
def trained():  # every step recorded: one step function to compile
    return gf.train(_model(), [(X, Y)] * 4, steps=4, optimizer=optax.sgd(0.1), log_every=1)


@pytest.fixture(scope="module")
def user_report(tmp_path_factory, user):
    folder = tmp_path_factory.mktemp("user")
    return folder, gf.report(user, folder / "report.html")


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b, validate=True)
            for b in re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)]


def _notes(page: str) -> str:
    return " ".join(re.findall(r"<p class=note>(.*?)</p>", page, re.S))


def _check(path, expected_figures: int, layers) -> str:
    page = path.read_text()
    images = _images(page)
    assert len(images) == expected_figures == page.count("<img ")
    assert all(png.startswith(PNG) and len(png) > 1000 for png in images)
    assert all(f"<code>{name}</code>" in page for name in layers)
    assert "<h2>Summary</h2>" in page and "<h2>Diagnosis</h2>" in page
    return page


def test_a_user_loop_history(user_report, user):
    folder, path = user_report
    assert path == folder / "report.html" and list(folder.iterdir()) == [path]
    # error and gradient maps, curves, profiles, the error-signal heatmap
    page = _check(path, 5, user.layers)
    assert "No accuracy recorded for history" in _notes(page)
    assert "accuracy at last" in page  # named as not recorded, not a column
    assert "<th>accuracy at last</th>" not in page and "<th>error ratio at first</th>" in page


def test_a_gf_train_history_and_a_dict_of_both(tmp_path, user, trained):
    page = _check(gf.report(trained, tmp_path / "train.html"), 5, trained.layers)
    assert "<th>accuracy at last</th>" in page and "No accuracy" not in page
    both = {"my loop": user, "gf.train": trained}
    page = _check(gf.report(both, tmp_path / "both.html", title="two runs"), 6, user.layers)
    assert "<h1>two runs</h1>" in page
    assert "my loop: error-signal heatmap" in page and "gf.train: error-signal heatmap" in page


def test_a_history_without_probe_metrics(tmp_path, user):
    """An unprobed model's Histories hold NaN error norms and activation statistics."""
    nan = {k: np.full_like(user[k], np.nan) for k in ("error_norm", "act_mean", "act_std")}
    unprobed = gf.History(TRANSFORMER, {"grad_norm": user["grad_norm"], **nan},
                          {"loss": user["loss"]}, {"probed": False}, steps=user.steps)
    page = _check(gf.report({"scan": unprobed}, tmp_path / "r.html"), 3, TRANSFORMER)
    assert "error signal) was not measured for scan" in _notes(page)
    assert "error-signal heatmap" not in page and "<th>error ratio at first</th>" not in page
    assert "<td>error signal not measured" in page  # not "reaches every layer"
    only_grads = gf.History(TRANSFORMER, {"grad_norm": user["grad_norm"]}, steps=user.steps)
    page = _check(gf.report(only_grads, tmp_path / "g.html"), 2, TRANSFORMER)
    assert "No loss recorded for history" in _notes(page)


def test_a_one_record_history(tmp_path, user):
    one = gf.History()
    one.append(5, user.snapshot(-1))
    page = _check(gf.report(one, tmp_path / "one.html"), 5, user.layers)
    assert "1 record, at step 5" in page


@pytest.mark.parametrize("bad, error, words", [
    ([], TypeError, "takes a History or a dict"),
    (gf.Snapshot(("a",), {"grad_norm": np.ones(1)}), TypeError, "not Snapshot"),
    ({}, ValueError, "no History given"),
    ({"a": 1}, TypeError, "must map str names to Histories"),
    (gf.History(), ValueError, "has no records"),
])
def test_bad_histories_are_one_line_errors(tmp_path, bad, error, words):
    with pytest.raises(error, match=words) as e:
        gf.report(bad, tmp_path / "r.html")
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())


def test_a_bad_path_is_a_one_line_error(tmp_path, user):
    with pytest.raises(ValueError, match="is a folder"):
        gf.report(user, tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        gf.report(user, tmp_path / "missing" / "r.html")


CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_chromium_shows_every_figure(user_report):
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                     "(pip install playwright)")
    path = user_report[1]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(path.as_uri())
            images = page.evaluate("Array.from(document.images, i => "
                                   "[i.complete && i.naturalWidth > 0, i.alt])")
            figures = page.evaluate("document.querySelectorAll('h3 + p + img').length")
        finally:
            browser.close()
    assert len(images) == 5 == figures
    assert all(loaded for loaded, _ in images), images
