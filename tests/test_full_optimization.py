"""The promises that depend on how XLA compiles, checked at XLA's full optimization.

The suite compiles at XLA's LLVM -O0 on CPU (tests/conftest.py); gradflow runs at the default
level. Bit-identity of two different programs (instrumented and bare training; gf.value_and_grad
and nnx.value_and_grad) depends on how each is compiled, so these tests run again here, in a
pytest subprocess with the default optimization level.
"""
import os
import subprocess
import sys
from pathlib import Path

from _backend import cpu_only
from conftest import FULL_OPTIMIZATION_FLAGS

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_instrument.py::test_instrumented_training_is_bit_identical_to_bare_training",
    "tests/test_user_loop.py::test_training_in_nnx_jit_with_an_optimizer_equals_nnx_value_and_grad",
    "tests/test_user_loop.py::test_jax_jit_with_split_and_merge",
]


@cpu_only
def test_bit_identity_holds_at_full_optimization():
    env = {**os.environ, "XLA_FLAGS": FULL_OPTIMIZATION_FLAGS}
    # the suite's conftest keeps a caller's XLA_FLAGS: the subprocess compiles at full level
    code = "import os, conftest; print(os.environ['XLA_FLAGS'])"
    seen = subprocess.run([sys.executable, "-c", code],
                          cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=60)
    assert seen.stdout.strip() == FULL_OPTIMIZATION_FLAGS, seen.stdout + seen.stderr
    assert "optimization_level" not in FULL_OPTIMIZATION_FLAGS
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p",
                           "no:cacheprovider", *TESTS], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 passed" in proc.stdout, proc.stdout[-1000:]
