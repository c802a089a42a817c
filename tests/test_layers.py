"""The package's import layers (written in gradflow/__init__.py's docstring): a module imports
only from its own layer or lower ones, and no modules import each other in a loop, lazy imports
inside functions included."""
from __future__ import annotations

import ast
from pathlib import Path

import gradflow

ROOT = Path(gradflow.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("gradflow",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The gradflow modules `name` imports anywhere in its code (`from pkg import module` counts
    as importing the module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gradflow")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("gradflow"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs or {target}
            if subs and target in MODULES and len(subs) < len(node.names):
                found.add(target)
    return {m for m in found if m in MODULES and m != name}


def _layer(name: str) -> tuple[int, str]:
    layers = gradflow._LAYERS
    best = max((prefix for prefix in layers if name == prefix or name.startswith(prefix + ".")),
               key=len)
    return layers[best], best


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m != "gradflow" and not any(
        m == p or m.startswith(p + ".") for p in gradflow._LAYERS)]
    assert not missing


def test_modules_import_only_their_own_layer_or_lower():
    bad = []
    for name in MODULES:
        if name == "gradflow":  # the package's facade re-exports the public API of every layer
            continue
        level, layer = _layer(name)
        for dep in _imports(name):
            if dep == "gradflow":
                bad.append(f"{name} imports the package facade")
                continue
            dep_level, dep_layer = _layer(dep)
            if dep_level > level:
                bad.append(f"{name} ({layer}, layer {level}) imports {dep} ({dep_layer}, "
                           f"layer {dep_level})")
    assert not bad, "\n".join(bad)


def test_no_import_loops():
    graph = {m: _imports(m) - {"gradflow"} for m in MODULES if m != "gradflow"}
    loops, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                loops.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not loops, "\n".join(loops)


def test_the_checker_sees_a_violation():
    """The rule is not vacuous: the CLI imports the experiments, which are above the library."""
    assert _layer("gradflow.cli.main")[0] > _layer("gradflow.experiments.side_by_side")[0]
    assert "gradflow.experiments.side_by_side" in _imports("gradflow.cli.resume")
