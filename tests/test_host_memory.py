"""Malloc options that keep XLA:CPU's freed buffers for its next run: where they apply, and that
they remove the per-run page faults they are for."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gradflow import host_memory as hm


@pytest.mark.parametrize("system, libc, expected", [
    ("linux", ("glibc", "2.36"), True),
    ("linux", ("", ""), False),  # musl, or not found
    ("darwin", ("", ""), False),
    ("win32", ("", ""), False),
])
def test_applies_only_to_glibc_on_linux(system, libc, expected):
    assert hm.applies(system, libc) is expected


def test_command_line_opt_out():
    assert hm.reuse_for_command_line({"GRADFLOW_REUSE_MEMORY": "0"}) is False


# gradflow's bare train step of the depth-50 plain CNN (batch 32; ~50 MiB of temporaries, above
# glibc's largest mmap threshold), run 9 times after warm-up; prints the median of the minor
# page faults of each step (a heap's first use faults its pages in once, on whichever step that
# happens; what the options remove is the faulting of every step).
FAULTS = """
import resource, sys
from gradflow import host_memory
if sys.argv[1] == "reuse":
    assert host_memory.reuse_freed_memory()
import jax, jax.numpy as jnp, optax
from flax import nnx
import gradflow as gf
from gradflow.instrument.steps import layout_for, train_steps
from gradflow.losses import LOSSES
x, y = jnp.ones((32, 16, 16, 3)), jnp.arange(32) % 10
graphdef, params, rest = nnx.split(gf.models.cnn("plain", 50, width=16, rngs=nnx.Rngs(0)),
                                   nnx.Param, ...)
tx = optax.sgd(0.01)
_, bare = train_steps(graphdef, layout_for(graphdef, params, rest, x),
                      *LOSSES["cross_entropy"], tx)
state = (params, rest, tx.init(params))
for _ in range(2):
    state = jax.block_until_ready(bare(*state, x, y)[:3])
faults = []
for _ in range(9):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state = jax.block_until_ready(bare(*state, x, y)[:3])
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(sorted(faults)[4])
"""


@pytest.mark.skipif(not hm.applies(), reason="malloc here is not glibc's on Linux")
def test_reuse_removes_the_page_faults_of_every_step():
    env = {k: v for k, v in os.environ.items() if k not in hm.MALLOC_ENV}
    # the two processes run side by side (each counts only its own faults: RUSAGE_SELF)
    procs = {mode: subprocess.Popen([sys.executable, "-c", FAULTS, mode], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for mode in ("default", "reuse")}
    faults = {}
    for mode, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        faults[mode] = json.loads(out.split()[-1])
    assert faults["default"] > 10_000  # ~50 MiB in 4 KiB pages, every step
    assert faults["reuse"] < faults["default"] / 100  # measured: 0, also under load
