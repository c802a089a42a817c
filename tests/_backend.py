"""What the backend the suite runs on guarantees, for the tests that depend on it.

Bit-identical results hold on CPU for a rerun of the same program and for two programs that
compute the same values (instrumented and bare steps). On a GPU a rerun is bit-identical only
with XLA's deterministic kernels (`--xla_gpu_deterministic_ops=true`, which tests/conftest.py
and `python -m gradflow.run` set unless XLA_FLAGS already names the flag); two different
programs may still fuse and round differently there.
"""
from __future__ import annotations

import os

import jax
import pytest

ON_CPU = jax.default_backend() == "cpu"
_FLAG = "--xla_gpu_deterministic_ops"
DETERMINISTIC_RERUNS = ON_CPU or any(
    f in (_FLAG, f"{_FLAG}=true", f"{_FLAG}=1") for f in os.environ.get("XLA_FLAGS", "").split())

rerun_is_bit_identical = pytest.mark.skipif(
    not DETERMINISTIC_RERUNS,
    reason=f"bit-identical reruns on {jax.default_backend()} need XLA_FLAGS={_FLAG}=true")
cpu_only = pytest.mark.skipif(not ON_CPU, reason="a property of XLA:CPU's compiled code")
