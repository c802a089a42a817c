"""Checks shared by every entry of the command line: the one-line usage error, `--archs`,
`--out`, and the command line as recorded in run files."""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import uuid
import sys
from pathlib import Path

from .._io import WriteError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `python -m gradflow.run: error: <message>`, exit code 2.
    Options must be spelled out: abbreviations (`--step 3` for `--steps 3`) are refused."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message):
        """Prints `message` as a one-line usage error on stderr and exits with code 2.

        Args:
          message: what is wrong, naming the option.
        """
        sys.stderr.write(f"python -m gradflow.run: error: {message} (see --help)\n")
        sys.exit(2)


def usage_error(message: str):
    """Exits with code 2 after printing `message` as a one-line usage error (`Parser.error`).

    Args:
      message: what is wrong, naming the option ("argument --out: ...").
    """
    Parser().error(message)


def command(argv) -> str:
    """The command line as a person would type it again.

    Args:
      argv: the options (None: this process's).

    Returns:
      "python -m gradflow.run" and the options, space-separated.

    Example:
      >>> command(["--depth", "20", "--archs", "plain,bn"])
      'python -m gradflow.run --depth 20 --archs plain,bn'
    """
    return " ".join(["python -m gradflow.run", *(sys.argv[1:] if argv is None else argv)])


def archs_list(p, text: str, choices, hint: str = "") -> list[str]:
    """The architectures of a comma-separated `--archs` value.

    Args:
      p: the parser whose `error` reports a bad value.
      text: the value.
      choices: the valid names.
      hint: added to the message about an unknown name.

    Returns:
      The names, in order; none given, an unknown one or one given twice is a usage error.

    Example:
      >>> archs_list(Parser(), "plain, residual_bn", ("plain", "bn", "residual_bn"))
      ['plain', 'residual_bn']
    """
    archs = [s.strip() for s in text.split(",") if s.strip()]
    if not archs:
        p.error(f"argument --archs: no architecture given (choose from {', '.join(choices)})")
    for arch in archs:
        if arch not in choices:
            p.error(f"argument --archs: {arch!r} is not one of {', '.join(choices)}{hint}")
        if archs.count(arch) > 1:
            p.error(f"argument --archs: {arch!r} is given twice")
    return archs


def out_dir(p, out) -> Path:
    """The run directory, checked but not created.

    Args:
      p: the parser whose `error` reports a bad `out`.
      out: the `--out` value, or None.

    Returns:
      `out` as a Path if it is new or an empty directory (else a usage error); without `out`,
      a new `runs/<date>_<time>` (suffixed _2, _3, ... if taken).
    """
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            p.error(f"argument --out: {out} exists and is not a directory")
        if (path / OWNER).exists():
            p.error(f"argument --out: {out} is owned by another run (pid and host: "
                    f"{_owner(path)}; {path / OWNER})")
        if path.is_dir() and any(path.iterdir()):
            p.error(f"argument --out: {out} is not empty (gradflow never overwrites a run)")
        return path
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path, k = Path("runs") / stamp, 1
    while path.exists():
        k += 1
        path = Path("runs") / f"{stamp}_{k}"
    return path


OWNER = ".gradflow-owner"  # in a run directory while a run writes into it: "<pid> <host>"


def write_error(err: OSError) -> int:
    """Prints `gradflow: error: cannot write <path>: <reason>` on stderr.

    Args:
      err: the failure (a `gradflow._io.WriteError`, or any OSError naming a file).

    Returns:
      The exit code of a run that could not write its files, 1.
    """
    path = getattr(err, "path", None) or err.filename or "a file"
    sys.stderr.write(f"gradflow: error: cannot write {path}: {err.strerror or err}\n")
    return 1


