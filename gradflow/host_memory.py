"""Keep the memory XLA:CPU frees for its next run (Linux, glibc).

Why: XLA:CPU allocates the temporaries of every run of a compiled step with `malloc`. glibc
serves blocks above its mmap threshold (at most 32 MiB) with fresh `mmap`ed pages and unmaps
them on `free`, and its per-thread arenas give the free top of their heaps back to the kernel,
so every step page-faults its working set in again, 4 KiB at a time, each page zero-filled by
the kernel: 12,700 faults per train step of the depth-50 plain CNN (batch 32), 21,900 for the
residual_bn one. `reuse_freed_memory()` sets four malloc options: no `mmap` for large blocks,
no trimming of the main heap, at most two arenas, and a top pad of 64 MiB, which stops glibc from
unmapping a per-thread heap (64 MiB each) whenever it empties. The next run reuses what the last
one freed: the CNNs' train steps fault 0-550 times instead of 12,700-21,900 and run 1.14-1.47x
faster (`python benchmarks/host_memory.py`). A block larger than a per-thread heap (64 MiB) that
a worker thread allocates from the second arena is still `mmap`ed and unmapped on free (glibc
has no option for it): the residual_bn CNN's 90 MB of temporaries fault 0-1,100 times a step
beside two busy processes, once 5,500, depending on the thread XLA runs the step on. One arena
for every thread removes those too, but the threads then contend for its lock: the scanned
MLP's step took 15-23 ms against 13-17 ms with two.

The price: the process keeps its peak heap until it exits (as PyTorch's caching allocator
does), and its threads share two malloc arenas, each padded by up to 64 MiB of address space
(not memory: pages are only backed once touched). XLA's threads pick their arena at their first
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
_HEAP_MAX = 64 << 20  # glibc's per-thread heap size (64-bit); a top pad this large keeps them
_OPTIONS = (("MALLOC_ARENA_MAX", -8, 2), ("MALLOC_MMAP_MAX_", -4, 0),
            ("MALLOC_TRIM_THRESHOLD_", -1, _TRIM_NEVER), ("MALLOC_TOP_PAD_", -2, _HEAP_MAX))
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
