"""The package's import graph: which of its modules import which (at the top of a file or
inside a function alike), its cycles, and its modules in layers.

    clockwork imports            the modules in layers: each imports only modules of layers before it
    clockwork imports --edges    every module with what it imports

tests/test_imports.py fails on a cycle. Read from the source (ast), nothing is imported.
"""

from __future__ import annotations

import ast
import os

PACKAGE = "clockwork_engine"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package


def modules() -> dict[str, str]:
    """Dotted module name -> file path, for every .py file of the package."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join([PACKAGE, *parts])] = path
    return found


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (a package's __init__ counts as the package)."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for module, path in known.items():
        is_package = path.endswith("__init__.py")
        targets = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, module, is_package)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in known:  # a.b.c of a module a.b: the module
                    name = name.rpartition(".")[0]
                if name.startswith(PACKAGE) and name != module:
                    targets.add(name)
        edges[module] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exports what its modules define: importing the package is not an
    edge back into it from one of its own modules."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}


def layers(edges: dict[str, set[str]]) -> list[list[str]]:
    """Modules in layers: layer k imports only modules of layers < k (the graph must be acyclic)."""
    edges = _package_edges(edges)
    depth: dict[str, int] = {}

    def level(m, seen=()):
        if m not in depth:
            depth[m] = 1 + max((level(t, seen + (m,)) for t in edges.get(m, ()) if t not in seen), default=-1)
        return depth[m]

    for m in edges:
        level(m)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for m, d in depth.items():
        out[d].append(m)
    return [sorted(layer) for layer in out]


def build_parser(p):
    p.add_argument("--edges", action="store_true", help="every module with the modules it imports")


def run(args) -> int:
    edges = graph()
    found = cycles(_package_edges(edges))
    if args.edges:
        for m in sorted(edges):
            print(f"{m}: {', '.join(sorted(edges[m])) or '-'}")
    elif not found:
        for k, layer in enumerate(layers(edges)):
            print(f"layer {k}: {', '.join(m.removeprefix(PACKAGE + '.') for m in layer)}")
    for component in found:
        print("cycle: " + " <-> ".join(component))
    return 1 if found else 0
