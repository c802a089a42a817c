"""`python -m gradflow.run`: the command-line entry point (the CLI lives in `gradflow.cli`)."""
import os
import sys

from .cli.main import main
from .host_memory import reuse_for_command_line

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


def deterministic_xla_flags(flags: str) -> str:
    """XLA_FLAGS with XLA's deterministic GPU kernels on, unless `flags` set that flag already.

    The command line runs with them, so that a rerun and `--resume` give bit-identical histories
    on a GPU too (kernels are chosen without timing them and scatters are deterministic, at some
    cost in speed). XLA:CPU ignores the flag; its results are deterministic anyway.

    Args:
      flags: the XLA_FLAGS the process started with ("" if none).

    Returns:
      `flags`, with `--xla_gpu_deterministic_ops=true` appended if they do not name the flag.

    Example:
      >>> deterministic_xla_flags("--xla_cpu_multi_thread_eigen=false")
      '--xla_cpu_multi_thread_eigen=false --xla_gpu_deterministic_ops=true'
      >>> deterministic_xla_flags("--xla_gpu_deterministic_ops=false")  # the user's choice
      '--xla_gpu_deterministic_ops=false'
    """
    if "xla_gpu_deterministic_ops" in flags:
        return flags
    return " ".join(filter(None, [flags.strip(), DETERMINISTIC_FLAG]))


if __name__ == "__main__":
    # before the first computation starts a backend, which reads XLA_FLAGS once
    os.environ["XLA_FLAGS"] = deterministic_xla_flags(os.environ.get("XLA_FLAGS", ""))
    reuse_for_command_line()  # before XLA's threads first allocate (gradflow.host_memory)
    sys.exit(main())
