"""The package's import graph: no circle between files (top-level and function-level imports
alike), the record layer stands alone, and pickles naming the old module paths still load."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import rsst_tune

PACKAGE = Path(rsst_tune.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere (TYPE_CHECKING blocks excepted)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        targets: set[str] = set()

        def visit(
            node: ast.AST, name: str = name, is_pkg: bool = is_pkg, targets: set[str] = targets
        ) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                if isinstance(child, ast.Import):
                    found = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = name.split(".")[: len(name.split(".")) - child.level + is_pkg]
                        module = ".".join([*base, *([child.module] if child.module else [])])
                    else:
                        module = child.module or ""
                    found = [f"{module}.{a.name}" for a in child.names] + [module]
                else:
                    visit(child)
                    continue
                for target in found:
                    while target and target not in modules:
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        targets.add(target)

        visit(ast.parse(path.read_text(encoding="utf-8")))
        # a dotted import of a.b.c only needs the module it names (its parents are packages)
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_circle_between_files() -> None:
    graph = _graph()
    assert len(graph) > 50  # the walk found the package
    assert _circles(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_record_layer_imports_nothing_of_the_sweep_or_the_report() -> None:
    graph = _graph()
    record = [m for m in graph if m.startswith("rsst_tune.experiment")]
    assert "rsst_tune.experiment.reader" in record
    seen: set[str] = set()
    todo = list(record)
    while todo:  # everything the record layer reaches, through any module
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    bad = sorted(m for m in seen if m.startswith(("rsst_tune.tune", "rsst_tune.report")))
    assert bad == []


def test_a_pickle_naming_a_module_path_from_before_the_rooms_loads_on_resume() -> None:
    from rsst_tune.tune.search.moasha import MoashaRungs

    old = pickle.dumps(MoashaRungs(["val_acc"], ["max"]), protocol=0).replace(
        b"rsst_tune.tune.search.moasha", b"rsst_tune.tune.moasha"
    )
    code = (
        "import pickle, sys\n"
        "data = sys.stdin.buffer.read()\n"
        "try:\n"
        "    pickle.loads(data)\n"
        "    raise SystemExit('loaded without the aliases')\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "from rsst_tune.tune.run.legacy import alias_moved_modules\n"
        "assert 'rsst_tune.tune.moasha' in alias_moved_modules()\n"
        "rungs = pickle.loads(data)\n"
        "assert type(rungs).__module__ == 'rsst_tune.tune.search.moasha', type(rungs)\n"
        "assert alias_moved_modules() == []  # a second call adds nothing\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], input=old, capture_output=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr.decode()
