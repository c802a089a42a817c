"""Checks shared by every entry of the command line: the one-line usage error, `--archs`,
`--out`, and the command line as recorded in run files."""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `python -m gradflow.run: error: <message>`, exit code 2."""

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
        if path.is_dir() and any(path.iterdir()):
            p.error(f"argument --out: {out} is not empty (gradflow never overwrites a run)")
        return path
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path, k = Path("runs") / stamp, 1
    while path.exists():
        k += 1
        path = Path("runs") / f"{stamp}_{k}"
    return path


def make_dir(path: Path) -> None:
    """Creates the run directory (and its parents); failing is a usage error naming --out.

    Args:
      path: the directory.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        usage_error(f"argument --out: cannot create {path} ({e.strerror})")
