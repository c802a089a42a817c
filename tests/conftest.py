import contextlib
import importlib.util
import io
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite checks the math, not the compiler's speed: on CPU its programs compile with XLA's
# LLVM backend at -O0 (the suite's wall time on 2 cores: 392 s instead of 575 s). The promises
# that depend on how XLA compiles (instrumented training bit-identical to bare training, the
# user loop's gradients those of nnx.value_and_grad) are also checked at full optimization, in a
# subprocess (tests/test_full_optimization.py). An XLA_FLAGS set by the caller is kept as it is.
FULL_OPTIMIZATION_FLAGS = "--xla_cpu_multi_thread_eigen=false"
os.environ.setdefault("XLA_FLAGS", FULL_OPTIMIZATION_FLAGS + (
    " --xla_backend_optimization_level=0"
    if os.environ["JAX_PLATFORMS"].split(",")[0].strip() == "cpu" else ""))
# XLA:CPU's freed buffers kept for the next run, as the command line runs (gradflow/host_memory.py,
# loaded by path: importing the package here would load JAX): glibc reads these variables when
# a process starts, so they reach the xdist workers and the CLI subprocesses.
_spec = importlib.util.spec_from_file_location(
    "_host_memory", Path(__file__).parents[1] / "gradflow" / "host_memory.py")
_host_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_host_memory)
if _host_memory.applies():
    for _name, _value in _host_memory.MALLOC_ENV.items():
        os.environ.setdefault(_name, _value)
# On an accelerator (e.g. JAX_PLATFORMS=cuda) the suite checks the math, not the backend's
# defaults: float32 matmuls and convolutions at full precision (on H100/H200 JAX's default is
# TF32, about 1e-3 relative, which the float64 references at rtol 2e-4 would flag), and XLA's
# deterministic GPU kernels (chosen without timing them; deterministic scatter), so that a rerun
# or a resumed run is bit-identical there too (tests/_backend.py). Set in the environment before
# JAX starts, so that the CLI runs and workers started as subprocesses get them as well.
if os.environ["JAX_PLATFORMS"].split(",")[0].strip() != "cpu":
    if "xla_gpu_deterministic_ops" not in os.environ["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] += " --xla_gpu_deterministic_ops=true"
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    import jax

    jax.config.update("jax_default_matmul_precision",
                      os.environ["JAX_DEFAULT_MATMUL_PRECISION"])  # if a plugin imported JAX

# Files whose tests share a session fixture below run in one xdist worker (--dist loadfile
# otherwise sends each file to any worker, and each worker would redo the shared run).
SAME_WORKER = {"tests/test_figures_story.py": "tests/test_experiments.py",
               "tests/test_experiments_numbers.py": "tests/test_experiments.py",
               "tests/test_verdicts.py": "tests/test_run.py"}


class _SharedFileScheduling:
    """xdist hook: --dist loadfile, with the files of SAME_WORKER scheduled as one."""

    @pytest.hookimpl
    def pytest_xdist_make_scheduler(self, config, log):
        if config.getoption("dist") != "loadfile":
            return None
        from xdist.scheduler import LoadFileScheduling

        class Scheduling(LoadFileScheduling):
            def _split_scope(self, nodeid):
                scope = super()._split_scope(nodeid)
                return SAME_WORKER.get(scope, scope)

        return Scheduling(config, log)


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_SharedFileScheduling(), "gradflow-shared-file-scheduling")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Says, under the summary, that a slow tier exists and how to run it."""
    if "not slow" in (config.getoption("markexpr") or ""):
        terminalreporter.write_line("not run: the slow tier (two-process runs, separable "
                                    "variants, depth 10,000): python -m pytest -m slow")


# -- runs shared by several test files --------------------------------------------------------

# `python -m gradflow.run --experiment NAME` on the tiny settings of tests/test_experiments.py
# (TINY), shared by the files of its xdist group: tests/test_experiments.py checks the files
# and numbers, tests/test_figures_story.py the figures and texts, tests/test_experiments_numbers.py
# the collapse records and the seeds of the same runs.
@pytest.fixture(scope="session")
def experiment_run(tmp_path_factory):
    """experiment_run(name) -> dict(code, out, text, numbers, figures, texts): each experiment
    run once per session, in process (compiled steps are shared), on demand. `figures` maps a
    figure file to (matplotlib figure, caption) and `texts` lists the paragraphs, as the report
    page received them."""
    from test_experiments import TINY

    from gradflow import cli
    from gradflow.report.page import Page

    cache = {}

    def run(name):
        if name in cache:
            return cache[name]
        figures, texts = {}, []
        figure, text = Page.figure, Page.text

        def capture_figure(self, fname, fig, title, caption=""):
            figures[fname] = (fig, caption)
            return figure(self, fname, fig, title, caption)

        def capture_text(self, t):
            texts.append(t)
            return text(self, t)

        out = tmp_path_factory.mktemp(name) / "out"
        stdout = io.StringIO()
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
            mp.setattr(Page, "figure", capture_figure)
            mp.setattr(Page, "text", capture_text)
            code = cli.main(["--experiment", name, *TINY[name], "--out", str(out),
                             "--quiet"])
        cache[name] = {"code": code, "out": out, "text": stdout.getvalue(),
                       "numbers": json.loads((out / f"{name}.json").read_text()),
                       "figures": figures, "texts": texts}
        return cache[name]

    return run


# `python -m gradflow.run` with the default archs on a tiny setting, in a process of its own
# (tests/test_run.py checks its files and output, tests/test_verdicts.py its verdicts)
DEFAULT_RUN_ARGS = ["--depth", "4", "--width", "4", "--steps", "3", "--log-every", "1"]


def run_cli(*args, cwd):
    """`python -m gradflow.run ARGS` in a subprocess -> its CompletedProcess.

    The subprocess inherits the suite's XLA_FLAGS (on CPU the backend at -O0, see the top of
    this file): a tiny run is mostly compilation, and -O0 takes about a third off it; what these
    runs are checked for (files, output, exit codes, agreement of table, report and histories, a
    rerun being bit-identical to a run with the same flags) does not depend on the backend's
    optimization level."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "gradflow.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """(CompletedProcess, out folder) of the default run, progress shown."""
    cwd = tmp_path_factory.mktemp("default")
    return run_cli(*DEFAULT_RUN_ARGS, "--out", "out", cwd=cwd), cwd / "out"


@pytest.fixture(autouse=True)
def _close_figures():
    """Closes the figures a test made (gf.plot returns pyplot figures), so none pile up."""
    yield
    import sys
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")
