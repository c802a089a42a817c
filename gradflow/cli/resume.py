"""The record a run keeps of itself, so that `--resume RUN_DIR` needs nothing else.

`run.json` in the run directory holds the command-line options that made the run, its status
(running, interrupted, complete) and the results of the architectures already finished (their
Histories are the `<arch>_history.npz` files next to it). The architecture in training when the
run stopped has a checkpoint under `checkpoints/<arch>/` (see `gradflow.checkpoint`); the whole
`checkpoints/` folder is removed when the run completes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .._io import write_json
from ..experiments.side_by_side import ArchResult
from ..checkpoint import CHECKPOINTS, ArchSaver
from ..history import History

RUN_FILE = "run.json"
_FORMAT = "gradflow-run-1"


class RunRecord:
    """run.json of one run directory.

    Args:
      directory: the run directory.
      argv: the options that made the run, without --out and --quiet.
      status: "running", "interrupted" or "complete".
      finished: arch -> `ArchResult.to_json()` numbers of the finished architectures (their
        Histories are loaded on demand).
      started: the start time (ISO format).

    Example:
      >>> import tempfile
      >>> rec = RunRecord.create(tempfile.mkdtemp(), ["--depth", "20", "--out", "x", "--quiet"])
      >>> rec.argv, rec.status, RunRecord.load(rec.directory).argv
      (['--depth', '20'], 'running', ['--depth', '20'])
    """

    def __init__(self, directory, argv, status="running", finished=None, started=None):
        self.directory = Path(directory)
        self.argv = list(argv)
        self.status = status
        self.finished: dict = dict(finished or {})
        self.started = started
        self.clock: dict = {}  # time of the last checkpoint, shared by the archs

    @property
    def path(self) -> Path:
        """The run.json file."""
        return self.directory / RUN_FILE

    @classmethod
    def create(cls, directory, argv, started=None) -> "RunRecord":
        """Starts the record of a new run and writes it.

        Args:
          directory: the (existing) run directory.
          argv: the command-line options; --out and --quiet are dropped, --data-dir and
            --tensorboard made absolute.
          started: the start time.

        Returns:
          The RunRecord, status "running".
        """
        argv = strip_option(strip_option(argv, "--out"), "--quiet", value=False)
        record = cls(directory, _absolute(_absolute(argv, "--data-dir"), "--tensorboard"),
                     started=started)
        record.save()
        return record

    @classmethod
    def load(cls, directory) -> "RunRecord":
        """Reads the run.json of `directory`.

        Args:
          directory: a run directory.

        Returns:
          Its RunRecord.

        Raises:
          ValueError: (one line) if `directory` holds no resumable gradflow run.
        """
        directory = Path(directory)
        path = directory / RUN_FILE
        if not directory.is_dir():
            raise ValueError(f"{directory} is not a directory")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{directory} has no {RUN_FILE} (not a gradflow run directory, or "
                             "one made before runs could be resumed)") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not readable ({e})") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a gradflow run record")
        return cls(directory, data["argv"], data["status"], data.get("finished"),
                   data.get("started"))

    def save(self) -> None:
        """Writes run.json atomically."""
        data = {"format": _FORMAT, "argv": self.argv, "status": self.status,
                "started": self.started, "finished": self.finished}
        write_json(self.path, data, indent=1)

    def saver(self, arch: str) -> ArchSaver:
        """The checkpointing hooks of one architecture's training.

        Args:
          arch: the architecture.

        Returns:
          A `checkpoint.ArchSaver` in this directory, sharing the run's checkpoint clock.
        """
        return ArchSaver(self.directory, arch, self.clock)

    def result(self, arch: str) -> ArchResult | None:
        """The result of an architecture finished before.

        Args:
          arch: the architecture.

        Returns:
          Its ArchResult with its History loaded, or None if it has not finished.
        """
        numbers = self.finished.get(arch)
        if numbers is None:
            return None
        path = self.directory / f"{arch}_history.npz"
        return ArchResult.from_json(numbers, History.load(path) if numbers.get("error") is None
                                    else None)

    def finish(self, res: ArchResult) -> None:
        """Records a finished architecture: saves its History (if any) and its numbers.

        Args:
          res: its ArchResult.
        """
        if res.history is not None:
            res.history.save(self.directory / f"{res.arch}_history.npz")
        self.finished[res.arch] = res.to_json()
        self.save()

    def close(self, status: str) -> None:
        """Marks the run interrupted or complete; a complete run's checkpoints are removed.

        Args:
          status: "interrupted" or "complete".
        """
        self.status = status
        if status == "complete":
            shutil.rmtree(self.directory / CHECKPOINTS, ignore_errors=True)
        self.save()


def _absolute(argv, option: str) -> list:
    """`argv` with the path given to `option` made absolute (a resume may start elsewhere)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == option and i + 1 < len(out):
            out[i + 1] = str(Path(out[i + 1]).expanduser().absolute())
        elif a.startswith(option + "="):
            out[i] = f"{option}={Path(a.split('=', 1)[1]).expanduser().absolute()}"
    return out


def strip_option(argv, option: str, value: bool = True) -> list:
    """A command line without one option.

    Args:
      argv: the command line.
      option: the option, e.g. "--out".
      value: whether it takes a value (`--opt v` or `--opt=v`), removed with it.

    Returns:
      The other arguments, in order.

    Example:
      >>> strip_option(["--out", "runs/a", "--depth=20", "--quiet"], "--out")
      ['--depth=20', '--quiet']
    """
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == option:
            skip = value
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return out


def conflicts(parser, recorded: list, given: list) -> list[str]:
    """The options in `given` whose values differ from those of the `recorded` command line.

    Args:
      parser: the run's parser.
      recorded: the run's own options.
      given: the options given with --resume.

    Returns:
      The flags whose value `given` changes (argparse keeps the last value of an option given
      twice).

    Example:
      >>> from gradflow.cli.args import build_parser
      >>> conflicts(build_parser(), ["--depth", "20"], ["--depth", "30", "--seed", "0"])
      ['--depth']
    """
    before = vars(parser.parse_args(recorded))
    after = vars(parser.parse_args(recorded + given))
    names = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
    return [names.get(k, k) for k in before if before[k] != after[k]]
