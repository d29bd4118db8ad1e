"""No import cycles among the modules of src/xaiarena.

Every ``import`` and ``from ... import`` statement counts, at the top of a module or inside a
function: a lazy import still ties the two modules together. A package's ``__init__``
re-exporting its own submodules is not a tie back to the package, nor is a submodule
importing its own package's face (``from . import __version__``). A cycle is a strongly
connected component of more than one module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import ROOT

SRC = ROOT / "src"
PACKAGE = "xaiarena"


def modules(src: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of ``package`` (a package by its
    ``__init__``)."""
    out = {}
    for path in (src / package).rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """``{module: the modules of the package it imports}``."""
    mods = modules(src, package)

    def resolve(name: str) -> str | None:  # the innermost module a dotted name lies in
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        is_pkg = path.name == "__init__.py"
        base = m.split(".") if is_pkg else m.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - (node.level - 1)]
                    mod = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
            else:
                continue
            for target in targets:
                r = resolve(target)
                if r is None or r == m or (is_pkg and r.startswith(m + ".")):
                    continue
                if mods[r].name == "__init__.py" and m.startswith(r + "."):
                    continue
                edges[m].add(r)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
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
    return found


def test_the_cycle_search_finds_lazy_imports_and_ignores_a_package_face(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import __version__\nfrom .b import g\n")
    (pkg / "b.py").write_text("def g():\n    from .sub.c import h\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import h\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from .sub import c\n")
    edges = import_graph(tmp_path, "pkg")
    assert edges["pkg"] == set() and edges["pkg.sub"] == set()
    assert edges["pkg.d"] == {"pkg.sub", "pkg.sub.c"}
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_no_import_cycles_in_the_package():
    found = cycles(import_graph(SRC, PACKAGE))
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(" <-> ".join(c) for c in found)
