"""The public API is deliberate: `__all__` is what `import gradflow as gf` offers, and every
`gf.` name the README and docs/ use exists."""
import re
from pathlib import Path

import gradflow as gf

DOCS = [Path(__file__).parents[1] / "README.md", *sorted((Path(__file__).parents[1] / "docs").glob("*.md"))]


def test_all_names_exist():
    missing = [n for n in gf.__all__ if not hasattr(gf, n)]
    assert not missing


def test_every_documented_gf_name_exists():
    names = {m for doc in DOCS for m in re.findall(r"\bgf((?:\.[A-Za-z_]\w*)+)", doc.read_text())}
    assert len(names) > 20  # the docs do use the API
    missing = []
    for dotted in sorted(names):
        obj = gf
        for part in dotted.strip(".").split("."):
            if not hasattr(obj, part):
                missing.append("gf" + dotted)
                break
            obj = getattr(obj, part)
    assert not missing, missing
    top = {d.strip(".").split(".")[0] for d in names}
    assert top <= set(gf.__all__), top - set(gf.__all__)


def test_instrument_exports_only_its_public_surface():
    assert set(gf.instrument.__all__) == {"register_activation", "register_scanned_stack",
                                          "WEIGHT_LAYERS", "LAYER_METRICS", "TRAIN_METRICS",
                                          "error_tap", "activation_stats"}
