"""The examples in examples/ run end to end in their quick mode (a subprocess each, on CPU) and
write the report the CLI writes: a History with the expected rows, every error norm finite (so
the transformer's nnx.scan blocks were reached through register_scanned_stack), the figures,
summary.json, and report.html with the figures embedded."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradflow as gf

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = ("history.npz", "heatmap_error_norm.png", "profile_error_norm.png",
         "profile_update_ratio.png", "loss.png", "summary.json", "report.html")


def _run(script: str, out: Path) -> str:
    # The quick runs are mostly compilation: XLA's -O0 halves it and leaves the results finite.
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags.strip(),  # gradflow importable
           "PYTHONPATH": str(EXAMPLES.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("script, rows, result", [
    ("char_transformer.py",
     ["tok", "pos"] + [f"blocks/{i}/{name}" for i in range(2) for name in
                       ("attn/query", "attn/key", "attn/value", "attn/out", "mlp_in", "mlp_out")]
     + ["head"], "held_out_loss"),
    ("resnet_loop.py", None, "held_out_accuracy"),
])
def test_example_quick_run_writes_its_report(tmp_path, script, rows, result):
    out = tmp_path / script.removesuffix(".py")
    stdout = _run(script, out)
    assert "report:" in stdout
    for name in FILES:
        assert (out / name).is_file(), name

    history = gf.History.load(out / "history.npz")
    if rows is not None:
        assert list(history.layers) == rows
    else:  # the zoo's ResNet: stem, convs of the residual blocks, head
        assert history.layers[0] == "stem/layer" and history.layers[-1] == "head"
        assert any(n.startswith("stages/0/rest/blocks/0/") for n in history.layers)
    assert list(history.steps) == [0, 2, 4, 5]  # every 2nd step of 6, and the last
    for metric in ("error_norm", "grad_norm", "act_std", "update_ratio"):
        assert np.isfinite(history[metric]).all(), metric
    assert (history["error_norm"] > 0).all()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["quick"] is True
    assert np.isfinite(summary["final_loss"]) and np.isfinite(summary[result])
    assert summary["diagnosis"] and all(isinstance(s, str) for s in summary["diagnosis"])

    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert summary["diagnosis"][0].split(":")[0] in page
