"""Report import cycles among the project's modules (harness, and reports/ and trainables/,
which install as harness.reports and harness.trainables).

An edge A -> B is an ``import B`` / ``from B import ...`` anywhere in A -- at module
level, and by default also inside functions, because a function-local import is the usual
way a cycle gets hidden rather than removed -- except imports under
``if TYPE_CHECKING:``, which never run. ``from pkg import name`` counts as an edge to
``pkg.name`` when that is a module, else to ``pkg``. Prints each cycle (one strongly
connected component per line, with its edges); exit 1 if any.

    python tools/import_cycles.py [--module-level-only] [ROOT]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# Repository folder -> the dotted package it installs as (pyproject.toml's package-dir).
PACKAGES = {"harness": "harness", "reports": "harness.reports", "trainables": "harness.trainables"}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages under ``root``."""
    modules: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, module_level_only: bool):
    """Import statements under ``node``, skipping ``if TYPE_CHECKING:`` blocks (and
    function/class bodies when ``module_level_only``)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _imports(ast.Module(body=[stmt], type_ignores=[]), module_level_only)
        elif module_level_only and isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
        ):
            continue
        else:
            yield from _imports(child, module_level_only)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path, module_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _imports(tree, module_level_only):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                # `import a.b.c` imports a, a.b and a.b.c; the deepest project module counts.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def main(argv: list[str]) -> int:
    args = argv[1:]
    module_level_only = "--module-level-only" in args
    args = [a for a in args if a != "--module-level-only"]
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent
    graph = import_graph(root, module_level_only)
    found = cycles(graph)
    for component in found:
        members = set(component)
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
        print("cycle: " + " <-> ".join(component) + "   (" + "; ".join(edges) + ")")
    if not found:
        print(f"no import cycles among {len(graph)} modules of {', '.join(PACKAGES)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
