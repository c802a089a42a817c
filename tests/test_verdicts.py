"""Verdicts and advice (issue #15): every verdict and finding names its moment, and the table,
the printed diagnosis and the report agree; advice fits the run; degenerate input is named as
such; a run at chance accuracy is never healthy."""
from __future__ import annotations

import html
import json
import re
import warnings

import numpy as np
import pytest
from flax import nnx
from test_run import _cli

import gradflow as gf
from gradflow.analysis import advice, inputs
from gradflow.data import Dataset
from gradflow.experiments import side_by_side as experiment
from gradflow.experiments import verdict
from gradflow.report import run_report as report

ROWS = ("stem/layer", "stages/0/rest/blocks/0/layer", "stages/0/rest/blocks/1/layer", "head")
RES_ROWS = ("stem/layer", "stages/0/rest/blocks/0/unit1/layer",
            "stages/0/rest/blocks/0/unit2/layer", "head")  # a zoo residual block's rows
STEPS = [0, 10, 20]
# what a verdict says for each kind of finding (`report.text.phrase`)
WORDS = {"vanishing": ("vanishing", "no error signal"), "exploding": ("explode",),
         "dead_units": ("dead units",), "saturation": ("saturated",),
         "unstable_updates": ("unstable",), "healthy": ("reaches every layer",)}


def rec(err, *, std=(1.0, 1.0, 1.0, 1.0), dead=0.0, acc=0.1, loss=2.3):
    return {"error_norm": np.array(err, float), "grad_norm": np.ones(4), "act_std": np.array(std),
            "dead_frac": np.full(4, dead), "loss": np.float32(loss), "accuracy": np.float32(acc)}


def history(records, rows=ROWS, **meta):
    """A History as the run records it: a BN net's records carry its norm layers' scalars."""
    meta = {"arch": "plain", "init": "lecun", "activation": "relu", **meta}
    if "bn" in meta["arch"]:
        records = [{**r, "grad_norm:stem/norm/scale": np.float32(1)} for r in records]
    return gf.History.from_records(rows, STEPS[:len(records)], records, meta=meta)


def dataset(x=None, classes=10):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, 4, 3)).astype(np.float32) if x is None else x
    y = np.arange(len(x)) % classes
    return Dataset("toy", x, y, x[:16], y[:16], classes)


def summarize(*results, ds=None):
    cfg = experiment.Config(depth=4, width=4, steps=21, archs=tuple(r.arch for r in results))
    return verdict.summarize(list(results), cfg, ds or dataset())


def texts(summary):
    """What a run shows: the printed table and diagnosis, and report.html."""
    out = report.table(summary) + "\n\n" + "\n".join(report.diagnosis_lines(summary))
    return out, report.html_report(summary, [])


def kind_moment(finding: str):
    """(kind, moment) of a finding's text: "kind at moment [layers]: ..." ."""
    m = re.match(r"(\w+)(?: at (init|end \(step \d+\)|step \d+))?(?: \[|:)", finding)
    return m.group(1), m.group(2)


def check_agreement(summary, stdout, page):
    """Each arch's verdict, diagnosis (printed and in the report) and table row tell one story."""
    problem = summary["data"]["problem"]
    for a in summary["archs"]:
        v = a["verdict"]
        row = next(line for line in stdout.splitlines() if line.startswith(a["arch"] + " "))
        assert row.endswith(v) and html.escape(v, quote=True) in page
        findings = a["diagnosis_init"] + a["diagnosis_end"]
        for f in findings:  # printed, and in the report
            assert f"  - {f}" in stdout or (problem and f in stdout)
            assert html.escape(f, quote=True) in page
        if problem:
            assert v.startswith(f"degenerate input: {problem}")
            continue
        said = dict(re.findall(r"at (init|end \(step \d+\)|step \d+)"
                               r"(?: and end \(step \d+\))?: ([^;]*)", v))
        said |= {m: said[first] for first, m in re.findall(
            r"at (init) and (end \(step \d+\)):", v)}  # "at init and end (step N): ..."
        assert said, v
        parsed = [kind_moment(f) for f in findings]
        for when, flow in said.items():
            assert any(m == when for _, m in parsed), (when, findings)
            kinds = {k for k, m in parsed if m == when} - {"not_learning", "divergence"}
            assert kinds or flow == "error signal reaches every layer", (when, flow)
            for k in kinds:  # every finding of the moment is in the verdict's words
                assert any(w in flow for w in WORDS[k]), (k, flow)
        learned = not any(f.startswith("not_learning") for f in a["diagnosis_end"])
        assert ("did not learn" in v) == (not learned and a["status"] == "ok"), v


