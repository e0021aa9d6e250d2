"""The models sit below evaluation, pipeline and serving: no import reaches up, not even inside a function."""

import ast
from pathlib import Path

import attnrec

ABOVE = ("attnrec.evaluation", "attnrec.pipeline", "attnrec.serving", "attnrec.cli", "attnrec.report",
         "attnrec.explain", "attnrec.retrieval")
PACKAGE = Path(attnrec.__file__).parent


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> list[tuple[int, str]]:
    """Every module an ``import`` / ``from ... import`` anywhere in ``path`` names (absolute names)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                pkg = ".".join(path.relative_to(root).with_suffix("").parts[:-node.level])
                base = f"{pkg}.{base}" if base else pkg
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def test_models_and_training_import_nothing_above_them():
    files = sorted((PACKAGE / "models").glob("*.py")) + [PACKAGE / "training.py", PACKAGE / "distributed.py"]
    assert len(files) > 5
    bad = [f"{f.name}:{line} imports {mod}" for f in files for line, mod in imported_modules(f)
           if mod.startswith(ABOVE) or mod in ("attnrec.evaluation", "attnrec.pipeline")]
    assert bad == []


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    f = tmp_path / "attnrec" / "models" / "probe.py"
    f.parent.mkdir(parents=True)
    f.write_text("def f():\n    from attnrec.evaluation import evaluate\n    from ..pipeline import fit_for_test\n")
    assert [m for _, m in imported_modules(f, tmp_path)] == ["attnrec.evaluation.evaluate",
                                                              "attnrec.pipeline.fit_for_test"]


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    files = {".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): f
             for f in root.rglob("*.py")}
    graph = {}
    for mod, f in files.items():
        targets = set()
        for _, name in imported_modules(f, root.parent):
            while name and name not in files:  # a name imported from a module -> that module
                name = name.rpartition(".")[0]
            if name and name != mod:
                targets.add(name)
        graph[mod] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    path: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v)
        path.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "attnrec.models.sasrec" in graph and "attnrec.models.base" in graph["attnrec.models.sasrec"]
    assert cycles(graph) == []


def test_cycle_finder_finds_a_function_level_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
