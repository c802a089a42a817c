"""examples/notebook.ipynb runs top to bottom in a Jupyter kernel (nbclient, in a copy in a
temporary folder), shows a Snapshot and a History as HTML tables, writes its report there, and
is committed with its outputs cleared."""
import base64
import re
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[notebook]'")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[notebook]'")
pytest.importorskip("ipykernel", reason="pip install -e '.[notebook]'")

NOTEBOOK = Path(__file__).parents[1] / "examples" / "notebook.ipynb"


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebook")
    shutil.copy(NOTEBOOK, folder)
    nb = nbformat.read(folder / NOTEBOOK.name, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}}).execute()
    return folder, nb


def _html(nb, source: str) -> str:
    """The text/html output of the code cell whose source ends with `source`."""
    cell, = [c for c in nb.cells if c.cell_type == "code" and c.source.strip().endswith(source)]
    return "".join(o.data.get("text/html", "") for o in cell.outputs if "data" in o)


def test_a_snapshot_shows_as_a_table(executed):
    page = _html(executed[1], "\nsnap")
    assert "<b>Snapshot</b>: 8 rows × 7 metrics" in page and page.count("<tr>") == 9
    assert "<th>error_norm</th>" in page and "<th>update_ratio</th>" in page
    assert "1: stem/layer" in page and "Whole network: loss = 2." in page


def test_a_history_shows_its_records_heatmap_and_last_record(executed):
    page = _html(executed[1], 'histories["plain"]')
    assert "<b>History</b>: 9 records, steps 0–39, 8 layers" in page
    png, = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
    assert "Last record (step 39)" in page and page.count("<table") == 1


def test_the_report_is_written_next_to_the_notebook(executed):
    folder, nb = executed
    page = (folder / "report.html").read_text()
    assert "<h1>Gradient flow: plain, residual</h1>" in page and page.count("<img ") == 6
    assert "report.html" in str(nb.cells[-1].outputs[0].data["text/plain"])