# -- 1. moments --------------------------------------------------------------------------------

def test_findings_and_verdict_name_their_moment_bn_explodes_at_init_vanishes_at_end():
    """The issue's `bn` depth 50: 'explodes toward the input (1e+02x)' (init) above 'vanishing'
    (the last record), neither saying so."""
    h = history([rec([1e2, 10, 3, 1]), rec([1, 1, 1, 1]), rec([5e-3, 0.1, 0.5, 1])], arch="bn")
    assert [str(f).split(" [")[0] for f in gf.diagnose(h.snapshot(0))] == ["exploding at init"]
    assert [f.moment for f in gf.diagnose(h)] == ["end (step 20)"] * 2  # vanishing, not_learning
    res = experiment.ArchResult("bn", params=10, history=h, held_out_accuracy=0.09)
    s = summarize(res)
    a = s["archs"][0]
    assert a["verdict"] == ("at init: error signal explodes toward the input (1e+02×); at end "
                            "(step 20): vanishing error signal (5e-03 at layer 1); did not learn")
    assert a["diagnosis_init"][0].startswith("exploding at init [stem/layer]")
    assert a["diagnosis_end"][0].startswith("vanishing at end (step 20) [stem/layer")
    stdout, page = texts(s)
    assert "  - exploding at init" in stdout and "exploding at init" in page  # init shown too
    check_agreement(s, stdout, page)


def test_a_diverged_history_is_judged_at_its_last_finite_record_and_says_which():
    h = history([rec([1, 1, 1, 1]), rec([1e-3, 1, 1, 1]), rec([np.nan, 1, 1, 1], loss=np.nan)])
    found = gf.diagnose(h)
    assert str(found[0]).startswith("divergence at step 20 [stem/layer]")
    assert all(f.moment == "step 10" for f in found[1:]) and found[1].kind == "vanishing"


def test_a_snapshot_without_a_step_names_no_moment_and_one_with_a_step_does():
    h = history([rec([1, 1, 1, 1]), rec([1, 1, 1, 1])])
    assert gf.diagnose(h.snapshot(1))[0].moment == "step 10"
    snap = gf.Snapshot(ROWS, {k: v for k, v in rec([1, 1, 1, 1]).items() if k != "loss"})
    assert str(gf.diagnose(snap)[0]).startswith("healthy: ")


# -- 2. advice fits the run ----------------------------------------------------------------------

def suggestions(h, **kw):
    return " | ".join(f.suggestion for f in gf.diagnose(h, **kw))


@pytest.mark.parametrize("arch", gf.models.ARCHS)
def test_what_the_network_has_is_read_off_its_rows_for_every_zoo_arch(arch):
    """Normalization and skip connections, from a real probe's rows and scalars, generic over the
    zoo's arch names; checked against the modules the model is built of."""
    model = gf.models.mlp(arch, 4, width=4, in_features=6, num_classes=3, rngs=nnx.Rngs(0))
    x, y = np.ones((4, 6), np.float32), np.arange(4) % 3
    snap = gf.probe(model, (x, y))
    h = gf.History.from_records(snap.layers, [0], [{k: snap[k] for k in snap.metrics
                                                     + snap.scalars}], meta={"arch": arch})
    modules = [type(m).__name__ for _, m in nnx.iter_modules(model)]
    setup = advice.infer(h)
    assert setup.norm == any("Norm" in m for m in modules)
    assert setup.skip == ("ResidualBlock" in modules)


