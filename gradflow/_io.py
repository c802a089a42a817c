"""Files that are never half-written, and JSON that holds no NaN.

The lowest layer of the package: every module that writes a file goes through `write_atomic`,
every module that writes JSON through `json_ready` (or `write_json`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def write_atomic(path, data: str | bytes, *, fsync: bool = False) -> Path:
    """Writes `data` to `path` through a temporary file renamed into place, so a reader (or a
    crash) never sees a truncated file under the final name.

    Args:
      path: the destination.
      data: text (written as UTF-8) or bytes.
      fsync: flush the file to disk before the rename (for files that must survive `kill -9`).

    Returns:
      The destination as a Path.

    Example:
      >>> write_atomic(tmp_path / "a.txt", "hello")  # doctest: +SKIP
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
