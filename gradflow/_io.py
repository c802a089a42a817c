"""Files that are never half-written, and JSON that holds no NaN.

The lowest layer of the package: every module that writes a file goes through `write_atomic`,
every module that writes JSON through `json_ready` (or `write_json`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


class WriteError(OSError):
    """A file could not be written (read-only directory, full disk, ...): `path` is the final
    name, `reason` the system's words. The command line reports it in one line."""

    def __init__(self, path, err: OSError):
        super().__init__(err.errno, err.strerror or str(err), str(path))
        self.path = Path(path)
        self.reason = err.strerror or str(err)

    def __str__(self):
        return f"cannot write {self.path}: {self.reason}"


def _write(fd: int, data: bytes) -> None:
    """Writes all of `data` to the file descriptor `fd` (the one low-level write of the
    package's files; tests replace it to simulate a full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(path, data: str | bytes, *, fsync: bool = False) -> Path:
    """Writes `data` to `path` through a temporary file renamed into place, so a reader (or a
    crash, or a full disk) never sees a truncated file under the final name.

    Args:
      path: the destination.
      data: text (written as UTF-8) or bytes.
      fsync: flush the file to disk before the rename (for files that must survive `kill -9`).

    Returns:
      The destination as a Path.

    Raises:
      WriteError: (an OSError) naming `path` if it cannot be written; the temporary file is
        removed and an earlier file under `path` is left as it was.

    Example:
      >>> write_atomic(tmp_path / "a.txt", "hello")  # doctest: +SKIP
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write(fd, data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(path, e) from e
        raise
    return path


def json_ready(obj):
    """`obj` with tuples as lists, numpy scalars as Python numbers, dict keys as strings, and
    NaN / infinities as None (JSON has neither).

    Args:
      obj: nested dicts, lists, tuples, numbers, numpy scalars, strings.

    Returns:
      An object `json.dumps(..., allow_nan=False)` accepts.

    Example:
      >>> json_ready({"a": float("nan"), "b": (1, 2.5)})
      {'a': None, 'b': [1, 2.5]}
    """
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj, *, indent: int = 2) -> Path:
    """Writes `json_ready(obj)` to `path` as indented JSON, atomically (`write_atomic`).

    Args:
      path: the destination.
      obj: anything `json_ready` accepts.
      indent: the JSON indentation.

    Returns:
      The destination as a Path.

    Example:
      >>> import json, tempfile
      >>> path = write_json(Path(tempfile.mkdtemp()) / "a.json", {"loss": float("nan")})
      >>> json.loads(path.read_text())
      {'loss': None}
    """
    return write_atomic(path, json.dumps(json_ready(obj), indent=indent, allow_nan=False) + "\n")