def test_advice_never_proposes_what_the_run_has():
    vanish = [rec([1e-4, 1e-2, 0.1, 1])] * 2
    he = suggestions(history(vanish, init="he"))
    assert "He init" not in he and "residual connections" in he and "batch norm" in he
    bn = suggestions(history(vanish, arch="bn"))  # BN net: the zoo names it
    assert not re.search("batch norm|normalization|He init", bn)  # BN undoes the init's scale
    assert "residual connections" in bn
    res_bn = suggestions(history(vanish, RES_ROWS, arch="residual_bn", init="he"))
    assert not re.search(r"He init|residual connections|batch norm", res_bn), res_bn
    tanh = suggestions(history(vanish, activation="tanh", init="lecun"))
    assert "He" not in tanh and "ReLU-family" in tanh  # LeCun is right for tanh already
    tanh_he = suggestions(history(vanish, activation="tanh", init="he"))
    assert "He init" not in tanh_he.replace("not He", "") and "LeCun" in tanh_he
    explode = [rec([1e3, 10, 3, 1])] * 2
    plain_bn = suggestions(history(explode, arch="bn"))  # BN alone explodes: add skips
    assert "residual connections" in plain_bn and "normalization" not in plain_bn
    res = suggestions(history(explode, RES_ROWS, arch="residual", init="he"))
    assert "residual branches" in res and "residual connections" not in res
    saturated = [rec([1, 1, 1, 1], std=(0.95, 0.95, 0.95, 1))] * 2
    sat = suggestions(history(saturated, arch="bn", activation="tanh"), num_classes=None)
    assert "batch norm" not in sat and "He" not in sat


def test_unknown_configuration_gives_conditional_advice_and_what_is_given_is_used():
    h = gf.History.from_records(ROWS, [0], [rec([1e-4, 1e-2, 0.1, 1])])  # no meta at all
    text = suggestions(h)
    assert "(if the network has none)" in text and "(if not already used)" in text
    given = suggestions(h, init="he", activation="relu", norm=True, skip=False)
    assert "residual connections" in given and not re.search(r"He init|batch norm|if ", given)


def test_tanh_bn_verdict_names_saturation_as_the_diagnosis_does_not_dead_units():
    end = rec([0, 1e-2, 0.1, 1], std=(0.95, 0.95, 0.95, 1))  # no error signal at layer 1
    h = history([rec([1, 1, 1, 1]), end], arch="bn", activation="tanh", init="he")
    s = summarize(experiment.ArchResult("bn", params=10, history=h, held_out_accuracy=0.1))
    a = s["archs"][0]
    assert "saturated units" in a["verdict"] and "dead units" not in a["verdict"]
    assert "no error signal at layer 1" in a["verdict"]
    assert [f.split(" at ")[0] for f in a["diagnosis_end"]] == ["vanishing", "saturation",
                                                                 "not_learning"]
    check_agreement(s, *texts(s))


# -- 3. degenerate input ----------------------------------------------------------------------

def test_degenerate_input_is_detected_and_ordinary_input_is_not():
    rng = np.random.default_rng(0)
    assert "identical" in inputs.degenerate_input(np.full((50, 8, 8, 3), 0.5))
    assert "near-constant" in inputs.degenerate_input(0.5 + 1e-9 * rng.normal(size=(50, 4)))
    two = np.repeat(rng.normal(size=(2, 4)), 25, axis=0)
    assert "2 distinct examples" in inputs.degenerate_input(two, num_classes=10)
    assert inputs.degenerate_input(two) is None  # repeated examples alone are fine
    mnist_like = rng.normal(size=(50, 6)) * np.array([0, 0, 1, 1, 1, 0])  # constant borders
    assert inputs.degenerate_input(mnist_like) is None
    found = gf.diagnose(history([rec([0, 0, 0, 1])] * 2), inputs=np.zeros((8, 3)))
    assert [f.kind for f in found] == ["degenerate_input"]


