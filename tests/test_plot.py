"""Figures render headless, on log scales, with layers in network order (input at the bottom)."""
import numpy as np
from matplotlib.colors import LogNorm

import gradflow as gf


def fake_history(n_layers=6, n_records=4):
    err = np.outer(np.linspace(1, 2, n_records), 10.0 ** np.arange(n_layers))  # grows to output
    err[1, 2] = np.nan  # non-finite values must not break or pollute the figure
    metrics = {"error_norm": err, "grad_norm": np.ones_like(err)}
    return gf.History([f"layer{i}" for i in range(n_layers)], metrics, {"loss": np.ones(n_records)},
                      {"arch": "plain"}, steps=[0, 5, 10, 15])


def test_heatmap_log_scale_and_order(tmp_path):
    fig = gf.plot.heatmap(fake_history(), "error_norm")
    ax = fig.axes[0]
    mesh = ax.collections[0]
    assert isinstance(mesh.norm, LogNorm)
    assert mesh.norm.vmin == 1.0 and mesh.norm.vmax == 2 * 10.0 ** 5
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].startswith("1: layer0")  # first layer at the bottom (y = 0)
    assert ax.get_ylim()[0] < ax.get_ylim()[1]
    assert "plain" in ax.get_title() and "error" in fig.axes[1].get_ylabel()
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 5000


def test_heatmap_many_layers_has_readable_ticks():
    h = gf.History([f"l{i}" for i in range(1000)], {"grad_norm": np.ones((3, 1000))},
                   steps=[0, 1, 2])
    ax = gf.plot.heatmap(h).axes[0]
    assert len(ax.get_yticks()) <= 26


def test_profile_snapshot_and_history(tmp_path):
    h = fake_history()
    fig = gf.plot.profile(h, "error_norm")
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].lines) == 2
    fig = gf.plot.profile(h.snapshot(0), "grad_norm")
    assert len(fig.axes[0].lines) == 1
    fig.savefig(tmp_path / "p.png")


def test_profile_theory_overlay_follows_mean_field():
    from gradflow.analysis import theory
    n = 12
    pred = theory.predicted_profile("error_norm", n, arch="plain", init="lecun",
                                    activation="relu")
    h = gf.History([f"l{i}" for i in range(n)], {"error_norm": np.vstack([pred, pred]) * 3},
                   steps=[0, 1], meta={"arch": "plain", "init": "lecun", "activation": "relu"})
    ax = gf.plot.profile(h, "error_norm", theory=True).axes[0]
    line = [ln for ln in ax.lines if "mean-field" in ln.get_label()][0]
    np.testing.assert_allclose(line.get_ydata(), pred * 3)
    np.testing.assert_allclose(np.diff(np.log10(pred[1:-1])), np.log10(np.sqrt(0.5)) * -1)
    h.meta["activation"] = "gelu"  # outside the theory: no overlay
    ax = gf.plot.profile(h, "error_norm", theory=True).axes[0]
    assert not [ln for ln in ax.lines if "mean-field" in ln.get_label()]


def test_import_does_not_load_matplotlib_and_plotting_keeps_the_backend():
    """`import gradflow` leaves matplotlib alone (a notebook's inline backend stays); the first
    figure imports it without switching the backend the process chose."""
    import subprocess
    import sys

    code = ("import sys, matplotlib\n"
            "import gradflow as gf\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n"
            "matplotlib.use('svg')\n"
            "import numpy as np\n"
            "h = gf.History(['a', 'b'], {'error_norm': np.ones((2, 2))}, {}, {}, steps=[0, 1])\n"
            "gf.plot.heatmap(h, 'error_norm')\n"
            "print(matplotlib.get_backend())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
