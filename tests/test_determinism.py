"""The same command and seed give bit-identical histories on CPU."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from gradflow import History

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--depth", "4", "--width", "4", "--steps", "4", "--log-every", "1", "--archs",
        "plain,residual_bn", "--batch-size", "8", "--quiet"]


def test_same_command_same_seed_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("a", "b"):
        proc = subprocess.run([sys.executable, "-m", "gradflow.run", *ARGS, "--out", name],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    for arch in ("plain", "residual_bn"):
        a = History.load(tmp_path / "a" / f"{arch}_history.npz")
        b = History.load(tmp_path / "b" / f"{arch}_history.npz")
        for k in a.metrics + a.scalars:
            np.testing.assert_array_equal(a[k], b[k])
