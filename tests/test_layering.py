"""The package is layered: no module of src/grurt imports, directly or through others, a module that
imports it back (issue 20). Imports at the top of a module and inside functions count alike: a lazy
import only hides a cycle, it does not remove it.

The graph is built from the source, nothing imported: each .py file parsed with ``ast`` (``import
grurt.x``, ``from .x import y``, ``from . import x``, relative names resolved; ``from .pkg import name``
is an edge to the submodule ``pkg.name`` when there is one, else to ``pkg``), and the Python imports of
the compiled kernels (``_kernels.pyx`` and the .pxi files it includes, Cython: read line by line).
"""
from __future__ import annotations

import ast
import pathlib
import re

SOURCE = pathlib.Path(__file__).resolve().parent.parent / "src" / "grurt"

#: Cycles known and kept, each edge that closes one with the reason it stays.
KNOWN = {
    ("grurt._kernels", "grurt.model"):
        "the kernels read grurt.model.MEMORY_LIMIT_BYTES when a call runs (lazily: a StreamPool's size check and "
        "the out-of-memory message), the limit users and tests set there; removing the edge means passing the "
        "limit into the compiled Plan and StreamPool",
}

_CYTHON_FROM = re.compile(r"^\s*from\s+(\.*)([\w.]*)\s+import\s+(?!\*)([\w\s,]+?)\s*(?:#.*)?$", re.M)
_CYTHON_INCLUDE = re.compile(r'^include\s+"([^"]+)"', re.M)


def _modules(root: pathlib.Path) -> dict:
    """Module name -> path of each .py and .pyx file under ``root`` (a package ``grurt``)."""
    modules = {}
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.pyx")]):
        parts = ("grurt",) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _statements(path: pathlib.Path):
    """(level, module, names) of every ``from ... import`` and (0, name, ()) of every ``import`` in a file."""
    text = path.read_text()
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Import):
                yield from ((0, alias.name, ()) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                yield node.level, node.module or "", tuple(alias.name for alias in node.names)
        return
    for included in _CYTHON_INCLUDE.findall(text):
        text += "\n" + (path.parent / included).read_text()
    for dots, module, names in _CYTHON_FROM.findall(text):
        yield len(dots), module, tuple(n.split(" as ")[0].strip() for n in names.split(",") if n.strip())


def _imports(name: str, path: pathlib.Path, modules: dict) -> set:
    """The modules of the package that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def add(target):
        while target and target not in modules:      # a name in a module: the module
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for level, module, names in _statements(path):
        if level:
            base = package.split(".")
            module = ".".join(base[:len(base) - (level - 1)] + ([module] if module else []))
        if not names:
            add(module)
        for alias in names:
            add(f"{module}.{alias}" if f"{module}.{alias}" in modules else module)
    return found


def import_graph(root: pathlib.Path = SOURCE) -> dict:
    modules = _modules(root)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _describe(component, graph):
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "{" + ", ".join(component) + "}: " + "; ".join(edges)


def test_no_import_cycles():
    graph = import_graph()
    assert {"grurt.model", "grurt.graph_model", "grurt.fusion.interpreter", "grurt._kernels"} <= set(graph)
    for (source, target), reason in KNOWN.items():
        assert target in graph[source], f"known exception {source} -> {target} is gone: remove it from KNOWN"
        graph[source] = graph[source] - {target}
    found = cycles(graph)
    assert not found, "import cycles in src/grurt:\n" + "\n".join(_describe(c, graph) for c in found)


def test_the_named_cycles_are_gone():
    """Issue 20: the two cycles it names, each way round, top-level or lazy."""
    graph = import_graph()
    assert "grurt.model" not in graph["grurt.graph_model"]
    assert "grurt.fusion.build" not in graph["grurt.fusion.interpreter"]
    assert "grurt.graph_model" in graph["grurt.model"] and "grurt.fusion.interpreter" in graph["grurt.fusion.build"]


def test_the_fusion_pass_is_below_the_importers():
    """The fusion pass reads TensorGraphs: the ONNX importer (and from_torch through it) imports it, never the
    other way round."""
    graph = import_graph()
    fusion = [name for name in graph if name == "grurt.fusion" or name.startswith("grurt.fusion.")]
    assert len(fusion) >= 6 and "grurt.fusion" in graph["grurt.importers.onnx"]
    for name in fusion:
        assert not any(target.startswith("grurt.importers") for target in graph[name]), (name, graph[name])


def test_the_checker_finds_cycles(tmp_path):
    """The checker itself: a lazy import inside a function, a relative ``from .. import`` of a module, a
    name imported from a package, and a Cython module's included imports all make edges."""
    package = tmp_path / "grurt"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("VERSION = 1\n")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (package / "c.py").write_text("import grurt.a\nfrom . import VERSION\n")
    (package / "_k.pyx").write_text('cimport numpy as cnp\ninclude "_p.pxi"\n')
    (package / "_p.pxi").write_text("def g():\n    from . import c  # lazily\n")
    graph = import_graph(package)
    assert graph["grurt.a"] == {"grurt.sub.b"} and graph["grurt.sub.b"] == {"grurt.a"}
    assert graph["grurt.c"] == {"grurt.a", "grurt"} and graph["grurt._k"] == {"grurt.c"}
    assert cycles(graph) == [["grurt.a", "grurt.sub.b"]]
