"""Fault injection shared by the tests of run directories and checkpoints: a full disk for
gradflow's own files (`_io._write`), for orbax's Python-level writes (`etils.epath`), and a real
small tmpfs where the machine allows mounting one."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest

from gradflow import _io


def one_line(err: str, start: str) -> None:
    """Asserts that `err` is one line starting with `start` and holds no traceback."""
    assert err.count("\n") == 1 and err.startswith(start) and "Traceback" not in err, err


def exit_code(fn):
    """`fn()`'s return value, or the code of the SystemExit it raised."""
    try:
        return fn()
    except SystemExit as e:
        return e.code


class Fault:
    """An injected fault: `calls` lists the writes it saw, `heal()` gives the space back."""

    def __init__(self):
        self.calls, self.on = [], True

    def heal(self):
        """Later writes succeed."""
        self.on = False

    def hit(self, what, fail_at: int) -> bool:
        """Counts a write; True where it must fail."""
        self.calls.append(what)
        return self.on and len(self.calls) >= fail_at


def full_disk_for_gradflow(monkeypatch, fail_at: int) -> Fault:
    """From the `fail_at`-th low-level write of gradflow's files on, each write puts half its
    bytes on disk and raises ENOSPC (until `heal()`). The Fault's calls are the write sizes."""
    real, fault = _io._write, Fault()

    def full_disk(fd, data):
        if fault.hit(len(data), fail_at):
            os.write(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(_io, "_write", full_disk)
    return fault


def full_disk_for_orbax(monkeypatch, under, fail_at: int) -> Fault:
    """From the `fail_at`-th text file orbax writes under `under` on (its metadata, headers and
    commit markers, ten per checkpoint, written through `etils.epath`), each write puts half the
    text on disk and raises ENOSPC (until `heal()`). Array data (tensorstore, C++) is not
    affected: `small_tmpfs` covers it. The Fault's calls are the paths written."""
    from etils import epath

    cls = type(epath.Path("/"))
    real, fault, root = cls.write_text, Fault(), Path(under).absolute()

    def full_disk(self, data, *args, **kwargs):
        if root in Path(str(self)).parents and fault.hit(str(self), fail_at):
            real(self, data[:len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(cls, "write_text", full_disk)
    return fault


@contextlib.contextmanager
def small_tmpfs(path: Path, size_kib: int):
    """A tmpfs of `size_kib` KiB mounted at `path` for the block (a real full disk); skips the
    test where this machine does not let the tests mount one (not root, no CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Fills the file system of `disk` with one file until a write fails (ENOSPC), then gives
    `leave` bytes back. Returns the filler file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler
