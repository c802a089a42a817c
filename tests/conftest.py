import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Says, under the summary, that a slow tier exists and how to run it."""
    if "not slow" in (config.getoption("markexpr") or ""):
        terminalreporter.write_line("not run: the slow tier (two-process runs, separable "
                                    "variants, depth 10,000): python -m pytest -m slow")
