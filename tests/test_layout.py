"""The package's layout keeps its rules: imports point one way, modules and functions stay short."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segment"

# The flow the package is laid out by: a module may import its own level and the levels before
# it, never a later one (docs/development.md). The package's own __init__ registers the custom
# Keras classes; the benchmarks are programs, like the commands.
LEVELS = {
    "segment._startup": 0, "segment.imageio": 0, "segment.metrics": 0, "segment.layers": 0,
    "segment.losses": 0, "segment.optimizers": 0, "segment.model": 1, "segment": 1,
    "segment.data": 2, "segment.inference": 3, "segment.evaluation": 4, "segment.training": 5,
    "segment.deploy": 6, "segment.benchmarks": 7, "segment.cli": 7, "segment.__main__": 7,
}
LONGEST_MODULE = 500  # lines
LONGEST_FUNCTION = 80  # lines of code, the docstring left out


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name):
    """The `segment` modules that module `name` imports, at any depth of its code."""
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative imports are not used here, but resolve them anyway
                base = ".".join(name.split(".")[: -node.level] + [node.module])
            # `from segment.data import streams` imports a module; `... import find_pairs` not.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in MODULES and target != name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _level(name):
    while name not in LEVELS:
        name = name.rsplit(".", 1)[0]
    return LEVELS[name]


def test_every_module_has_a_level():
    for name in MODULES:
        _level(name)


def _upward(graph):
    return [f"{name} imports {target}" for name, targets in sorted(graph.items())
            for target in sorted(targets) if _level(target) > _level(name)]


def _cycles(graph):
    """Every import cycle reached by a depth-first walk, as lists of module names."""
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_imports_point_down_the_flow():
    assert _upward(GRAPH) == []


def test_no_import_cycles():
    # A module that imports its own package's __init__ (`from segment.data import ...` inside
    # segment/data/) is a cycle too: the __init__ imports it.
    assert _cycles(GRAPH) == []


def test_the_checks_find_what_they_look_for():
    made_up = {
        "segment.data.streams": {"segment.training.loop"},  # up the flow
        "segment.training.loop": {"segment.training.budget"},
        "segment.training.budget": {"segment.training.loop"},  # and back
    }
    assert _upward(made_up) == ["segment.data.streams imports segment.training.loop"]
    assert _cycles(made_up) == [
        ["segment.training.loop", "segment.training.budget", "segment.training.loop"]
    ]
    # The real graph is read: evaluation uses inference, training's loop its budget.
    assert "segment.inference" in GRAPH["segment.evaluation.scoring"]
    assert "segment.training.budget" in GRAPH["segment.training.loop"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_are_short(name):
    text = MODULES[name].read_text()
    assert text.count("\n") <= LONGEST_MODULE, f"{name}: {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                first = node.body[0]
                length -= first.end_lineno - first.lineno + 1
            assert length <= LONGEST_FUNCTION, f"{name}.{node.name}: {length} lines"
