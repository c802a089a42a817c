"""Regenerates the results tables of README.md and docs/*.md by running their commands.

    python docs/generate.py              # run every marked command, rewrite the blocks
    python docs/generate.py --list       # the marked blocks and their commands
    python docs/generate.py --only run   # blocks whose command contains "run"

A generated block is marked in the Markdown source:

    <!-- generated: cmd="python -m gradflow.run --depth 50" from="^arch " to="^err ratio" -->
    ...
    <!-- end generated -->

Everything between the markers is replaced by the lines of the command's standard output from
the first line matching `from` to the first following line matching `to` (both included), in a
code block (as they are, for Markdown, with `format="markdown"`), followed by one line naming
the command, its wall time and the machine. A command marked more than once runs once. Commands
run in a fresh temporary directory (their run directories are thrown away) with this Python
interpreter standing in for `python`. A command that fails, or whose output has no matching
lines, leaves its block unchanged and makes the script exit 1.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gradflow._io import write_atomic  # noqa: E402

BEGIN = re.compile(r"^<!-- generated: (?P<attrs>.*?) -->$")
END = "<!-- end generated -->"
ATTR = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Block:
    """One marked block of a Markdown file.

    Attributes:
      path: the file.
      start, end: the line indices of its begin and end markers.
      cmd, first, last: the command and the regular expressions of the first and last line kept.
      markdown: the lines are Markdown (a table), inserted as they are rather than as code.
    """
    path: Path
    start: int
    end: int
    cmd: str
    first: str
    last: str
    markdown: bool = False


def find_blocks(path: Path, lines: list[str]) -> list[Block]:
    """The marked blocks of one file.

    Args:
      path: the file (for messages).
      lines: its lines, without line ends.

    Returns:
      The blocks, in file order.

    Raises:
      ValueError: for a begin marker without `cmd`, `from` or `to`, or without its end marker.
    """
    blocks, i = [], 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        if m:
            attrs = dict(ATTR.findall(m.group("attrs")))
            missing = [k for k in ("cmd", "from", "to") if k not in attrs]
            if missing:
                raise ValueError(f"{path}:{i + 1}: generated block lacks {', '.join(missing)}")
            try:
                end = lines.index(END, i + 1)
            except ValueError:
                raise ValueError(f"{path}:{i + 1}: generated block has no '{END}'") from None
            blocks.append(Block(path, i, end, attrs["cmd"], attrs["from"], attrs["to"],
                                attrs.get("format") == "markdown"))
            i = end
        i += 1
    return blocks


def excerpt(output: str, first: str, last: str) -> list[str]:
    """The lines of `output` from the first matching `first` to the next matching `last`.

    Args:
      output: a command's standard output.
      first, last: regular expressions (`re.search`).

    Returns:
      The lines, both ends included; [] where `first` or a following `last` does not match.

    Example:
      >>> excerpt("noise\\narch a\\nplain 1\\nerr ratio: x\\nmore", "^arch", "^err ratio")
      ['arch a', 'plain 1', 'err ratio: x']
    """
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if re.search(first, line):
            for j in range(i, len(lines)):
                if re.search(last, lines[j]):
                    return [ln.rstrip() for ln in lines[i:j + 1]]
            return []
    return []


def machine() -> str:
    """The CPU model and the number of cores, for the line under a generated table."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def run(cmd: str) -> tuple[str, float]:
    """Runs a documented command in a fresh temporary directory.

    Args:
      cmd: the command as the docs show it; a leading `python` is this interpreter, and a
        script path after it (`docs/slopes.py`) is relative to the repository.

    Returns:
      (standard output, wall seconds).

    Raises:
      RuntimeError: if the command exits non-zero (its last lines of stderr in the message).
    """
    argv = shlex.split(cmd)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
        if len(argv) > 1 and (ROOT / argv[1]).is_file():  # a script of the repository
            argv[1] = str(ROOT / argv[1])
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="dumb")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        done = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{cmd!r} exited {done.returncode}:\n{tail}")
    return done.stdout, wall


def render(block: Block, lines: list[str], wall: float) -> list[str]:
    """The new content of a block: the excerpt (in a code block unless Markdown) and the line
    saying how."""
    body = [*lines] if block.markdown else ["```", *lines, "```"]
    return [*body, "",
            f"Output of `{block.cmd}` ({wall:.0f} s, {machine()}; regenerated by "
            f"`python docs/generate.py`)."]


def files() -> list[Path]:
    """README.md and the Markdown pages under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def regenerate(paths, only: str | None = None, runner=run) -> int:
    """Reruns every block's command and rewrites the files.

    Args:
      paths: the Markdown files.
      only: keep blocks whose command contains this text; None: all.
      runner: `runner(cmd) -> (stdout, wall seconds)` (tests pass a fake).

    Returns:
      The number of blocks that could not be regenerated (left unchanged).
    """
    failed, done = 0, {}

    def once(cmd):  # a command marked in several places runs once
        if cmd not in done:
            done[cmd] = runner(cmd)
        return done[cmd]

    for path in paths:
        lines = path.read_text().splitlines()
        blocks = [b for b in find_blocks(path, lines) if only is None or only in b.cmd]
        for b in reversed(blocks):  # from the end: earlier indices stay valid
            try:
                out, wall = once(b.cmd)
            except RuntimeError as e:
                print(f"{path.name}: {e}", file=sys.stderr)
                failed += 1
                continue
            kept = excerpt(out, b.first, b.last)
            if not kept:
                print(f"{path.name}: no lines from /{b.first}/ to /{b.last}/ in the output of "
                      f"{b.cmd!r}", file=sys.stderr)
                failed += 1
                continue
            lines[b.start + 1:b.end] = render(b, kept, wall)
            print(f"{path.name}: {b.cmd} ({wall:.0f} s)")
        if blocks:
            write_atomic(path, "\n".join(lines) + "\n")
    return failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="list the blocks, run nothing")
    p.add_argument("--only", default=None, help="only blocks whose command contains this text")
    a = p.parse_args(argv)
    if a.list:
        for path in files():
            for b in find_blocks(path, path.read_text().splitlines()):
                print(f"{path.relative_to(ROOT)}:{b.start + 1}: {b.cmd}")
        return 0
    return 1 if regenerate(files(), a.only) else 0


if __name__ == "__main__":
    sys.exit(main())
