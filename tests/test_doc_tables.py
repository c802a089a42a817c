"""docs/generate.py: every results table in the docs is regenerated from its command."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("doc_generate", ROOT / "docs" / "generate.py")
generate = importlib.util.module_from_spec(spec)
sys.modules["doc_generate"] = generate
spec.loader.exec_module(generate)

DOC = """# Results
text before
<!-- generated: cmd="python -m tool --n 3" from="^arch " to="^legend" -->
```
stale table
```
<!-- end generated -->
text after
"""


def fake_runner(outputs):
    def runner(cmd):
        out = outputs[cmd]
        if isinstance(out, Exception):
            raise out
        return out, 12.3
    return runner


def test_a_block_is_replaced_by_the_commands_table_and_says_how(tmp_path):
    doc = tmp_path / "r.md"
    doc.write_text(DOC)
    out = "progress\narch  loss\nplain 2.30\nlegend: loss is ...\nwrote runs/x\n"
    assert generate.regenerate([doc], runner=fake_runner({"python -m tool --n 3": out})) == 0
    text = doc.read_text()
    assert "stale table" not in text and "progress" not in text and "wrote" not in text
    assert "```\narch  loss\nplain 2.30\nlegend: loss is ...\n```" in text
    assert "Output of `python -m tool --n 3` (12 s, " in text
    assert text.startswith("# Results\ntext before\n") and text.endswith("text after\n")
    # idempotent: a second run finds the same block and rewrites it the same way
    generate.regenerate([doc], runner=fake_runner({"python -m tool --n 3": out}))
    assert doc.read_text() == text


@pytest.mark.parametrize("result", [RuntimeError("exited 2"), "no table here\n"])
def test_a_failed_command_or_missing_table_leaves_the_block_and_counts(tmp_path, result):
    doc = tmp_path / "r.md"
    doc.write_text(DOC)
    assert generate.regenerate([doc], runner=fake_runner({"python -m tool --n 3": result})) == 1
    assert doc.read_text() == DOC


def test_malformed_markers_are_refused_with_the_place(tmp_path):
    with pytest.raises(ValueError, match=r"r.md:1: generated block lacks to"):
        generate.find_blocks(tmp_path / "r.md", ['<!-- generated: cmd="x" from="a" -->'])
    with pytest.raises(ValueError, match="has no '<!-- end generated -->'"):
        generate.find_blocks(tmp_path / "r.md", ['<!-- generated: cmd="x" from="a" to="b" -->'])


def test_every_block_in_the_docs_parses_and_names_a_gradflow_command():
    blocks = [b for p in generate.files() for b in generate.find_blocks(p, p.read_text().splitlines())]
    assert blocks, "README.md's default-run table is a generated block"
    for b in blocks:
        assert b.cmd.startswith(("python -m gradflow.run", "python benchmarks/", "python docs/"))


def test_a_real_command_runs_in_a_scratch_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, wall = generate.run("python -c \"import os; print('arch'); print(os.getcwd())\"")
    assert out.splitlines()[0] == "arch" and Path(out.splitlines()[1]) != tmp_path
    assert wall > 0
    with pytest.raises(RuntimeError, match="exited 3"):
        generate.run("python -c \"raise SystemExit(3)\"")


def test_markdown_blocks_are_inserted_as_tables_and_a_command_runs_once(tmp_path):
    doc = tmp_path / "r.md"
    marker = '<!-- generated: cmd="python docs/x.py" from="^\\| arch" to="^\\| b" format="markdown" -->'
    doc.write_text(f"{marker}\nold\n<!-- end generated -->\n\n{marker}\nold\n<!-- end generated -->\n")
    calls = []

    def runner(cmd):
        calls.append(cmd)
        return "| arch | v |\n|---|---|\n| a | 1 |\n| b | 2 |\n", 3.0

    assert generate.regenerate([doc], runner=runner) == 0
    assert calls == ["python docs/x.py"]
    text = doc.read_text()
    assert text.count("| arch | v |\n|---|---|\n| a | 1 |\n| b | 2 |\n\nOutput of") == 2
    assert "```" not in text


def test_the_slopes_table_of_a_summary():
    spec = importlib.util.spec_from_file_location("doc_slopes", ROOT / "docs" / "slopes.py")
    slopes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(slopes)
    rows = slopes.table({"archs": [{"arch": "plain", "error_slope_init": -0.147,
                                    "error_slope_theory": -0.151},
                                   {"arch": "residual", "error_slope_init": 0.034}]})
    assert rows == ["| arch | measured | predicted |", "|---|---|---|",
                    "| plain | −0.147 | −0.151 |", "| residual | +0.034 | — |"]