def test_a_constant_dataset_is_named_in_one_line_without_numpy_warnings(tmp_path):
    """The issue's constant-image dataset: before, 'vanishing ... (dead units)' after a
    divide-by-zero warning."""
    x = np.full((40, 4, 4, 3), 0.5, np.float32)
    np.savez(tmp_path / "const.npz", x=x, y=np.arange(40) % 4)
    proc = _cli("--dataset", "npz", "--data-dir", str(tmp_path / "const.npz"), "--depth", "4",
                "--width", "4", "--steps", "2", "--log-every", "1", "--archs", "plain,bn",
                "--batch-size", "8", "--out", "out", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    diagnosis = proc.stdout.split("\n\n")[1].strip().splitlines()
    assert len(diagnosis) == 1 and diagnosis[0].startswith("degenerate_input: all ")
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "identical" in s["data"]["problem"]
    for a in s["archs"]:
        assert a["verdict"].startswith("degenerate input: all ")
        assert "dead units" not in a["verdict"]
    check_agreement(s, proc.stdout, (tmp_path / "out" / "report.html").read_text())


def test_zero_error_signals_raise_no_numpy_warnings():
    h = history([rec([0, 0, 0, 1]), rec([0, 0, 0, 1])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = summarize(experiment.ArchResult("plain", params=10, history=h, held_out_accuracy=0.1))
    assert s["archs"][0]["error_slope_init"] is None


# -- 4. chance accuracy is never healthy ---------------------------------------------------------

def test_accuracy_at_chance_is_not_healthy_mlp_residual_bn():
    """The issue's mlp depth 100 residual_bn: 'explodes toward the input (2e+02x)' beside
    'healthy ... nothing to fix' at chance accuracy."""
    h = history([rec([2e2, 10, 3, 1]), rec([1, 1, 1, 1]), rec([0.5, 1, 1, 1])], RES_ROWS,
                arch="residual_bn", init="he")
    s = summarize(experiment.ArchResult("residual_bn", params=10, history=h,
                                        held_out_accuracy=0.1))
    a = s["archs"][0]
    assert not any(f.startswith("healthy") or "nothing to fix" in f for f in a["diagnosis_end"])
    assert a["diagnosis_end"][0].startswith("not_learning at end (step 20): held-out accuracy "
                                            "10.0%")
    assert a["verdict"].endswith("did not learn") and a["learned"] is False
    check_agreement(s, *texts(s))
    # from the History alone: its training accuracy, or without classes its loss
    assert [f.kind for f in gf.diagnose(h, num_classes=10)] == ["not_learning"]
    assert [f.kind for f in gf.diagnose(h)] == ["not_learning"]
    learning = history([rec([1, 1, 1, 1], acc=0.1, loss=2.3), rec([1, 1, 1, 1], acc=0.9, loss=0.3)])
    assert [f.kind for f in gf.diagnose(learning, num_classes=10)] == ["healthy"]
    assert [f.kind for f in gf.diagnose(learning)] == ["healthy"]


# -- the default run: table, printed diagnosis and report agree for every arch -----------------

def test_the_default_run_tells_one_story_per_arch(default_run):
    """The default run of tests/conftest.py (depth 4, width 4, 3 steps; shared with
    tests/test_run.py)."""
    proc, out = default_run
    assert proc.returncode == 0, proc.stderr
    s = json.loads((out / "summary.json").read_text())
    assert [a["arch"] for a in s["archs"]] == list(gf.models.ARCHS)
    for a in s["archs"]:
        assert a["verdict"].startswith("at init")
        assert a["diagnosis_init"] and all(" at init" in f for f in a["diagnosis_init"])
        assert all(" at end (step 2)" in f for f in a["diagnosis_end"])
    check_agreement(s, proc.stdout, (out / "report.html").read_text())
