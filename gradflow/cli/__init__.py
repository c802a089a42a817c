"""The command line, `python -m gradflow.run`: options and their checks (`args`), the run and
sweep drivers (`main`), the seed-paper experiments' options (`experiments`), interruption
(`interrupt`) and `--resume` (`resume`)."""
from .args import build_parser, parse
from .main import main

__all__ = ["main", "parse", "build_parser"]
