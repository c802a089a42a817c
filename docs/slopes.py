"""Prints the default run's error-signal slopes at init, measured against mean-field theory.

    python docs/slopes.py            # runs `python -m gradflow.run --depth 50` in a scratch dir

The table (Markdown) is what docs/theory.md shows: for each architecture, the change of
log10 ||dL/dz|| per layer toward the input at init, as measured (`error_slope_init` in the run's
summary.json) and as predicted (`error_slope_theory`).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def table(summary: dict) -> list[str]:
    """The slopes table of one run's summary.json.

    Args:
      summary: the parsed summary.json of a side-by-side run (`archs`: one dict per arch).

    Returns:
      Markdown lines: a header and one row per architecture ("—" where a value is missing).

    Example:
      >>> table({"archs": [{"arch": "plain", "error_slope_init": -0.147,
      ...                   "error_slope_theory": None}]})
      ['| arch | measured | predicted |', '|---|---|---|', '| plain | −0.147 | — |']
    """
    def fmt(v):
        return "—" if v is None else f"{v:+.3f}".replace("-", "−")

    rows = ["| arch | measured | predicted |", "|---|---|---|"]
    for a in summary["archs"]:
        rows.append(f"| {a['arch']} | {fmt(a.get('error_slope_init'))} | "
                    f"{fmt(a.get('error_slope_theory'))} |")
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        done = subprocess.run([sys.executable, "-m", "gradflow.run", "--depth", "50", "--quiet",
                               "--out", str(out)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                  f"gradflow.run exited {done.returncode}", file=sys.stderr)
            return done.returncode
        summary = json.loads((out / "summary.json").read_text())
    print("\n".join(table(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
