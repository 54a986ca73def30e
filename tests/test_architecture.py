"""The package's layering, checked by walking its imports (every `import`/`from` statement, module level and inside
functions alike, read from the source with `ast`): no import cycle, engines are leaves (no engine imports another
engine, and the shared core imports no engine), and `organscope --help` does not load the heavy modules."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "organscope"
ENGINES = ("sparse", "cnn3d", "slice2d", "cascade")
#: the modules allowed to know every engine by name: the registry (the composition root that builds engines and
#: hands composite engines their localisers) and the training code (which trains and exports each engine)
ENGINE_AWARE = ("organscope.engines.registry", "organscope.training")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> organscope modules it imports (a `from pkg import name` counts as importing pkg.name when that
    is a module, else pkg)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod and t.startswith("organscope"):
                    graph[mod].add(t)
    return graph


def cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _engine_of(mod: str) -> str | None:
    parts = mod.split(".")
    if len(parts) >= 3 and parts[1] == "engines" and parts[2] in ENGINES:
        return parts[2]
    return None


def test_the_walker_sees_imports_inside_functions_and_relative_ones():
    graph = import_graph()
    # organscope.api imports the registry at module level; cli imports api inside a command function
    assert "organscope.engines.registry" in graph["organscope.api"]
    assert "organscope.api" in graph["organscope.cli"]
    # a planted cycle is found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_engines_are_leaves():
    """An engine imports the shared core only; everything outside the engines reaches them through the registry
    (the training code, which builds each engine's model, excepted)."""
    graph = import_graph()
    bad = []
    for mod, targets in graph.items():
        own = _engine_of(mod)
        for t in targets:
            other = _engine_of(t)
            if other is None or other == own or mod.startswith(ENGINE_AWARE):
                continue
            bad.append(f"{mod} -> {t}")
    assert bad == [], "modules that import an engine they are not part of: " + ", ".join(sorted(bad))


def test_help_imports_no_heavy_module():
    code = ("import sys; from organscope import cli; cli.build_parser(); "
            "heavy = [m for m in ('numpy', 'scipy', 'numba', 'onnxruntime', 'nibabel', 'organscope.metrics.report', "
            "'organscope.engines.base') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"building the CLI parser imports {out}"


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_is_registered(engine):
    from organscope.engines.registry import ENGINE_INFO

    assert engine in ENGINE_INFO
