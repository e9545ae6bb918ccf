"""The package's layers: no import cycle (top-level or inside a function alike), and no module
reaching into the engine's or the model runner's private state."""

from __future__ import annotations

import os
import re

from clockwork_engine.tools import import_graph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_package_has_no_import_cycle():
    edges = import_graph.graph()
    assert "clockwork_engine.runner" in edges["clockwork_engine.engine"]
    assert import_graph.cycles(import_graph._package_edges(edges)) == []
    layers = import_graph.layers(edges)
    assert "clockwork_engine.engine" not in layers[0] and sum(map(len, layers)) == len(edges)


def test_cycles_are_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_graph.cycles(edges) == [["a", "b", "c"]]


def test_no_module_uses_the_engine_or_runner_private_state():
    pattern = re.compile(r"\b(engine|runner|batched|teacher|student|target)\._[a-z]\w*")
    offenders = []
    for folder in ("clockwork_engine", "benches", "tests"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                path = os.path.join(base, name)
                own = ("clockwork_engine/engine.py", "clockwork_engine/runner.py", "tests/test_imports.py")
                if not name.endswith(".py") or path.endswith(own):
                    continue
                for k, line in enumerate(open(path), 1):
                    if pattern.search(line.replace("self.runner._", "")):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{k}: {line.strip()}")
    assert offenders == []


def test_clockwork_imports_prints_the_layers(capsys):
    from clockwork_engine.tools.cli import main

    assert main(["imports"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("layer 0: ") and "engine" in out and "cycle" not in out


def test_the_demo_is_imported_only_by_tools_and_its_loader():
    """demo/ (the demo model, its trainers and weights) sits last: the library reaches it only to
    load or save the demo's layout; the shapes world it is trained on is datasets/shapes.py."""
    allowed = ("clockwork_engine.demo", "clockwork_engine.tools.", "clockwork_engine.models.loading",
               "clockwork_engine.distill.student_loop")
    importers = {module for module, targets in import_graph.graph().items()
                 if any(t == "clockwork_engine.demo" or t.startswith("clockwork_engine.demo.") for t in targets)}
    assert importers and all(m.startswith(allowed) for m in importers), sorted(importers)
