"""The documentation site (mkdocs.yml: the user guide in docs/ and the API reference generated
from the docstrings) builds with `mkdocs build --strict`: a broken link, a missing page, or a
docstring that names a parameter its function does not have fails the build."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_site_builds_without_warnings(tmp_path):
    missing = [m for m in ("mkdocs", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None]
    assert not missing, f"{missing} not installed: pip install -e '.[docs]'"
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "WARNING" not in output, output

    api = (site / "api" / "gradflow" / "index.html").read_text()
    for name in ("gradflow.value_and_grad", "gradflow.probe.probe", "gradflow.train.train",
                 "gradflow.History", "gradflow.Snapshot", "gradflow.diagnose"):
        assert f'id="{name}"' in api, name
    assert "plus a Snapshot of every layer" in api  # value_and_grad's docstring, not its name only
    for page, name in [("models", "gradflow.models.cnn"),
                       ("plot", "gradflow.plot.heatmap.heatmap"),
                       ("data", "gradflow.data.load"),
                       ("instrument", "gradflow.instrument.register_activation")]:
        assert f'id="{name}"' in (site / "api" / page / "index.html").read_text(), name
    # doctests are code blocks, not block quotes
    assert "<blockquote>" not in (site / "api" / "models" / "index.html").read_text()
    # a link out of docs/ becomes the file's repository path
    assert "benchmarks/RESULTS.md" in (site / "benchmarks" / "index.html").read_text()
    assert (site / "concepts" / "index.html").is_file() and (site / "tour" / "index.html").is_file()


def _tour_code(path, heading):
    lines = path.read_text().splitlines()
    start = lines.index("```python", lines.index(heading))
    return lines[start:lines.index("```", start + 1)]


def test_the_sites_tour_shows_the_readmes_tour():
    """docs/tour.md repeats the README's API tour for the site; the two stay the same."""
    assert (_tour_code(ROOT / "docs" / "tour.md", "## The Python API in one screen")
            == _tour_code(ROOT / "README.md", "## A short tour of the Python API"))
