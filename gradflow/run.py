"""`python -m gradflow.run`: the command-line entry point (the CLI lives in `gradflow.cli`)."""
import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
