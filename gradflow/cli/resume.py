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
    """run.json of one run directory: `argv` (the options, without --out), `status` and the
    `finished` architectures' results (JSON numbers; the History is loaded on demand)."""

    def __init__(self, directory, argv, status="running", finished=None, started=None):
        self.directory = Path(directory)
        self.argv = list(argv)
        self.status = status
        self.finished: dict = dict(finished or {})
        self.started = started
        self.clock: dict = {}  # time of the last checkpoint, shared by the archs

    @property
    def path(self) -> Path:
        return self.directory / RUN_FILE

    @classmethod
    def create(cls, directory, argv, started=None) -> "RunRecord":
        argv = strip_option(strip_option(argv, "--out"), "--quiet", value=False)
        record = cls(directory, _absolute(argv, "--data-dir"), started=started)
        record.save()
        return record

    @classmethod
    def load(cls, directory) -> "RunRecord":
        """ValueError (one line) if `directory` holds no resumable gradflow run."""
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
        data = {"format": _FORMAT, "argv": self.argv, "status": self.status,
                "started": self.started, "finished": self.finished}
        write_json(self.path, data, indent=1)

    def saver(self, arch: str) -> ArchSaver:
        return ArchSaver(self.directory, arch, self.clock)

    def result(self, arch: str) -> ArchResult | None:
        """The result of an architecture finished before (its History loaded), else None."""
        numbers = self.finished.get(arch)
        if numbers is None:
            return None
        path = self.directory / f"{arch}_history.npz"
        return ArchResult.from_json(numbers, History.load(path) if numbers.get("error") is None
                                    else None)

    def finish(self, res: ArchResult) -> None:
        """Records a finished architecture: its History (if any) and its numbers."""
        if res.history is not None:
            res.history.save(self.directory / f"{res.arch}_history.npz")
        self.finished[res.arch] = res.to_json()
        self.save()

    def close(self, status: str) -> None:
        """Marks the run interrupted or complete; a complete run needs no checkpoints."""
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
    """`argv` without `option` (and its value, as `--opt v` or `--opt=v`, if it takes one)."""
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
    """The options in `given` whose values differ from those of the `recorded` command line
    (argparse keeps the last value of an option given twice)."""
    before = vars(parser.parse_args(recorded))
    after = vars(parser.parse_args(recorded + given))
    names = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
    return [names.get(k, k) for k in before if before[k] != after[k]]
