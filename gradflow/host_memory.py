"""Keep the memory XLA:CPU frees for its next run (Linux, glibc).

Why: XLA:CPU allocates the temporaries of every run of a compiled step with `malloc`. glibc
serves blocks above its mmap threshold (at most 32 MiB) with fresh `mmap`ed pages and unmaps
them on `free`, and its per-thread arenas give the free top of their heaps back to the kernel,
so every step page-faults its working set in again, 4 KiB at a time, each page zero-filled by
the kernel: 12,700 faults per train step of the depth-50 plain CNN (batch 32), 21,900 for the
residual_bn one. `reuse_freed_memory()` sets three malloc options: no `mmap` for large blocks,
no trimming of the heap, and at most two arenas (glibc's per-thread heaps, which it unmaps
whenever one empties), so that XLA's threads mostly allocate from the main heap, which keeps
what is freed. The next run reuses it: the CNNs' train steps fault 0-5,000 times instead of
12,700-21,900 and run 1.1-1.3x faster (`python benchmarks/host_memory.py`). Blocks of up to
64 MiB that a worker thread allocates from the second arena can still fault, more or less
depending on which thread XLA runs the step on (a JAX-only chain of 50 convolutions: 15,300 ->
1,300-2,700 faults per step). One arena for every thread removes
those too, but the threads then contend for its lock: the scanned MLP's step is 1.2x slower;
with two it is unchanged.

The price: the process keeps its peak heap until it exits (as PyTorch's caching allocator
does), and its threads share two malloc arenas. XLA's threads pick their arena at their first
allocation, so it must run before JAX's first computation. The command line does this at
start-up (`GRADFLOW_REUSE_MEMORY=0` turns it off); a script of one's own calls
`gradflow.host_memory.reuse_freed_memory()` first, or starts with the same options in the
environment (`MALLOC_ENV`). Elsewhere than Linux with glibc it does nothing.

Layer 0: imports nothing from gradflow, and not JAX.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

OPT_OUT = "GRADFLOW_REUSE_MEMORY"  # "0": leave malloc as it is on the command line
_TRIM_NEVER = (1 << 31) - 1  # a trim threshold (bytes) no heap top reaches
# (environment variable, glibc's mallopt parameter from malloc.h, value): the environment
# variables are read by glibc when a process starts (so they reach subprocesses and test
# workers too), mallopt sets the same option in a running process
_OPTIONS = (("MALLOC_ARENA_MAX", -8, 2), ("MALLOC_MMAP_MAX_", -4, 0),
            ("MALLOC_TRIM_THRESHOLD_", -1, _TRIM_NEVER))
MALLOC_ENV = {name: str(value) for name, _, value in _OPTIONS}


def applies(system: str | None = None, libc: tuple[str, str] | None = None) -> bool:
    """Whether malloc here is glibc's on Linux, the only one these options are for.

    Args:
      system, libc: `sys.platform` and `platform.libc_ver()`; defaults are this machine's.

    Returns:
      True on Linux with glibc.
    """
    system = sys.platform if system is None else system
    name, _ = platform.libc_ver() if libc is None else libc
    return system.startswith("linux") and name == "glibc"


def reuse_freed_memory() -> bool:
    """Sets glibc's malloc to keep freed memory mapped for reuse (see the module docstring).

    Call it before JAX's first computation; later, threads XLA has started keep their own
    arenas and part of the effect is lost.

    Returns:
      True if the options were set, False where they do not apply (not Linux with glibc) or
      glibc refused one.
    """
    if not applies():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all([libc.mallopt(param, value) == 1 for _, param, value in _OPTIONS])  # each set


def reuse_for_command_line(environ=None) -> bool:
    """`reuse_freed_memory()` unless GRADFLOW_REUSE_MEMORY=0; what `python -m gradflow.run`
    calls before it computes anything.

    Args:
      environ: the environment to read the opt-out from (default `os.environ`).

    Returns:
      Whether the options were set.
    """
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "1").strip() == "0":
        return False
    return reuse_freed_memory()
