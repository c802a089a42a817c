"""Issue #15, experiments and numbers: the fine-tuning collapse rule and its reporting, results
over seeds, the docs' results tables as generated blocks that the experiments' output fills,
and the depth sweep's residual theory line (whole, and where it is expected to hold)."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest

import gradflow as gf
from gradflow.experiments import EXPERIMENTS, finetune
from gradflow.experiments.common import over_seeds, seed_rows
from gradflow.experiments.sweep_records import Cell, Sweep

from test_doc_tables import ROOT, generate
from test_experiments import TINY

matplotlib.use("Agg")
CHANCE = 0.212
LN5 = math.log(5)
EVAL_STEPS = list(range(0, 151, 10))


def _history(loss, *, grad=1.0):
    """A fine-tuning History of 3 layers, one record per step (History.from_records)."""
    recs = [{"loss": np.float32(v), "grad_norm": np.full(3, grad, np.float32),
             "update_ratio": np.full(3, 1e-2, np.float32), "dead_frac": np.zeros(3, np.float32),
             "act_std": np.ones(3, np.float32)} for v in loss]
    return gf.History.from_records(("a", "b", "head"), list(range(len(loss))), recs)


def _run(variant, seed, acc, loss):
    hist = _history(loss)
    c = finetune.collapse(EVAL_STEPS, acc, hist.steps, hist["loss"], chance=CHANCE,
                          num_classes=5)
    half = acc[len(acc) // 2:]
    return {"variant": variant, "seed": seed, "final_accuracy": acc[-1],
            "best_accuracy": max(acc), "accuracy_std_second_half": float(np.std(half)),
            "largest_drop": max(a - b for a, b in zip(acc, acc[1:])), "collapsed": c is not None,
            "collapse": c, "train_loss": [float(v) for v in hist["loss"]],
            "loss_steps": hist.steps.tolist(), "eval_steps": EVAL_STEPS, "eval_accuracy": acc,
            "class_shares": [0.192, 0.205, CHANCE, 0.205, 0.186]}


# the shapes of the runs seen in issue #15: learning, a spike at 45, then chance and ln 5
LEARNING = [0.15, 0.3, 0.4, 0.45, 0.5, 0.5, 0.52, 0.5, 0.55, 0.5, 0.57, 0.55, 0.6, 0.55, 0.6, 0.58]
DEAD = [0.14, 0.19, 0.3, 0.46, 0.54, 0.24, 0.21, 0.21, 0.2, 0.19, 0.19, 0.19, 0.19, 0.2, 0.19,
        0.21]
DEAD_LOSS = [1.6 - 0.02 * k for k in range(45)] + [3.93, 2.7, 2.2, 4.96] + [1.61] * 102
GOOD_LOSS = [1.6 - 0.008 * k for k in range(150)]


def test_collapse_finds_the_spike_before_the_last_evaluation_above_chance():
    hist = _history(DEAD_LOSS)
    c = finetune.collapse(EVAL_STEPS, DEAD, hist.steps, hist["loss"], chance=CHANCE,
                          num_classes=5)
    # 0.24 at step 50 is above chance + 2 points: the final stretch starts at 60, but the
    # unbroken run of losses above ln 5 began at 45
    assert c["step"] == 45 and c["at_chance_from"] == 60
    assert c["spike_loss"] == pytest.approx(3.93) and c["loss_before"] < 1.0


@pytest.mark.parametrize("acc,loss,why", [
    (LEARNING, GOOD_LOSS, "learns"),
    ([0.2] * 16, [LN5 + 0.1] * 150, "never above chance: did not learn, not a collapse"),
    (LEARNING[:-1] + [0.2], DEAD_LOSS, "only the last evaluation at chance"),
    (DEAD, [min(v, 1.5) for v in DEAD_LOSS], "at chance without a loss spike"),
    (DEAD[:8] + LEARNING[8:], DEAD_LOSS, "spike, then recovers"),
])
def test_no_collapse(acc, loss, why):
    hist = _history(loss)
    assert finetune.collapse(EVAL_STEPS, acc, hist.steps, hist["loss"], chance=CHANCE,
                             num_classes=5) is None, why


def test_a_non_finite_loss_is_a_collapse_at_its_step():
    loss = GOOD_LOSS[:70] + [float("nan")] * 80
    c = finetune.collapse(EVAL_STEPS, LEARNING, range(150), loss, chance=CHANCE, num_classes=5)
    assert c["step"] == 70 and c["reason"] == "non-finite loss"


def test_collapsed_runs_never_read_as_steady():
    runs = [_run("BN frozen", 0, LEARNING, GOOD_LOSS), _run("BN frozen", 1, DEAD, DEAD_LOSS),
            _run("BN frozen", 2, DEAD, DEAD_LOSS), _run("BN training", 0, LEARNING, GOOD_LOSS)]
    assert runs[1]["accuracy_std_second_half"] < runs[0]["accuracy_std_second_half"]  # the trap
    s = finetune.summarize(runs)
    frozen = s["BN frozen"]
    assert frozen["collapsed"] == 2 and frozen["collapse_steps"] == [45, 45]
    assert frozen["not_collapsed"]["accuracy_std_second_half"][0] == pytest.approx(
        runs[0]["accuracy_std_second_half"])  # the steadiness of the live run only
    assert frozen["all"]["final_accuracy"][0] == pytest.approx(np.mean([0.58, 0.21, 0.21]))
    head, rows = finetune.rows(s)
    assert rows[0][1] == "2/3 (45, 45)" and rows[1][1] == "0/1"
    only_dead = finetune.rows(finetune.summarize(runs[1:3]))[1][0]
    assert only_dead[5] == "—" and only_dead[6] == "—"  # no steadiness for dead runs
    assert "wobble*" in head and "did not collapse" in finetune.FOOTER


def test_figure_marks_collapse_and_draws_the_majority_class_rate():
    runs = [_run("BN frozen", 1, DEAD, DEAD_LOSS), _run("BN training", 0, LEARNING, GOOD_LOSS)]
    fig = finetune.figure(runs, 150)
    ax_a, ax_l = fig.axes
    labels = [ln.get_label() for ln in ax_a.get_lines()]
    assert "BN frozen, seed 1: collapsed at step 45" in labels
    chance = [ln for ln in ax_a.get_lines() if ln.get_label().startswith("majority class")]
    assert chance and chance[0].get_ydata()[0] == pytest.approx(CHANCE)  # not 1/5
    assert any(ln.get_label().startswith("ln 5") for ln in ax_l.get_lines())


# -- the experiments end to end (tiny): collapse in the table and JSON, seeds ---------------------

def _exp(name, experiment_run):
    """(stdout, numbers) of the experiment on test_experiments.TINY's options (2 seeds), the
    run tests/test_experiments.py checks (tests/conftest.py runs it once)."""
    run = experiment_run(name)
    assert run["code"] == 0
    return run["text"], run["numbers"]


def test_batchnorm_reports_collapse_in_table_and_json(experiment_run):
    text, numbers = _exp("batchnorm", experiment_run)
    assert "collapsed (step)" in text and "collapsed: held-out accuracy at chance" in text
    ft = numbers["finetune"]
    assert "collapse_rule" in ft
    for r in ft["runs"]:
        assert r["collapsed"] == (r["collapse"] is not None)
        assert len(r["trace"]["grad_norm_total"]) == len(r["train_loss"]) == len(r["loss_steps"])
    for v in finetune.VARIANTS:
        assert set(ft["summary"][v]) >= {"collapsed", "collapse_steps", "all", "not_collapsed"}
    blocks = _doc_blocks("batchnorm")
    assert generate.excerpt(text, blocks[0].first, blocks[0].last)


@pytest.mark.parametrize("name", ["residual", "separable"])
def test_seeds_give_mean_spread_and_every_seed(name, experiment_run):
    assert EXPERIMENTS[name].options["seeds"] == 3
    assert TINY[name][-2:] == ["--seeds", "2"]
    text, numbers = _exp(name, experiment_run)
    key = "over_seeds" if name == "residual" else "learning_over_seeds"
    assert numbers["seeds"] == [0, 1]
    for s in numbers[key].values():
        assert len(s["held_out_accuracy"]) == 2 and [r["seed"] for r in s["runs"]] == [0, 1]
    assert "over 2 seeds" in text and "per seed" in text
    # the docs' block for this experiment is filled from this output, all its tables included
    (block,) = _doc_blocks(name)
    kept = generate.excerpt(text, block.first, block.last)
    assert kept and "per seed" in "\n".join(kept)


def test_over_seeds_table():
    runs = [{"seed": k, "held_out_accuracy": a, "error_ratio_init": 0.1 * (k + 1),
             "diverged_at": None} for k, a in enumerate([0.663, 0.772, 0.70])]
    s = over_seeds(runs)
    assert s["held_out_accuracy_mean"] == pytest.approx(0.711667, abs=1e-6)
    assert s["held_out_accuracy_std"] == pytest.approx(np.std([0.663, 0.772, 0.70], ddof=1))
    _, rows = seed_rows({"m": s})
    assert rows[0][1] == "71.2% ± 5.5%" and rows[0][2] == "66.3% / 77.2% / 70.0%"


# -- the docs -------------------------------------------------------------------------------------

def _doc_blocks(name, page="experiments.md"):
    path = ROOT / "docs" / page
    return [b for b in generate.find_blocks(path, path.read_text().splitlines())
            if b.cmd == f"python -m gradflow.run --experiment {name}"]


def test_every_results_table_of_the_experiments_page_is_generated():
    path = ROOT / "docs" / "experiments.md"
    lines = path.read_text().splitlines()
    inside = set()
    for b in generate.find_blocks(path, lines):
        inside |= set(range(b.start, b.end + 1))
    results = lines.index("## Results at the defaults")
    stray = [i + 1 for i, ln in enumerate(lines) if i > results and i not in inside
             and ln.startswith("|")]
    assert not stray, f"hand-written table rows at lines {stray}"
    for name in ("residual", "batchnorm", "separable"):
        assert len(_doc_blocks(name)) == 1  # one block: every table of the run, one run


def test_theory_page_has_the_width_measurement_as_generated_blocks():
    path = ROOT / "docs" / "theory.md"
    cmds = [b.cmd for b in generate.find_blocks(path, path.read_text().splitlines())]
    widths = {int(c.split("--width ")[1].split()[0]) for c in cmds if "--model mlp" in c}
    assert {64, 256, 1024} <= widths


# -- the depth sweep's theory line ------------------------------------------------------------------

def _sweep(depths=(8, 16, 32, 64, 128)):
    sw = Sweep(config={"model": "cnn", "width": 16, "init": "lecun", "activation": "relu",
                       "dataset": "synthetic", "image_shape": [16, 16, 3]},
               archs=("residual", "plain"), depths=tuple(depths), seeds=(0,), steps=0,
               probe_batch=8)
    for a in sw.archs:
        sw.theory[a] = [gf.theory.theory_attenuation(a, d, model="cnn", init="lecun",
                                                     activation="relu", image_shape=(16, 16, 3))
                        for d in depths]
        sw.cells += [Cell(a, d, 0, attenuation=1.0) for d in depths]
    return sw


def test_residual_theory_line_is_whole_and_says_where_it_holds():
    from gradflow.plot import sweep as plot_sweep
    fig = gf.plot.depth_sweep(_sweep())
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    near = lines["residual: mean-field theory (infinite width)"]
    far = next(ln for k, ln in lines.items() if k.startswith("residual: theory beyond depth"))
    x_near, x_far = np.asarray(near.get_xdata()), np.asarray(far.get_xdata())
    assert np.isfinite(near.get_ydata()).all() and np.isfinite(far.get_ydata()).all()
    limit = plot_sweep.THEORY_HOLDS_TO_DEPTH["residual"]
    assert x_near.min() == 8 and x_near.max() <= limit and x_far.max() == 128
    assert x_far.min() == x_near.max()  # the two parts join: one line, no gaps
    assert near.get_linestyle() == "--" and far.get_linestyle() == ":"
    plain = lines["plain: mean-field theory (infinite width)"]
    assert np.asarray(plain.get_xdata()).max() == 128  # other archs: dashed all the way


def test_residual_theory_holds_at_moderate_depth_and_large_width():
    """The measurement behind THEORY_HOLDS_TO_DEPTH (docs/theory.md): an MLP residual net of
    width 256 at depth 32 is within 1.5x of the mean-field attenuation."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    pred = gf.theory.theory_attenuation("residual", 32, model="mlp", init="lecun",
                                        activation="relu")
    x = jax.random.normal(jax.random.PRNGKey(7), (32, 256))
    got = []
    for seed in (0, 1):
        m = gf.models.mlp("residual", 32, width=256, in_features=256, num_classes=10,
                          rngs=nnx.Rngs(seed))
        e = np.asarray(gf.probe(m, (x, jnp.arange(32) % 10))["error_norm"], np.float64)
        got.append(e[0] / e[-1])
    assert 1 / 1.5 < np.median(got) / pred < 1.5, (got, pred)
