"""The package's shape, read from the source with `ast` (no TensorFlow, no import of dcm_keras).

- dcm_keras's imports form no cycle: a module never imports, directly or through others, a
  module that imports it back (a package counts as its `__init__.py`), neither at module level
  nor inside a function (a function-level import hides a cycle; it does not remove it);
- Keras's private API (`keras.src`) is reached only through dcm_keras/_keras_compat.py, which
  checks at import that what it uses is still there;
- no module of dcm_keras grows past MAX_LINES;
- the scripts' packages (experiments/, benchmarks/) keep the same rules on cycles, with the whole
  import graph (library and scripts) as one, and their own size limits (SCRIPT_MAX_LINES).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "dcm_keras"
KERAS_COMPAT = REPO / PACKAGE / "_keras_compat.py"
MAX_LINES = 360
SCRIPTS = ("experiments", "benchmarks")
# A thin entry point, and modules named for what they hold rather than grab-bags.
SCRIPT_MAX_LINES = {"experiments/train.py": 300, "experiments": 450, "benchmarks": 600}


def _modules(packages=(PACKAGE,)) -> Dict[str, Path]:
    """Dotted module name -> file, for every module of `packages` (`pkg` for pkg/__init__.py)."""
    modules = {}
    for path in sorted(p for package in packages for p in (REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_statements(body: List[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements run when the module is imported: not those inside functions, nor those
    under `if TYPE_CHECKING:`; class bodies, `if`, `try` and `with` blocks run, so are included."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _import_time_statements(block)
            for handler in node.handlers:
                yield from _import_time_statements(handler.body)
        elif isinstance(node, (ast.With, ast.ClassDef, ast.For, ast.While)):
            yield from _import_time_statements(node.body)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> Optional[str]:
    """The absolute module name an ImportFrom names (resolving `from . import x` and the like)."""
    if not node.level:
        return node.module
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _all_statements(body: List[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement of a module, those inside functions included (`TYPE_CHECKING` blocks not)."""
    for node in _import_time_statements(body):
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _all_statements(node.body)


def _imported(tree: ast.Module, module: str, is_package: bool, known: Set[str],
              in_functions: bool = False) -> Set[str]:
    """The package's modules `tree` imports at import time (also inside functions if asked).

    `import a.b` and `from a.b import c` import a.b (c too when it is a submodule); the parent
    packages Python initialises on the way are not counted: they run first, so the submodule
    only finds them partly initialised when it takes names from them, which would be an edge.
    """
    found = set()
    statements = _all_statements if in_functions else _import_time_statements
    for node in statements(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            if source is None:
                continue
            submodules = {f"{source}.{alias.name}" for alias in node.names} & known
            found.update(submodules)
            if len(submodules) < len(node.names):  # some names come from the module itself
                found.add(source)
    return {name for name in found if name in known and name != module}


def import_graph(in_functions: bool = False, packages=(PACKAGE,)) -> Dict[str, Set[str]]:
    """Module -> the modules of `packages` it imports at module level (and in functions if
    asked)."""
    modules = _modules(packages)
    known = set(modules)
    return {name: _imported(ast.parse(path.read_text(), str(path)), name,
                            path.name == "__init__.py", known, in_functions)
            for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of `graph` as `[a, b, ..., a]`, or None (depth-first search)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_imports_of_every_form():
    graph = import_graph()
    # `from dcm_keras import connections as ...`, `from dcm_keras.deployable import ...`
    assert {"dcm_keras.connections", "dcm_keras.deployable"} <= graph["dcm_keras.model"]
    # `from dcm_keras.networks import wrn` inside the networks package
    assert "dcm_keras.networks.wrn" in graph["dcm_keras.networks"]
    # the package's own __init__ is a node
    assert "dcm_keras.model" in graph["dcm_keras"]


def test_find_cycle_finds_a_cycle_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_imports_resolve():
    tree = ast.parse("from . import b\nfrom .c import d\nfrom .. import e\n")
    known = {"p.q.b", "p.q.c", "p.e", "p"}
    assert _imported(tree, "p.q.a", False, known) == {"p.q.b", "p.q.c", "p.e"}
    assert _imported(ast.parse("from . import b\n"), "p.q", True, known) == {"p.q.b"}


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_function_level_imports_are_edges_too():
    tree = ast.parse("def f():\n    from p import b\n    if x:\n        import p.c\n")
    known = {"p.b", "p.c", "p"}
    assert _imported(tree, "p.a", False, known) == set()
    assert _imported(tree, "p.a", False, known, in_functions=True) == {"p.b", "p.c"}


def test_no_import_cycle_through_function_level_imports():
    cycle = find_cycle(import_graph(in_functions=True))
    assert cycle is None, "import cycle (counting imports inside functions): " + " -> ".join(cycle)


def _keras_src_imports(path: Path) -> List[int]:
    """Line numbers of the imports of `keras.src` anywhere in `path` (functions included)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            names = [node.args[0].value]
        else:
            continue
        if any(name == "keras.src" or name.startswith("keras.src.") for name in names):
            lines.append(node.lineno)
    return lines


def test_keras_private_api_only_in_the_compat_module():
    outside = {}
    for folder in (PACKAGE, "experiments"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path != KERAS_COMPAT and _keras_src_imports(path):
                outside[str(path.relative_to(REPO))] = _keras_src_imports(path)
    assert not outside, f"keras.src imported outside {KERAS_COMPAT.name}: {outside}"
    assert _keras_src_imports(KERAS_COMPAT), "the check no longer sees the compat module's imports"


def test_no_module_is_too_long():
    long = {str(path.relative_to(REPO)): n for path in sorted((REPO / PACKAGE).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def test_no_import_cycle_in_the_library_and_scripts_together():
    graph = import_graph(in_functions=True, packages=(PACKAGE,) + SCRIPTS)
    assert "experiments.rundir.run" in graph["experiments.train"] or any(
        name.startswith("experiments.") for name in graph["experiments.train"])
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (library and scripts, functions included): " + \
        " -> ".join(cycle)


def _line_limit(relative: str) -> int:
    return SCRIPT_MAX_LINES.get(relative, SCRIPT_MAX_LINES[relative.split("/")[0]])


def test_no_script_module_is_too_long():
    assert _line_limit("experiments/train.py") == 300 and _line_limit("benchmarks/x.py") == 600
    long = {}
    for package in SCRIPTS:
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if (n := len(path.read_text().splitlines())) > _line_limit(relative):
                long[relative] = (n, _line_limit(relative))
    assert not long, f"script modules over their limit (lines, limit): {long}"