class Claim:
    """A run directory owned by this process: `path`, `created` (made by this claim, so
    `release(remove=...)` may delete it again).

    Args:
      path: the run directory.
      created: whether the claim created it.
    """

    def __init__(self, path: Path, created: bool):
        self.path, self.created = Path(path), created

    def release(self, remove=()) -> None:
        """Gives the directory up: removes the ownership file, the files named in `remove`, and
        the directory itself if this claim created it and nothing else is left in it.

        Args:
          remove: file names in the directory to delete first (what the run wrote).
        """
        for name in (*remove, OWNER):
            try:
                (self.path / name).unlink(missing_ok=True)
            except OSError:
                pass
        if self.created and remove:
            try:
                self.path.rmdir()
            except OSError:
                pass


def _owner(path: Path) -> str:
    try:
        return (path / OWNER).read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def _alive(owner: str) -> bool:
    """Whether the owner "<pid> <host>" may still run (another host: assumed so)."""
    import socket

    parts = owner.split()
    try:
        pid = int(parts[0])
    except (IndexError, ValueError):
        return False
    if len(parts) > 1 and parts[1] != socket.gethostname():
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def claim_dir(path: Path, *, resume: bool = False) -> Claim:
    """Makes this process the only owner of the run directory `path`, atomically.

    A new directory is created with `os.mkdir` (only one process can create it); then the
    ownership file `.gradflow-owner` ("<pid> <host>") is written to a private temporary file and
    hard-linked into place (only one process can create the link, also in an existing empty
    directory, and a loser always reads a complete owner). The loser of either race gets a
    one-line usage error naming the directory and its owner (exit 2). A resumed run claims its
    own directory; an ownership file left by a run that no longer exists (`kill -9`) is taken
    over, one left by a live process is refused.

    Args:
      path: the run directory (`--out`, or `--resume`'s).
      resume: whether `path` is an existing run being resumed.

    Returns:
      The Claim; call `release()` when the run ends.

    Example:
      >>> import tempfile
      >>> claim = claim_dir(Path(tempfile.mkdtemp()) / "run")
      >>> sorted(p.name for p in claim.path.iterdir()), claim.created
      (['.gradflow-owner'], True)
      >>> claim.release()
    """
    import socket

    path = Path(path)
    created = False
    if not resume:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path)
            created = True
        except FileExistsError:
            if not path.is_dir():
                usage_error(f"argument --out: {path} exists and is not a directory")
        except OSError as e:
            usage_error(f"argument --out: cannot create {path} ({e.strerror})")
    me = f"{os.getpid()} {socket.gethostname()}"
    for attempt in range(2):
        try:
            _link_owner(path, me)
        except FileExistsError:
            owner = _owner(path)
            if resume and attempt == 0 and not _alive(owner):
                try:  # left by a run that was killed: take it over
                    (path / OWNER).unlink()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    sys.exit(write_error(WriteError(path, e)))
                continue
            usage_error(f"argument {'--resume' if resume else '--out'}: {path} is owned by "
                        f"another run (pid and host: {owner}; {path / OWNER})")
        except OSError as e:
            sys.exit(write_error(WriteError(path, e)))
        break
    claim = Claim(path, created)
    if not resume and any(p.name != OWNER and not _claiming(p.name) for p in path.iterdir()):
        claim.release()
        usage_error(f"argument --out: {path} is not empty (gradflow never overwrites a run)")
    return claim


def _claiming(name: str) -> bool:
    """Whether `name` is another claim's temporary owner file (`_link_owner`), there for an
    instant."""
    return name.startswith(OWNER + ".") and name.endswith(".tmp")


def _link_owner(path: Path, me: str) -> None:
    """Creates `path/OWNER` holding `me`, complete from its first moment.

    Raises:
      FileExistsError: if another run owns `path`.
      OSError: if the directory cannot be written.
    """
    tmp = path / f"{OWNER}.{os.getpid()}.{uuid.uuid4().hex}.tmp"  # private to this call
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            os.write(fd, (me + "\n").encode())
        finally:
            os.close(fd)
        os.link(tmp, path / OWNER)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
